"""Long runs stay flat: thousands of steps with PER and recording on do not grow memory."""

import gc
import os

import pytest
import torch

from analysis.recorder import ActivationRecorder
from per_core.models import build_model
from per_core.per import PER
from per_core.rundir import RunDir


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.slow
def test_memory_is_flat_over_thousands_of_steps_with_hooks_and_recording(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is faster and immune to a busy machine
    torch.manual_seed(0)
    model = build_model("small_cnn", width=8, depth=6)
    per = PER(model.pre_activations(), 1e-2, 64, track_penalty=True)
    rec = ActivationRecorder(model, "all", reservoir=64, reservoir_every=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    run = RunDir(tmp_path)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    samples = []
    for epoch in range(1, 31):  # 30 epochs x 100 steps
        rec.start_epoch(epoch)
        for _ in range(100):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            per.penalty()
        rec.end_epoch()
        with rec.eval_pass(), torch.no_grad():
            model.eval()
            model(x)
            model.train()
        rec.save(run, epoch)
        gc.collect()
        samples.append(rss_mb())
    per.remove()
    rec.remove()
    torch.set_num_threads(threads)
    warm = samples[5]  # after allocator warm-up
    assert max(samples[5:]) - warm < 25, f"memory grew: {[round(s) for s in samples]} MB"
    assert samples[-1] - samples[10] < 10
