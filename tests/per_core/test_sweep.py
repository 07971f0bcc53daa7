"""Sweeps: layout, skip/resume of finished runs, and the mean +- std table."""

import numpy as np

from per_core.configs import get_preset
from per_core.sweep import main, results_table, run_sweep


def test_sweep_layout_table_and_skip(tmp_path, capsys):
    base = get_preset("demo").replace(record=None).as_smoke()
    runs = run_sweep(base, tmp_path, ["vanilla", "per"], [0, 1], lams=[0.01, 0.1], progress=False)
    names = sorted(str(r.relative_to(tmp_path)) for r in runs)
    assert names == sorted(
        [
            "vanilla/seed0",
            "vanilla/seed1",
            "per-lam0.01/seed0",
            "per-lam0.01/seed1",
            "per-lam0.1/seed0",
            "per-lam0.1/seed1",
        ]
    )
    text, entries = results_table(tmp_path)
    per = [e for e in entries if e["method"] == "per"]
    assert [e["lam"] for e in per] == [0.01, 0.1] and all(e["n"] == 2 for e in entries)
    # mean and sample std over the seeds' final val_error
    import json

    vals = [
        json.loads((tmp_path / "vanilla" / f"seed{s}" / "metrics.jsonl").read_text().splitlines()[-1])["val_error"]
        for s in (0, 1)
    ]
    van = next(e for e in entries if e["method"] == "vanilla")
    assert van["mean"] == np.mean(vals) and van["std"] == np.std(vals, ddof=1)
    assert "best lambda" in text
    capsys.readouterr()
    run_sweep(base, tmp_path, ["vanilla"], [0], progress=False)  # finished: skipped, not retrained
    assert "finished, skipped" in capsys.readouterr().out


def test_sweep_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["--methods", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown methods" in capsys.readouterr().err
    assert main(["--table", str(tmp_path / "missing")]) == 2


def test_a_diverging_run_is_reported_and_the_sweep_goes_on(tmp_path, capsys):
    base = get_preset("demo").replace(record=None).as_smoke()
    run_sweep(base.replace(lr=1e12), tmp_path, ["vanilla"], [0], progress=False)
    run_sweep(base, tmp_path, ["bn"], [0], progress=False)
    assert "FAILED: non-finite" in capsys.readouterr().out
    text, entries = results_table(tmp_path)
    assert "(1 diverged)" in text and {e["method"]: e["failed"] for e in entries} == {"vanilla": 1, "bn": 0}
