"""Faults lose nothing: a run killed (SIGKILL) at random moments, then resumed, ends like an uninterrupted one."""

import json
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from per_core.configs import get_preset
from per_core.rundir import RunDir

# A run of ~8 short epochs that records activations every epoch: checkpoint and npz writes happen often,
# so random kills land in training, in writes and in between.
SCRIPT = """
import sys
from per_core.configs import get_preset
from per_core.rundir import RunDir
from per_core.train import train
cfg = get_preset("demo").replace(epochs=8, milestones=[5], model_args={"width": 8, "depth": 6, "activation": "elu"},
                                 method="per", record_train_every=1)
resume = RunDir(sys.argv[1]).is_run()
train(cfg, sys.argv[1], resume=resume, overwrite=not resume, progress=False)
"""


def config():
    return get_preset("demo").replace(
        epochs=8,
        milestones=[5],
        model_args={"width": 8, "depth": 6, "activation": "elu"},
        method="per",
        record_train_every=1,
    )


def strip(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def launch(out):
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(out)], stderr=subprocess.PIPE)


def epochs_done(out) -> int:
    try:
        return len(RunDir(out).read_metrics())
    except Exception:  # a run directory being created
        return 0


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_matches_an_uninterrupted_run(tmp_path):
    assert launch(tmp_path / "ref").wait() == 0  # the uninterrupted reference, in a process like the others
    reference = RunDir(tmp_path / "ref").read_metrics()

    out = tmp_path / "killed"
    rng = random.Random(0)
    progress = []  # epochs finished when each kill landed
    for target in (1, 3, 5, 7):  # kill once the run has passed these epochs, at a random moment after
        proc = launch(out)
        while epochs_done(out) < target and proc.poll() is None:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3))  # lands in training, evaluation, npz or checkpoint writes
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            progress.append(epochs_done(out))
    proc = launch(out)  # and one that finishes
    assert proc.wait() == 0, proc.stderr.read().decode()[-2000:]
    assert len(set(progress) - {8}) >= 3, f"kills did not land inside the run (epochs done at kills: {progress})"

    run, ref = RunDir(out), RunDir(tmp_path / "ref")
    assert strip(run.read_metrics()) == strip(reference)
    assert not list(out.rglob("*.tmp")), "a torn temporary file was left behind"
    for epoch in ref.activation_epochs():
        a, b = ref.read_npz(ref.activation_path(epoch)), run.read_npz(run.activation_path(epoch))
        assert a.keys() == b.keys()
        for k in a:
            assert np.array_equal(a[k], b[k]), (epoch, k)
    json.loads(run.config_path.read_text())  # config.json readable


@pytest.mark.slow
def test_ctrl_c_exits_cleanly_keeps_finished_epochs_and_resumes(tmp_path):
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "per_core.train", "--epochs", "30", "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    while epochs_done(out) < 2 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err[-2000:]
    done = epochs_done(out)
    assert 2 <= done < 30 and RunDir(out).load_checkpoint()["epoch"] in (done, done + 1)
    resumed = subprocess.run([*cmd[:3], "--resume", "--epochs", str(done + 2), "--out", str(out), "--no-progress"])
    assert resumed.returncode == 0 and epochs_done(out) == done + 2
