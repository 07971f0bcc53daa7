"""Long runs stay flat: thousands of steps of the real trainer, PER, recording and progress on, do not grow memory."""

import gc
import os

import numpy as np
import pytest
import torch
from tqdm.auto import tqdm

import per_core.tasks as tasks_module
import per_core.train as train_module
from analysis.recorder import layer_stats
from per_core.configs import get_preset
from per_core.rundir import RunDir


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def live_tensors() -> int:
    """Tensors reachable by the garbage collector: an exact count, unlike RSS (allocator caches, arenas)."""
    return sum(issubclass(type(o), torch.Tensor) for o in gc.get_objects())


@pytest.mark.slow
def test_memory_is_flat_over_thousands_of_trainer_steps_with_hooks_recording_and_progress(tmp_path, monkeypatch):
    epochs, batch = 30, 8  # digits: 1438 training images -> 180 steps per epoch, 5,400 steps in all
    cfg = get_preset("demo").replace(
        method="per",  # PER's hooks on every conv layer (sampled locations: the weakref'd pending list)
        epochs=epochs,
        batch_size=batch,
        model_args={"width": 4, "depth": 3, "activation": "elu"},  # tiny: the soak is about memory, not accuracy
        n_slices=16,
        milestones=[epochs + 1],
        record="all",  # the recorder's hooks, histograms and reservoirs ...
        record_train_every=1,  # ... on every training batch
        record_every=1,
        record_reservoir_every=1,
        record_eval_samples=32,
        device="cpu",
    )
    rss, tensors, hooks, bars, modules = [], [], [], [], []
    steps = [0]
    original_epoch, original_step = train_module.train_epoch, tasks_module.ImageClassification.step

    def sampled_epoch(s, epoch, progress):  # before every epoch: everything of the previous one is committed
        gc.collect()
        rss.append(rss_mb())
        tensors.append(live_tensors())
        hooks.append(sum(len(m._forward_hooks) + len(m._backward_hooks) for m in s.module.modules()))
        bars.append(len(getattr(tqdm, "_instances", ())))
        modules[:] = [s.module]
        return original_epoch(s, epoch, progress)

    def counted_step(self, model, batch):
        steps[0] += 1
        return original_step(self, model, batch)

    monkeypatch.setattr(train_module, "train_epoch", sampled_epoch)
    monkeypatch.setattr(tasks_module.ImageClassification, "step", counted_step)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is faster and immune to a busy machine
    try:
        metrics = train_module.train(cfg, tmp_path / "run", progress=True)  # progress bars on: tqdm is soaked too
    finally:
        torch.set_num_threads(threads)
    gc.collect()
    rss.append(rss_mb())
    tensors.append(live_tensors())

    # the real trainer did the work: every epoch committed a checkpoint, metrics and an activation file
    run = RunDir(tmp_path / "run")
    assert steps[0] == epochs * 180 >= 5000
    assert [m["epoch"] for m in run.read_metrics()] == list(range(1, epochs + 1)) and len(metrics) == epochs
    assert run.load_checkpoint()["epoch"] == epochs
    assert len(list((run.root / "activations").glob("epoch_*.npz"))) == epochs
    with np.load(run.activation_path(epochs)) as arrays:  # every training batch recorded: 1438 images x 64 locations
        assert int(layer_stats(arrays, "train", "layer1")["count"][0]) == 1438 * 64

    # nothing accumulates: hooks and progress bars are constant, removed at the end
    assert len(set(hooks)) == 1 and max(bars) <= 1
    assert sum(len(m._forward_hooks) + len(m._backward_hooks) for m in modules[0].modules()) == 0
    # after a warm-up of 3 epochs (allocator, first recorder and optimizer states), compare the first
    # and the last third: live tensors exactly, resident memory within a few MB of allocator noise
    warm = 3
    third = (len(rss) - warm) // 3
    first, last = slice(warm, warm + third), slice(len(rss) - third, len(rss))
    assert max(tensors[last]) <= max(tensors[first]), f"tensors accumulate: {tensors}"
    assert max(rss[last]) - max(rss[first]) < 8, f"memory grew: {[round(r, 1) for r in rss]} MB"
    assert rss[-1] - rss[warm] < 16, f"memory grew: {[round(r, 1) for r in rss]} MB"
