"""Data parallelism on the CPU (gloo, 2 processes): PER needs no synchronization, BatchNorm does."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from per_core.distributed import CrossRankBatchNorm2d, convert_sync_batchnorm, sync_bn_traffic
from per_core.models import build_model
from per_core.regularizer import PER
from per_core.rundir import RunDir

pytestmark = pytest.mark.slow


def make_model(norm: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model("small_cnn", width=8, depth=4, norm=norm).double()


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (16,), generator=g)


def grads_of(model: nn.Module, x, y, per: bool) -> list[torch.Tensor]:
    handle = (
        PER(model.module.pre_activations() if hasattr(model, "module") else model.pre_activations(), 0.5, 32, seed=3)
        if per
        else None
    )
    nn.functional.cross_entropy(model(x), y).backward()
    if handle is not None:
        handle.remove()
    params = model.module.parameters() if hasattr(model, "module") else model.parameters()
    return [p.grad.detach().clone() for p in params]


def leave() -> None:
    """End a spawned rank once every rank has written what it had to: a barrier, then exit without teardown.

    Under load, gloo sometimes aborted a rank at teardown ("terminate called without an active exception")
    when its peer closed the connections first, after the results were written (2 of 12 runs with two CPU
    burners); the test is about the results, and the exit code of a torn-down rank is not.
    """
    dist.barrier()
    os._exit(0)


def _rank_main(rank, world, rendezvous, out, body, args):
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    result = body(rank, world, *args)
    gathered = [None] * world
    dist.all_gather_object(gathered, result)
    if rank == 0:
        torch.save(gathered, out)
    leave()


def on_two_ranks(tmp_path, body, *args) -> list:
    """``body(rank, world, *args)`` run on two gloo ranks (a module-level function); what each returned, by rank."""
    out, rendezvous = tmp_path / f"{body.__name__}.pt", tmp_path / f"rendezvous-{body.__name__}"
    mp.spawn(_rank_main, args=(2, str(rendezvous), str(out), body, args), nprocs=2, join=True)
    return torch.load(out)


def worker(rank, world, rendezvous, case, out):
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    norm, per, sync = case
    model = make_model(norm)
    if sync:
        model = convert_sync_batchnorm(model, torch.device("cpu"))
    calls = {"n": 0}
    original = dist.all_reduce

    def counting(*a, **k):
        calls["n"] += 1
        return original(*a, **k)

    dist.all_reduce = counting  # python-level collectives (DDP's own bucketed all-reduce runs in C++)
    ddp = nn.parallel.DistributedDataParallel(model)
    x, y = batch()
    half = len(y) // world
    grads = grads_of(ddp, x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half], per)
    dist.all_reduce = original
    if rank == 0:
        torch.save({"grads": grads, "collectives": calls["n"]}, out)
    leave()


def ddp_grads(tmp_path, case):
    out = tmp_path / "grads.pt"
    rendezvous = tmp_path / f"rendezvous-{'-'.join(map(str, case))}"  # a file, not a port: no races
    mp.spawn(worker, args=(2, str(rendezvous), case, str(out)), nprocs=2, join=True)
    return torch.load(out)


def close(a, b):
    return all(torch.allclose(u, v, rtol=1e-9, atol=1e-12) for u, v in zip(a, b, strict=True))


def test_per_gradient_under_ddp_equals_single_process_at_the_full_batch_with_no_extra_collective(tmp_path):
    x, y = batch()
    single = grads_of(make_model("none"), x, y, per=True)
    got = ddp_grads(tmp_path, ("none", True, False))
    assert close(got["grads"], single)
    assert got["collectives"] == 0  # PER communicates nothing beyond DDP's gradient all-reduce
    assert not close(single, grads_of(make_model("none"), x, y, per=False))  # and PER did change the gradient


def test_batchnorm_needs_synchronization_and_the_cross_rank_version_restores_equality(tmp_path):
    x, y = batch()
    single = grads_of(make_model("bn"), x, y, per=False)
    plain = ddp_grads(tmp_path, ("bn", False, False))
    assert not close(plain["grads"], single)  # each rank normalized with its own half-batch statistics
    synced = ddp_grads(tmp_path, ("bn", False, True))
    assert close(synced["grads"], single)
    n_bn = sum(
        isinstance(m, CrossRankBatchNorm2d)
        for m in convert_sync_batchnorm(make_model("bn"), torch.device("cpu")).modules()
    )
    assert synced["collectives"] == 2 * n_bn == sync_bn_traffic(make_model("bn"))["collectives"]


def torchrun(out, nproc, *args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += ["-m", "per_core.train", "--out", str(out), "--no-progress", "--device", "cpu", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def strip(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_torchrun_two_ranks_match_one_process_and_record_the_same_statistics(tmp_path):
    # all locations: with a random subset, each rank would draw its own locations (unbiased, not identical)
    args = ["--method", "per", "--epochs", "1", "--batch-size", "32", "--per-locations", "all"]
    torchrun(tmp_path / "ddp", 2, *args)
    torchrun(tmp_path / "one", 1, *args)
    a, b = RunDir(tmp_path / "ddp"), RunDir(tmp_path / "one")
    # Same data, same slices, same updates; only the order of float32 sums differs (all-reduce of two half-batch
    # gradients vs one full-batch sum): ~1e-8 apart after one epoch. (One epoch only: in the second the net leaves
    # its initial plateau, and training amplifies those differences to ~1e-3.) So: losses to 1e-5, error rates to
    # one validation image, and histograms up to a few values moved to a neighbouring bin; a wrong merge (one
    # rank's half missing or counted twice) is off by half of everything.
    for r, s in zip(strip(a.read_metrics()), strip(b.read_metrics()), strict=True):
        assert r.keys() == s.keys()
        for k in r:
            tol = {"abs": 0.5} if k.endswith("error") else {"rel": 1e-5, "abs": 1e-9}
            assert r[k] == pytest.approx(s[k], **tol), k
    assert b.activation_epochs()
    for epoch in b.activation_epochs():
        x, y = a.read_npz(a.activation_path(epoch)), b.read_npz(b.activation_path(epoch))
        for k in y:
            if k.endswith("counts"):  # columns COUNT_FIELDS; no NaN or inf in either run
                assert np.array_equal(x[k][:, 0], y[k][:, 0]), (epoch, k)  # the merged ranks saw as many values
                assert np.abs(x[k][:, 1:3] - y[k][:, 1:3]).sum() <= 4 and not x[k][:, 3:].any(), (epoch, k)
            elif k.endswith("hist"):
                assert np.abs(x[k] - y[k]).sum() <= 1e-3 * y[k].sum() + 4, (epoch, k)
            elif k.endswith("minmax"):
                np.testing.assert_allclose(x[k], y[k], rtol=1e-4, atol=1e-6)
    # the checkpoint holds every rank's RNG state, and a 2-rank run resumes
    assert len(a.load_checkpoint()["rng_ranks"]) == 2
    torchrun(tmp_path / "ddp", 2, "--resume", "--epochs", "2")
    assert len(a.read_metrics()) == 2


def test_torchrun_trains_a_language_model_preset(tmp_path):
    torchrun(tmp_path / "lm", 2, "--preset", "corpus-lstm", "--method", "per", "--smoke", "--epochs", "1")
    (row,) = RunDir(tmp_path / "lm").read_metrics()
    assert np.isfinite(row["val_loss"]) and np.isfinite(row["train_loss"])


# --- the recorder across ranks ------------------------------------------------------------------


def recorded_rows():
    x = torch.randn(120, 3, generator=torch.Generator().manual_seed(7)) * 2 + 0.5
    x[5, 1] = float("nan")
    x[70, 2] = float("inf")
    return x


def new_recorder(seed: int):
    from analysis.recorder import ActivationRecorder

    tap = nn.Identity()
    return tap, ActivationRecorder(tap, {"x": tap}, reservoir=16, reservoir_every=1, seed=seed)


def recorder_worker(rank, world, rendezvous, out):
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    tap, rec = new_recorder(seed=rank)  # as the trainer does: each rank its own reservoir keys
    rec.start_epoch(0)
    half = len(recorded_rows()) // world
    for part in recorded_rows()[rank * half : (rank + 1) * half].split(25):  # this rank's batches
        tap(part)
    own: list = [None] * world
    dist.all_gather_object(own, rec.snapshot())
    rec.reduce_across_ranks()
    if rank == 0:
        torch.save({"merged": rec.snapshot(), "own": own}, out)
    leave()


def test_recorder_reduced_across_two_ranks_equals_one_recorder_over_all_rows(tmp_path):
    from analysis.recorder import layer_stats

    out = tmp_path / "rec.pt"
    mp.spawn(recorder_worker, args=(2, str(tmp_path / "rendezvous-rec"), str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=False)
    tap, one = new_recorder(seed=0)
    one.start_epoch(0)
    for part in recorded_rows().split(25):
        tap(part)
    merged, single = layer_stats(got["merged"], "train", "x"), layer_stats(one.snapshot(), "train", "x")
    for f in ("hist", "under", "over", "nan", "posinf", "neginf", "count", "min", "max"):
        np.testing.assert_array_equal(merged[f], single[f], err_msg=f)
    for f in ("mean", "var", "skew", "kurt"):
        np.testing.assert_allclose(merged[f], single[f], rtol=1e-10, err_msg=f)
    # the reservoir: the k smallest keys over both ranks' own reservoirs, with their rows
    own = [layer_stats(s, "train", "x") for s in got["own"]]
    keys = np.concatenate([o["reservoir_keys"] for o in own])
    rows = np.concatenate([o["reservoir"] for o in own])
    best = np.argsort(keys, kind="stable")[: len(merged["reservoir_keys"])]
    assert len(best) == 16
    np.testing.assert_array_equal(np.sort(merged["reservoir_keys"]), keys[best])
    order = np.argsort(merged["reservoir_keys"], kind="stable")
    np.testing.assert_array_equal(merged["reservoir"][order], rows[best])


def vcl_betas_after_an_epoch(rank, world):
    import per_core.train as train_module
    from per_core.configs import get_preset
    from per_core.distributed import DistEnv

    cfg = get_preset("demo").as_smoke().for_method("vcl").replace(record=None, model_args={"width": 8, "depth": 4})
    s = train_module.build(cfg, DistEnv(rank, world))
    train_module.train_epoch(s, 1, progress=False)
    return [b.detach().clone() for b in s.penalty.parameters()]


def test_vcl_betas_stay_equal_on_every_rank(tmp_path):
    # the betas live outside the DDP module: without averaging their gradients, each rank learns its own
    rank0, rank1 = on_two_ranks(tmp_path, vcl_betas_after_an_epoch)
    assert len(rank0) == 4 and all(torch.equal(a, b) for a, b in zip(rank0, rank1, strict=True))
    assert any((a != 1.0).any() for a in rank0)  # they did train


def far_from_zero(mean: float) -> torch.Tensor:
    """(8, 3, 4, 4) float32 values of std 0.01 around ``mean``."""
    return mean + 0.01 * torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(int(mean)))


#: A loss that weighs every output of a half batch differently, the same on both ranks.
WEIGHTS = torch.linspace(-1.0, 1.0, 4 * 3 * 16).view(4, 3, 4, 4)


def cross_rank_bn_of_half_batches(rank, world):
    results = {}
    for mean in (0.0, 10.0, 100.0, 1000.0):
        x = far_from_zero(mean).requires_grad_()
        bn = CrossRankBatchNorm2d(3).train()
        y = bn(x[rank * 4 : (rank + 1) * 4])
        (y * WEIGHTS).sum().backward()
        results[mean] = (y.detach(), x.grad, bn.running_mean.clone(), bn.running_var.clone())
    return results


def test_cross_rank_batchnorm_matches_one_process_for_activations_far_from_zero(tmp_path):
    # before: E[x^2] - E[x]^2 from raw float32 sums: error 0.26 at mean 10 and NaN at mean 100 (std 0.01)
    rank0, rank1 = on_two_ranks(tmp_path, cross_rank_bn_of_half_batches)
    for mean, (y0, grad0, running_mean, running_var) in rank0.items():
        y1, grad1, _, _ = rank1[mean]
        y, grad = torch.cat([y0, y1]), grad0 + grad1  # each rank's gradient is nonzero on its own half only
        x = far_from_zero(mean).double().requires_grad_()  # the reference in float64 on the same values
        bn = nn.BatchNorm2d(3).double().train()
        ref = bn(x)
        (ref * WEIGHTS.double().repeat(2, 1, 1, 1)).sum().backward()
        tol = {"rtol": 0, "atol": 1e-3 * max(1.0, mean / 100)}  # float32 holds x to ~6e-8 x mean, std 0.01
        torch.testing.assert_close(y.double(), ref.detach(), **tol, msg=f"outputs at mean {mean}")
        torch.testing.assert_close(grad.double(), x.grad, rtol=1e-2, atol=1e-2 * float(x.grad.abs().max()))
        torch.testing.assert_close(running_mean.double(), bn.running_mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(running_var.double(), bn.running_var, rtol=1e-2, atol=1e-9)


def rbn_validation_and_lr(rank, world, run_dir):
    import per_core.train as train_module
    from per_core.configs import get_preset
    from per_core.distributed import DistEnv

    cfg = get_preset("corpus-lstm").as_smoke().replace(method="rbn", record=None, epochs=2)
    cfg = cfg.replace(model_args={**cfg.model_args, "hidden": 16})
    s = train_module.build(cfg, DistEnv(rank, world))
    return [(m["val_loss"], m["lr"]) for m in train_module._train(RunDir(run_dir), s, False, False)]


def test_every_rank_evaluates_the_same_model_so_plateau_schedules_agree(tmp_path):
    # before: each rank evaluated with its own recurrent-BN statistics (DDP syncs buffers only at the start
    # of a training forward), so each rank had its own val_loss and its own plateau decision
    rank0, rank1 = on_two_ranks(tmp_path, rbn_validation_and_lr, str(tmp_path / "run"))
    assert rank0 == rank1


def test_torchrun_resume_continues_every_ranks_own_random_streams(tmp_path):
    # before: the checkpoint held rank 0's recorder and PER generators only and every rank loaded them, so
    # after a resume both ranks drew the same reservoir keys (128 distinct of 256 merged rows) and locations
    args = ["--method", "per", "--smoke"]  # 4 PER locations per image, every layer recorded with reservoirs
    torchrun(tmp_path / "full", 2, *args, "--epochs", "2")
    torchrun(tmp_path / "part", 2, *args, "--epochs", "1")
    torchrun(tmp_path / "part", 2, "--resume", "--epochs", "2")
    a, b = RunDir(tmp_path / "full"), RunDir(tmp_path / "part")
    assert strip(a.read_metrics()) == strip(b.read_metrics())
    x, y = a.read_npz(a.activation_path(2)), b.read_npz(b.activation_path(2))
    assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x if k != "format_version")
    keys = [k for k in y if k.startswith("train/") and k.endswith("reservoir_keys")]
    assert keys and all(len(np.unique(y[k])) == len(y[k]) for k in keys)  # no key drawn twice


# --- evaluation shared by the ranks -------------------------------------------------------------


def evaluation(rank, world, preset):
    """What ``task.evaluate`` returns on this rank, and how many samples (images, or tokens) this rank's model saw."""
    from per_core.configs import get_preset
    from per_core.distributed import DistEnv
    from per_core.tasks import build_task

    cfg = get_preset(preset)
    cfg = cfg.replace(eval_batch_size=100) if preset == "demo" else cfg.as_smoke().replace(eval_batch_size=5)
    task = build_task(cfg, torch.device("cpu"))
    torch.manual_seed(0)
    kwargs = {"width": 8, "depth": 4} if preset == "demo" else {"hidden": 16}
    model = build_model(cfg.model, **task.model_kwargs(), norm="none", **kwargs).eval()
    seen = []
    model.register_forward_hook(lambda m, args, out: seen.append(args[0].numel() // (64 if preset == "demo" else 1)))
    env = DistEnv(rank, world) if world > 1 else None
    return task.evaluate(model, final=True, env=env), sum(seen)


@pytest.mark.parametrize("preset", ["demo", "corpus-lstm"])
def test_ranks_share_the_evaluation_and_report_what_one_process_does(tmp_path, preset):
    # before: every rank evaluated the whole validation (and test) split, R times the work of one process
    torch.set_num_threads(1)
    single, total = evaluation(0, 1, preset)
    (rank0, seen0), (rank1, seen1) = on_two_ranks(tmp_path, evaluation, preset)
    assert seen0 > 0 and seen1 > 0 and seen0 + seen1 == total  # each rank a share; together the whole split once
    assert rank0 == rank1  # one all-reduce: every rank reports the same (and steps its plateau schedule alike)
    assert rank0.keys() == single.keys()
    for k in single:  # images: the batches of one process, summed in float64 (rounding only); LM: narrower batches
        assert rank0[k] == pytest.approx(single[k], rel=1e-12 if preset == "demo" else 1e-6), k


def test_conversion_keeps_frozen_parameters_untracked_statistics_and_the_mode():
    # a review: BatchNorm2d(track_running_stats=False) failed to convert (missing buffers), a frozen BN came back
    # trainable (new parameters), and an optimizer built before the conversion held parameters no longer used
    model = nn.Sequential(nn.BatchNorm2d(4).requires_grad_(False), nn.BatchNorm2d(4, track_running_stats=False))
    model[0].running_mean.fill_(0.5)
    model[0].eval()
    before = list(model.parameters())
    converted = convert_sync_batchnorm(model, torch.device("cpu"))
    assert all(isinstance(m, CrossRankBatchNorm2d) for m in converted)
    assert [id(p) for p in converted.parameters()] == [id(p) for p in before]
    assert not any(p.requires_grad for p in converted[0].parameters())
    assert not converted[0].training and converted[1].training
    assert torch.equal(converted[0].running_mean, torch.full((4,), 0.5)) and converted[1].running_mean is None
    x = torch.randn(8, 4, 3, 3)
    reference = nn.BatchNorm2d(4, track_running_stats=False)
    torch.testing.assert_close(converted[1](x), reference(x))  # one process: plain batch statistics
    converted.eval()
    torch.testing.assert_close(converted[1](x), reference.eval()(x))  # untracked: batch statistics in eval too


def torchrun_failing(out, nproc, *args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += ["-m", "per_core.train", "--out", str(out), "--no-progress", "--device", "cpu", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, proc.stdout[-2000:]
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")], proc.stderr


def test_a_failing_start_under_torchrun_is_one_clean_line_per_failing_rank(tmp_path):
    # a review: rank 0 refused a non-empty --out and rank 1, waiting for it, printed a 20-line gloo traceback
    # ("Connection reset by peer"); an error raised on both ranks spliced into one line ("...of 2error: ...")
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    errors, stderr = torchrun_failing(run, 2, "--preset", "demo", "--smoke", "--epochs", "1")
    assert len(errors) == 1 and "is not empty; pass --resume" in errors[0], stderr[-3000:]
    assert "Connection" not in stderr and "per_core/train.py" not in stderr  # no worker traceback
    errors, stderr = torchrun_failing(tmp_path / "new", 2, "--preset", "demo", "--smoke", "--batch-size", "63")
    assert sorted(e.split(" is ")[0] for e in errors) == ["error: --batch-size 63", "error: rank 1: --batch-size 63"]


def ranks_with_their_own_seed(rank, world):
    import dataclasses

    from per_core.configs import PRESETS
    from per_core.distributed import DistEnv
    from per_core.train import _check_ranks_agree

    env = DistEnv(rank=rank, world_size=world)
    cfg = PRESETS["demo"]()
    _check_ranks_agree(env, cfg, "out", False, False)  # the same settings pass
    try:
        _check_ranks_agree(env, dataclasses.replace(cfg, seed=rank), "out", False, False)
    except ValueError as err:
        return str(err)
    return None


def test_ranks_started_with_different_settings_are_refused(tmp_path):
    # a review: a launcher giving rank 1 another --seed trained silently (another permutation, other slices per rank)
    messages = on_two_ranks(tmp_path, ranks_with_their_own_seed)
    assert messages[0] == messages[1] and "different settings (seed)" in messages[0]


def rank_0_refuses_with_an_empty_message(rank, world, out):
    import dataclasses

    import per_core.train as train
    from per_core.configs import PRESETS

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0")  # the group is up: joined as is

    def refuse(*args, **kwargs):
        raise OSError()  # str() of it is empty

    train.prepare_run_dir = refuse
    cfg = dataclasses.replace(PRESETS["demo"](), smoke=True, epochs=1, record=None)
    try:
        train._train_in_group(cfg, out, False, False, False, teardown=False)
    except BaseException as err:  # what each rank ends with is the result
        return type(err).__name__
    return "trained"


def test_rank_0_failing_with_an_empty_message_stops_every_rank(tmp_path):
    # a review: ranks were told of rank 0's failure by its message, so an OSError() with none let all of them
    # train, rank 0 into the folder it had refused
    assert on_two_ranks(tmp_path, rank_0_refuses_with_an_empty_message, str(tmp_path / "run")) == [
        "OSError",
        "PeerStopped",
    ]


def identical_ranks_with_a_nan_setting(rank, world):
    import dataclasses

    from per_core.configs import PRESETS
    from per_core.distributed import DistEnv
    from per_core.train import _check_ranks_agree

    cfg = dataclasses.replace(PRESETS["demo"](), gamma=float("nan"))
    _check_ranks_agree(DistEnv(rank=rank, world_size=world), cfg, "out", False, False)
    return "agreed"


def test_identical_ranks_with_a_nan_setting_agree(tmp_path):
    # a review: settings were compared with !=, and NaN != NaN refused two identical ranks
    assert on_two_ranks(tmp_path, identical_ranks_with_a_nan_setting) == ["agreed", "agreed"]


def untracked_bn_in_eval(rank, world):
    bn = CrossRankBatchNorm2d(3, track_running_stats=False).eval()
    x = far_from_zero(float(rank))  # each rank its own batch
    local = nn.functional.batch_norm(x, None, None, training=True, eps=bn.eps)
    return torch.allclose(bn(x), local)


def test_an_untracked_batchnorm_in_eval_uses_its_local_batch_as_syncbatchnorm(tmp_path):
    # a review: it all-reduced in eval (nn.SyncBatchNorm does not): statistics of both ranks' batches, and ranks
    # evaluating different numbers of batches waited for each other's collectives
    assert on_two_ranks(tmp_path, untracked_bn_in_eval) == [True, True]


def test_settings_are_compared_as_text_that_equal_settings_share():
    # a review: NaN != NaN refused identical ranks; repr() of a large array summarized it ("..."), so two different
    # arrays compared equal; a dict with int and str keys could not be sorted
    from per_core.train import _as_text

    assert _as_text(float("nan")) == _as_text(float("nan"))
    a = np.zeros(2000)
    b = a.copy()
    b[1000] = 1.0
    assert _as_text(a) != _as_text(b) and _as_text(torch.zeros(3)) == _as_text(torch.zeros(3))
    assert _as_text({1: "x", "y": 2}) == _as_text({1: "x", "y": 2})
    assert _as_text({"a": 1, "b": 2}) == _as_text({"b": 2, "a": 1})
    assert _as_text(np.int64(5)) == _as_text(5)  # a numpy scalar is the number it holds
