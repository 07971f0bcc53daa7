"""The run's random streams: one seed each, none shared between purposes, runs or ranks that must differ."""

import hashlib
import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import per_core.train as train_module
from per_core.configs import get_preset
from per_core.rundir import RunDir
from per_core.seeds import PER_RANK, STREAMS, stream_seed
from per_core.tasks import build_task


def test_stream_seeds_are_stable_across_versions():
    # pinned: a changed derivation silently changes every recorded result (demo table, figures, docs/RESULTS.md)
    assert stream_seed(0, "init") == 1989388591723381907
    assert stream_seed(7, "locations", rank=3) == 8760815611879213852
    digest = hashlib.blake2b(b"per_core/augment/1/5", digest_size=8).digest()  # the documented formula
    assert stream_seed(5, "augment", 1) == int.from_bytes(digest, "little")


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_no_two_streams_of_two_runs_or_ranks_share_a_seed(a, b):
    keys = [(s, name, r) for s in {a, b} for name in STREAMS for r in ((0, 1, 2) if name in PER_RANK else (0,))]
    seeds = [stream_seed(*k) for k in keys]
    assert all(0 <= x < 2**64 for x in seeds)
    assert len({x % 2**32 for x in seeds}) == len(keys)  # torch's CPU generator keeps only the low 32 bits


def test_seeds_2_to_the_32_apart_are_different_runs():
    # torch.Generator().manual_seed(s) and manual_seed(s + 2**32) draw alike: a run seeded directly repeated itself
    assert torch.equal(
        torch.randn(4, generator=torch.Generator().manual_seed(5)),
        torch.randn(4, generator=torch.Generator().manual_seed(5 + 2**32)),
    )
    for stream in STREAMS:
        assert stream_seed(5, stream) % 2**32 != stream_seed(5 + 2**32, stream) % 2**32


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, "dropouts"), "unknown random stream 'dropouts'"),
        ((0, "data", 1), "stream 'data' is shared by all ranks"),
        ((0, "augment", -1), "rank must be a non-negative integer"),
        ((-1, "data"), "seed must be an integer in"),
        ((2**64, "data"), "seed must be an integer in"),
    ],
)
def test_bad_streams_ranks_and_seeds_are_refused_by_name(args, message):
    with pytest.raises(ValueError, match=message):
        stream_seed(*args)


def _trainer_seeds(seed: int) -> dict[str, int]:
    cfg = get_preset("demo").replace(method="per", seed=seed, epochs=1, record="all", per_locations=2)
    s = train_module.build(cfg, train_module.DistEnv())
    return {
        "dropout": torch.initial_seed(),
        "data": s.data_generator.initial_seed(),
        "augment": s.aug_generator.initial_seed(),
        "slices": s.per.seed,
        "locations": s.per.locations_seed,
        "recorder": s.recorder.seed,
    }


def test_the_trainer_seeds_each_purpose_of_each_run_apart():
    runs = {seed: _trainer_seeds(seed) for seed in (0, 1, 2)}
    flat = [v for r in runs.values() for v in r.values()]
    assert len(set(flat)) == len(flat), runs  # seed s + 1 was seed s's augmentation; one seed fed four streams
    assert all(runs[s][k] == stream_seed(s, k) for s, k in itertools.product(runs, runs[0]))


def test_the_initialization_is_its_own_stream():
    cfg = get_preset("demo").replace(method="vanilla", epochs=1, record=None)
    first = next(train_module.build(cfg, train_module.DistEnv()).module.parameters()).detach().clone()
    torch.manual_seed(stream_seed(0, "init"))
    task = build_task(cfg, torch.device("cpu"))
    model = train_module.build_model(
        cfg.model, **task.model_kwargs(), norm=train_module.norm_for(cfg.method), **cfg.model_args
    )
    again = next(model.parameters())
    assert torch.equal(first, again)


def test_synthetic_data_is_one_data_set_for_every_run_seed():
    cfg = get_preset("table1-resnet56").replace(smoke=True)
    a, b = (build_task(cfg.replace(seed=s), torch.device("cpu")) for s in (0, 5))
    assert torch.equal(a.record_batch(), b.record_batch())


def test_a_checkpoint_from_before_the_location_stream_keeps_drawing_locations_from_the_slices(tmp_path):
    cfg = get_preset("demo").replace(method="per", epochs=1, record=None, per_locations=2)
    train_module.train(cfg, tmp_path / "run", progress=False)
    run = RunDir(tmp_path / "run")
    fresh = train_module.build(cfg, train_module.DistEnv())
    train_module.load_checkpoint(run, fresh)
    assert fresh.per.locations_seed == stream_seed(0, "locations")  # this version's checkpoint: its own stream
    ckpt = run.load_checkpoint()
    for state in (ckpt["per"], *(r["per"] for r in ckpt["rng_ranks"])):
        state.pop("location_generators")  # what a single-process checkpoint held before
    run.save_checkpoint(ckpt)
    old = train_module.build(cfg, train_module.DistEnv())
    train_module.load_checkpoint(run, old)
    assert old.per.locations_seed is None  # as it was trained: locations from the slice generator
