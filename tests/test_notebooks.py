"""The notebooks run top to bottom on the embedded data (executed here so they never rot)."""

import os
from pathlib import Path

# matplotlib's font cache is built here, in the test process, into the cache folder the kernels then read: a kernel
# that built it itself would print "Matplotlib is building the font cache" on stderr on a fresh machine
import matplotlib.font_manager  # noqa: F401
import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, monkeypatch):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one torch thread per kernel, as per worker (conftest): two kernels of
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # 2 threads each on 2 cores slowed training 10x, past the timeout
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    # each notebook runs in well under a minute on 2 shared cores; nbclient's timeout is per cell, and 180 s
    # leaves room for a loaded machine while still failing a notebook that has grown far too slow
    client = NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    # a notebook prints nothing on stderr: before, every one that trained showed tqdm's "IProgress not found" warning
    stderr = [o["text"] for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert not [t for t in stderr if "IProgress" in t or "\r" in t], stderr  # the regression itself, first
    assert stderr == []
