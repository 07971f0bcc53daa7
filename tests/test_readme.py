"""The README's Python quick start runs as written."""

import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def test_quick_start_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README lost its quick start"
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})
    assert sorted(p.name for p in (tmp_path / "runs/quick/activations").iterdir()) == [
        f"epoch_{e:04d}.npz" for e in (1, 2, 3)
    ]
    assert (tmp_path / "runs/quick/sw1.png").stat().st_size > 10_000
