"""ActivationRecorder against independent references: numpy.histogram, numpy/scipy moments, chi-square."""

import gc
import io
import math
import warnings
import weakref

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from analysis.recorder import (
    COUNT_FIELDS,
    RECORDER_FORMAT,
    SPLITS,
    SUM_FIELDS,
    ActivationRecorder,
    _Stats,
    layer_stats,
    moments_from_sums,
)
from per_core.configs import PRESETS, TrainConfig
from per_core.models import build_model
from per_core.rundir import RunDir
from per_core.train import _should_record, build

FLT_MAX = float(np.finfo(np.float32).max)
STAT_FIELDS = ("hist", "under", "over", "nan", "posinf", "neginf", "count", "min", "max")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Tap(nn.Module):
    """Identity whose output is exactly the tensor fed in: the recorder sees known values."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def tap_recorder(**kwargs) -> tuple[Tap, ActivationRecorder]:
    tap = Tap()
    return tap, ActivationRecorder(tap, {"x": tap}, **kwargs)


def record(batches, *, epoch: int = 0, **kwargs) -> dict[str, np.ndarray]:
    tap, rec = tap_recorder(**kwargs)
    rec.start_epoch(epoch)
    for b in batches:
        tap(b)
    rec.end_epoch()
    return rec.snapshot()


def layer(arrays: dict[str, np.ndarray], prefix: str = "train/x") -> dict[str, np.ndarray]:
    return layer_stats(arrays, *prefix.split("/"))


def reference(x: np.ndarray, edges: np.ndarray) -> dict[str, np.ndarray]:
    """Per-unit statistics of rows x (n, U) with numpy/scipy only, one unit at a time."""
    cols: dict[str, list] = {k: [] for k in (*STAT_FIELDS, "mean", "var", "skew", "kurt")}
    for v in np.asarray(x, dtype=np.float64).T:
        f = v[np.abs(v) <= FLT_MAX]  # finite in float32 (NaN compares False)
        cols["hist"].append(np.histogram(f, bins=edges)[0])
        cols["under"].append((f < edges[0]).sum())
        cols["over"].append((f > edges[-1]).sum())
        cols["nan"].append(np.isnan(v).sum())
        cols["posinf"].append((v > FLT_MAX).sum())
        cols["neginf"].append((v < -FLT_MAX).sum())
        cols["count"].append(f.size)
        cols["min"].append(f.min() if f.size else np.inf)
        cols["max"].append(f.max() if f.size else -np.inf)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns on (near-)constant data
            cols["mean"].append(f.mean() if f.size else np.nan)
            cols["var"].append(f.var() if f.size else np.nan)
            cols["skew"].append(stats.skew(f) if f.size else np.nan)
            cols["kurt"].append(stats.kurtosis(f) if f.size else np.nan)
    return {k: np.array(v) for k, v in cols.items()}


def assert_matches_reference(got: dict[str, np.ndarray], ref: dict[str, np.ndarray], scale: float) -> None:
    for f in STAT_FIELDS:
        np.testing.assert_array_equal(got[f], ref[f], err_msg=f)
    # moments: float64 sums vs numpy's two-pass; tolerances in units of the data's scale
    np.testing.assert_allclose(got["mean"], ref["mean"], rtol=1e-9, atol=1e-12 * scale, err_msg="mean")
    np.testing.assert_allclose(got["var"], ref["var"], rtol=1e-7, atol=1e-12 * scale**2, err_msg="var")
    for f in ("skew", "kurt"):
        np.testing.assert_allclose(got[f], ref[f], rtol=1e-6, atol=1e-6, err_msg=f)


# -- histograms, counts and moments ------------------------------------------------------------


SPECIAL32 = [math.nan, math.inf, -math.inf, 1e30, -1e30, FLT_MAX, -FLT_MAX, 10.0, -10.0, 0.0, 0.5, 9.5]
SPECIAL64 = [*SPECIAL32, 1e39, -1e300, math.nextafter(10.0, 11.0), math.nextafter(-10.0, -11.0)]


@st.composite
def batches(draw):
    f64 = draw(st.booleans())
    units = draw(st.integers(1, 5))
    sizes = draw(st.lists(st.integers(1, 30), min_size=1, max_size=3))
    special = st.sampled_from(SPECIAL64 if f64 else SPECIAL32)
    scale = draw(st.sampled_from([0.01, 1.0, 5.0, 1e4]))
    normal = st.floats(-3, 3, width=64 if f64 else 32).map(lambda v: v * scale)
    value = st.one_of(normal, normal, special)
    dtype = torch.float64 if f64 else torch.float32
    return [
        torch.tensor(draw(st.lists(value, min_size=n * units, max_size=n * units)), dtype=dtype).view(n, units)
        for n in sizes
    ]


@given(batches(), st.sampled_from([1 << 24, 3]))
@settings(max_examples=120, deadline=None)
def test_statistics_match_numpy_and_scipy(data, chunk_elements):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow/invalid warning may come out of the recorder
        arrays = record(data, chunk_elements=chunk_elements)
        got = layer(arrays)
    x = torch.cat(data).numpy()
    ref = reference(x, arrays["edges"])
    finite = x[np.abs(x) <= FLT_MAX]
    assert_matches_reference(got, ref, scale=float(np.abs(finite).max(initial=1.0)))
    rows = x.shape[0]
    total = got["hist"].sum(1) + got["under"] + got["over"] + got["nan"] + got["posinf"] + got["neginf"]
    assert (total == rows).all()
    assert (got["count"] == got["hist"].sum(1) + got["under"] + got["over"]).all()


def test_edge_conventions_left_closed_bins_last_bin_closed():
    e = np.linspace(-10, 10, 41)
    x = torch.tensor(
        [*e, math.nextafter(10.0, 11.0), math.nextafter(-10.0, -11.0), FLT_MAX, -FLT_MAX, 1e39, -1e300],
        dtype=torch.float64,
    )[:, None]
    got = layer(record([x]))
    np.testing.assert_array_equal(got["hist"][0], [1] * 39 + [2])  # e_j -> bin j; e_40 closes the last bin
    assert (got["under"][0], got["over"][0], got["posinf"][0], got["neginf"][0]) == (2, 2, 1, 1)
    assert got["max"][0] == FLT_MAX and got["min"][0] == -FLT_MAX  # finite extremes still in the moments
    assert np.isfinite([got["mean"][0], got["var"][0], got["skew"][0], got["kurt"][0]]).all()


def test_half_precision_is_binned_exactly():
    x = torch.randn(500, 3, generator=gen(1)) * 4
    for dtype in (torch.float16, torch.bfloat16):
        xd = x.to(dtype)
        arrays = record([xd])
        ref = reference(xd.float().numpy(), arrays["edges"])
        assert_matches_reference(layer(arrays), ref, scale=20.0)


def values_at_every_edge(edges: np.ndarray, lo: float, hi: float, dtype: torch.dtype, finite: bool) -> torch.Tensor:
    """Every edge, its neighbouring floats of ``dtype`` on both sides, random values, zeros and tiny values."""
    npd = np.float64 if dtype == torch.float64 else np.float32
    e = edges.astype(npd)
    w = (hi - lo) / (len(edges) - 1)
    rng = np.random.default_rng(0)
    v = [e, np.nextafter(e, npd(np.inf)), np.nextafter(e, npd(-np.inf)), rng.uniform(lo - w, hi + w, 300)]
    v.append(np.array([0.0, -0.0, 1e-45, -1e-45, 1e-30, -1e-30, FLT_MAX, -FLT_MAX]))
    if not finite:
        v.append(np.array([math.nan, math.inf, -math.inf]))
    x = np.concatenate(v).astype(npd)
    return torch.from_numpy(np.stack([x, rng.permutation(x), -x], axis=1))  # (n, 3)


@pytest.mark.parametrize(
    ("lo", "hi", "bins", "paths"),
    [
        (-10.0, 10.0, 40, ("grid", "grid")),  # the default: exact floor(x / w)
        (-4.0, 4.0, 64, ("grid", "grid")),
        (0.0, 8.0, 8, ("grid", "grid")),
        (-3.3, 7.1, 37, ("guess", "guess")),  # guess and one comparison
        (-1e-3, 2e-3, 7, ("guess", "guess")),
        (1e4, 1e4 + 0.5, 40, ("bucketize", "guess")),  # far from 0: float32 guess too coarse
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("finite", [True, False])
def test_binning_at_and_next_to_every_edge_matches_numpy(lo, hi, bins, paths, dtype, finite):
    tap, rec = tap_recorder(bins=bins, range=(lo, hi))
    table = rec._table(dtype, torch.device("cpu"))
    path = "grid" if table.grid is not None else ("guess" if table.scale is not None else "bucketize")
    assert path == paths[dtype == torch.float64]  # fastest way for finite values; NaN/inf take the guess
    edges = rec.edges.numpy()
    x = values_at_every_edge(edges, lo, hi, dtype, finite)
    rec.start_epoch(0)
    tap(x[:100])
    tap(x[100:])
    got = layer(rec.snapshot())
    for f, ref in reference(x.numpy(), edges).items():
        if f in STAT_FIELDS:
            np.testing.assert_array_equal(got[f], ref, err_msg=f)


@pytest.mark.parametrize(("lo", "hi", "bins"), [(-2e38, 2e38, 1), (-3e38, 3e38, 7)])
def test_a_range_ending_within_a_bin_of_the_float32_maximum_counts_beyond_it_as_infinite(lo, hi, bins):
    # before: the guess was two buckets low there, so float64 values beyond 3.4028e38 counted as finite overflow
    beyond = math.nextafter(FLT_MAX, math.inf)
    v = [3.41e38, beyond, FLT_MAX, 3e38, 1.0, 0.0, 2.5e38, 1e38]
    x = torch.tensor([v, [-a for a in v], v[::-1]], dtype=torch.float64).T.contiguous()  # (8, 3)
    tap, rec = tap_recorder(bins=bins, range=(lo, hi))
    rec.start_epoch(0)
    tap(x)
    got = layer(rec.snapshot())
    for f, ref in reference(x.numpy(), rec.edges.numpy().astype(np.float64)).items():
        if f in STAT_FIELDS:
            np.testing.assert_array_equal(got[f], ref, err_msg=f)
    assert got["posinf"].tolist() == [2, 0, 2] and got["neginf"].tolist() == [0, 2, 0]


def test_two_batches_add_up_exactly_to_one_concatenated_batch():
    x = torch.randn(300, 4, generator=gen(2)) * 3 + 1
    x[5, 0], x[17, 2], x[40, 3] = math.nan, math.inf, 1e30
    one = layer(record([x]))
    two = layer(record([x[:100], x[100:]]))
    for f in STAT_FIELDS:
        np.testing.assert_array_equal(one[f], two[f])
    for f in ("mean", "var", "skew", "kurt"):
        np.testing.assert_allclose(one[f], two[f], rtol=1e-10)


def test_shifted_sums_keep_precision_far_from_zero():
    # mean 1e4 with std 1e-2: raw power sums would lose the kurtosis entirely
    x = 1e4 + 1e-2 * torch.randn(4000, 2, generator=gen(3), dtype=torch.float64)
    got = layer(record([x[:10], x[10:]], range=(-1e5, 1e5)))
    ref = reference(x.numpy(), np.linspace(-1e5, 1e5, 41))
    np.testing.assert_allclose(got["var"], ref["var"], rtol=1e-8)
    np.testing.assert_allclose(got["kurt"], ref["kurt"], rtol=1e-5, atol=1e-5)
    raw = moments_from_sums(np.full(2, 4000), np.zeros(2), *(((x.numpy()) ** p).sum(0) for p in range(1, 5)))
    assert np.abs(raw["kurt"] - ref["kurt"]).max() > 0.1  # unshifted float64 sums would fail this test


def first_finite_batches() -> list[torch.Tensor]:
    """Three batches of 3 units around 1e8 (std 1): unit 0 has no finite value in the first, unit 1 in the first two."""
    x = 1e8 + torch.randn(3, 200, 3, generator=gen(11), dtype=torch.float64)
    x[0, :, :2] = math.nan
    x[1, :, 1] = math.inf
    return list(x)


def test_a_unit_takes_its_shift_from_its_first_batch_with_a_finite_value():
    # before: the shift was set once, by the first batch, to 0 for a unit without finite values there; its later
    # sums were raw power sums at mean 1e8: variance 0 instead of 1, skew and kurtosis NaN
    batches = first_finite_batches()
    ref = reference(torch.cat(batches).numpy(), np.linspace(-10, 10, 41))
    assert_matches_reference(layer(record(batches)), ref, scale=1.0)
    (tap_a, a), (tap_b, b) = tap_recorder(), tap_recorder()  # merged: a saw the first batch only, b the others
    a.start_epoch(0)
    b.start_epoch(0)
    tap_a(batches[0])
    tap_b(batches[1])
    a += b
    tap_a(batches[2])  # a goes on after the merge: unit 1 gets its shift here
    assert_matches_reference(layer(a.snapshot()), ref, scale=1.0)


def test_huge_values_give_finite_moments_without_warnings():
    x = torch.tensor([[FLT_MAX], [-FLT_MAX], [1e30], [1.0], [math.inf]], dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = layer(record([x[:1], x[1:]]))
    ref = reference(x.numpy(), np.linspace(-10, 10, 41))
    assert_matches_reference(got, ref, scale=FLT_MAX)
    assert np.isfinite([got[f][0] for f in ("mean", "var", "skew", "kurt")]).all()


def test_constant_units_have_nan_skew_and_kurtosis_like_scipy():
    one_ulp = math.nextafter(1.0, 2.0)
    x = torch.tensor([[0.1, 1.0, 7.0], [0.1, one_ulp, 7.0], [0.1, 1.0, 7.0], [0.1, one_ulp, 8.0]], dtype=torch.float64)
    got = layer(record([x[:1], x[1:]]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_skew, ref_kurt = stats.skew(x.numpy()), stats.kurtosis(x.numpy())
    assert np.isnan(ref_skew[:2]).all() and np.isfinite(ref_skew[2])  # scipy: variance zero up to rounding
    np.testing.assert_allclose(got["skew"], ref_skew, rtol=1e-9)
    np.testing.assert_allclose(got["kurt"], ref_kurt, rtol=1e-9)
    assert got["var"][0] < 1e-30 and got["var"][1] < 1e-30


# -- merging -----------------------------------------------------------------------------------


def test_merge_equals_one_recorder_over_both_batches():
    x1 = torch.randn(50, 3, generator=gen(4)) + 2
    x2 = torch.randn(70, 3, generator=gen(5)) * 5
    x1[3, 1] = math.nan
    tap_a, a = tap_recorder(reservoir=16, seed=0)
    tap_c, c = tap_recorder(reservoir=16, seed=0)
    tap_b, b = tap_recorder(reservoir=16, seed=1)
    for r in (a, b, c):
        r.start_epoch(0)
    tap_a(x1)
    b.load_state_dict(a.state_dict())  # b continues a's key stream: the merged sample is c's exactly
    tap_b(x2)
    tap_c(x1)
    tap_c(x2)
    a += b
    merged, single = layer(a.snapshot()), layer(c.snapshot())
    for f in (*STAT_FIELDS, "reservoir", "reservoir_keys"):
        np.testing.assert_array_equal(merged[f], single[f], err_msg=f)
    for f in ("mean", "var", "skew", "kurt"):
        np.testing.assert_allclose(merged[f], single[f], rtol=1e-10, err_msg=f)


def test_merge_into_a_recorder_without_that_split_and_refusals():
    x = torch.randn(40, 2, generator=gen(6))
    _, a = tap_recorder()
    tap_b, b = tap_recorder()
    a.start_epoch(3)
    b.start_epoch(3)
    with b.eval_pass():
        tap_b(x)
    a.merge(b)
    assert layer(a.snapshot(), "eval/x")["count"].tolist() == [40, 40]
    b.start_epoch(4)
    with pytest.raises(ValueError, match="epoch"):
        a.merge(b)
    _, other_edges = tap_recorder(bins=10)
    other_edges.start_epoch(3)
    with pytest.raises(ValueError, match="edges"):
        a.merge(other_edges)


def test_reshift_is_exact_algebra():
    st_ = _Stats(2, 4, torch.device("cpu"))
    x = torch.tensor([[1.0, -3.0], [2.0, 5.0], [7.0, 0.5]], dtype=torch.float64)
    st_.counts.view(2, -1)[:, 2] = 3  # three finite values per unit
    st_.shift = torch.tensor([1.5, -2.0], dtype=torch.float64)
    st_.sums = torch.stack([((x - st_.shift) ** p).sum(0) for p in range(1, 5)])
    new = torch.tensor([10.0, 0.25], dtype=torch.float64)
    torch.testing.assert_close(st_.reshifted(new), torch.stack([((x - new) ** p).sum(0) for p in range(1, 5)]))


# -- reservoir ---------------------------------------------------------------------------------


def test_reservoir_is_uniform_and_holds_joint_rows():
    n, k, trials = 20, 5, 1500
    x = torch.arange(n, dtype=torch.float32)
    rows = torch.stack([x, -x, x * x], dim=1)  # (n, 3): a row is identified by unit 0
    tap, rec = tap_recorder(reservoir=k, chunk_elements=12, seed=7)  # 4 rows per chunk
    kept = np.zeros(n)
    for epoch in range(trials):
        rec.start_epoch(epoch, reservoir=True)
        tap(rows[:7])  # uneven batches: rows of both must be equally likely
        tap(rows[7:])
        res = rec.snapshot()["train/x/reservoir"]
        assert res.shape == (k, 3)
        ids = res[:, 0].astype(int)
        assert len(set(ids)) == k  # without replacement
        np.testing.assert_array_equal(res, rows[torch.as_tensor(ids)].numpy())  # joint rows, not per-unit samples
        kept[ids] += 1
    # each row kept with probability k/n
    assert stats.chisquare(kept, np.full(n, trials * k / n)).pvalue > 1e-3


def test_reservoir_keeps_everything_when_k_exceeds_rows_and_follows_the_schedule():
    x = torch.randn(6, 2, generator=gen(8))
    arrays = record([x[:2], x[2:]], reservoir=10)
    res = arrays["train/x/reservoir"]
    assert res.shape == (6, 2) and res.dtype == np.float32
    assert sorted(map(tuple, res.tolist())) == sorted(map(tuple, x.tolist()))
    assert np.all(np.diff(arrays["train/x/reservoir_keys"]) > 0)
    assert "train/x/reservoir" not in record([x], epoch=3, reservoir=10)  # 3 % 20 != 0
    assert "train/x/reservoir" in record([x], epoch=40, reservoir=10)
    assert "train/x/reservoir" not in record([x], epoch=0, reservoir=10, reservoir_splits=())


def test_state_dict_resumes_the_key_stream_exactly():
    x = torch.randn(200, 3, generator=gen(9))
    tap1, r1 = tap_recorder(reservoir=8, seed=3)
    r1.start_epoch(0)
    tap1(x)
    state = r1.state_dict()
    r1.start_epoch(20)
    tap1(x)
    tap2, r2 = tap_recorder(reservoir=8, seed=3)
    cpu = state["generators"]["cpu"]  # states of devices this process lacks (a GPU run resumed on a CPU) are left out
    r2.load_state_dict({**state, "generators": {"cuda:99": cpu, "mps:0": cpu, "cpu": cpu}})
    r2.start_epoch(20)
    tap2(x)
    np.testing.assert_array_equal(r1.snapshot()["train/x/reservoir"], r2.snapshot()["train/x/reservoir"])
    tap3, r3 = tap_recorder(reservoir=8, seed=3)  # fresh generator: a different sample
    r3.start_epoch(20)
    tap3(x)
    assert not np.array_equal(r1.snapshot()["train/x/reservoir"], r3.snapshot()["train/x/reservoir"])


# -- layers, layouts and modes -----------------------------------------------------------------


def test_conv_units_are_channels_and_every_location_is_a_row():
    conv = nn.Conv2d(2, 5, 3, padding=1)
    x = torch.randn(3, 2, 4, 6, generator=gen(10))
    with ActivationRecorder(conv, {"conv": conv}, reservoir=30) as rec:
        rec.start_epoch(0)
        out = conv(x)
        arrays = rec.snapshot()
    got = layer(arrays, "train/conv")
    rows = out.detach().permute(0, 2, 3, 1).reshape(-1, 5).numpy()  # (N*H*W, C) by hand
    assert got["hist"].shape == (5, 40) and got["count"].tolist() == [3 * 4 * 6] * 5
    assert_matches_reference(got, reference(rows, arrays["edges"]), scale=10.0)
    for r in got["reservoir"]:
        assert np.any(np.all(rows == r, axis=1))  # a channel vector at one location


def test_conv1d_lstm_and_packed_sequences():
    conv = nn.Conv1d(3, 4, 2)
    lstm = nn.LSTM(3, 5)
    net = nn.ModuleDict({"conv": conv, "lstm": lstm})
    x = torch.randn(7, 2, 3, generator=gen(11))  # (T, N, features)
    with ActivationRecorder(net, "all") as rec:
        assert rec.layers == ["conv", "lstm"]
        rec.start_epoch(0)
        c_out = conv(x.permute(1, 2, 0))  # (N, C, L) = (2, 4, 6)
        l_out, _ = lstm(x)  # (T, N, H) = (7, 2, 5)
        arrays = rec.snapshot()
        lstm(pack_padded_sequence(x, torch.tensor([7, 4])))
        packed = rec.snapshot()
    conv_ref = reference(c_out.detach().permute(0, 2, 1).reshape(-1, 4).numpy(), arrays["edges"])
    assert_matches_reference(layer(arrays, "train/conv"), conv_ref, scale=10.0)
    lstm_ref = reference(l_out.detach().reshape(-1, 5).numpy(), arrays["edges"])
    assert_matches_reference(layer(arrays, "train/lstm"), lstm_ref, scale=1.0)
    assert layer(packed, "train/lstm")["count"].tolist() == [14 + 11] * 5  # padding is not recorded


def test_all_uses_pre_activations_and_names_are_checked():
    model = build_model("small_cnn", depth=3)
    rec = ActivationRecorder(model, "all")
    assert rec.layers == ["layer1", "layer2", "layer3"]
    rec.remove()
    lstm = nn.LSTM(3, 4)  # the model is itself the one recordable module: labelled by its class
    with ActivationRecorder(lstm, "all") as rec:
        assert rec.modules == {"LSTM": lstm}
    with pytest.raises(ValueError, match=r"unknown layer names \['nope'\]; available: layer1, layer2, layer3 \(or"):
        ActivationRecorder(model, ["blocks.0.conv", "nope"])
    with pytest.raises(ValueError, match=r"available: 0, 0.act, 0.conv, 0.norm\Z"):  # no pre_activations()
        ActivationRecorder(nn.Sequential(model.blocks[0]), ["nope"])
    rec = ActivationRecorder(model, ["layer2"])  # the trainer's --record labels work here too
    assert rec.modules == {"layer2": model.pre_activations()["layer2"]}
    rec.remove()
    with pytest.raises(ValueError, match="'/'"):
        ActivationRecorder(model, {"a/b": model.head})
    rec = ActivationRecorder(model, ["blocks.1.conv", "head"])
    model.train()
    rec.start_epoch(0)
    model(torch.randn(2, 1, 8, 8, generator=gen(12)))
    assert layer(rec.snapshot(), "train/head")["count"].tolist() == [2] * 10
    assert layer(rec.snapshot(), "train/blocks.1.conv")["count"].tolist() == [2 * 64] * 32


def test_nothing_is_recorded_outside_epochs_or_in_eval_mode():
    tap, rec = tap_recorder()
    x = torch.ones(4, 2)
    tap(x)  # before any epoch
    rec.start_epoch(0)
    tap.eval()
    tap(x)  # eval mode outside eval_pass
    tap.train()
    tap(x)  # recorded
    rec.end_epoch()
    tap(x)  # after the epoch
    arrays = rec.snapshot()
    assert layer(arrays)["count"].tolist() == [4, 4]
    assert not any(k.startswith("eval/") for k in arrays)


def test_eval_pass_records_separately():
    net = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5))
    xt, xe = torch.randn(10, 3, generator=gen(13)), torch.randn(6, 3, generator=gen(14))
    with ActivationRecorder(net, {"lin": net[0]}) as rec:
        with pytest.raises(RuntimeError, match="start_epoch"), rec.eval_pass():
            pass
        rec.start_epoch(0)
        out_t = net[0](xt)
        rec.end_epoch()
        net.eval()
        with rec.eval_pass(), torch.no_grad():
            out_e = net[0](xe)
        net.train()
        net(xt)  # after end_epoch and outside eval_pass: not recorded
        arrays = rec.snapshot()
    assert_matches_reference(layer(arrays, "train/lin"), reference(out_t.detach().numpy(), arrays["edges"]), 10.0)
    assert_matches_reference(layer(arrays, "eval/lin"), reference(out_e.numpy(), arrays["edges"]), 10.0)


def test_train_every_records_one_forward_in_n():
    tap, rec = tap_recorder(train_every=3)
    rec.start_epoch(0)
    for i in range(7):
        tap(torch.full((2, 1), float(i)))
    with rec.eval_pass():
        tap(torch.zeros(5, 1))
        tap(torch.zeros(5, 1))
    got = layer(rec.snapshot())
    assert got["count"].tolist() == [6] and got["min"][0] == 0.0 and got["max"][0] == 6.0  # forwards 0, 3, 6
    assert got["mean"][0] == 3.0
    assert layer(rec.snapshot(), "eval/x")["count"].tolist() == [10]


# -- determinism and devices ------------------------------------------------------------------


@pytest.fixture
def deterministic():
    """torch.use_deterministic_algorithms(True) for one test; the previous setting comes back afterwards."""
    before, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


def record_model(model: nn.Module, batches, **kwargs) -> dict[str, np.ndarray]:
    """Train-mode forwards of ``batches`` and one eval pass, recorded at a reservoir epoch."""
    with ActivationRecorder(model, "all", reservoir=16, reservoir_splits=SPLITS, **kwargs) as rec:
        rec.start_epoch(0)
        model.train()
        with torch.no_grad():
            for b in batches:
                model(b)
            with rec.eval_pass():
                model(batches[0])
        return rec.snapshot()


def test_recording_under_deterministic_algorithms_gives_the_same_statistics(deterministic):
    model = build_model("small_cnn", depth=3)
    g = gen(30)
    batches = [torch.randn(5, 1, 8, 8, generator=g), torch.randn(3, 1, 8, 8, generator=g)]
    x = torch.randn(40, 3, generator=g) * 4
    x[3, 0], x[7, 1], x[9, 2] = math.nan, math.inf, -math.inf  # the masked path too
    got = record_model(model, batches), record([x[:10], x[10:]], reservoir=8)
    torch.use_deterministic_algorithms(False)
    ref = record_model(model, batches), record([x[:10], x[10:]], reservoir=8)
    for a, b in zip(got, ref, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_per_batch_update_does_not_synchronize_with_the_host_on_cuda():
    dev = torch.device("cuda")
    net = nn.ModuleDict({"conv": Tap(), "rows": Tap()})  # (N, C, H, W) channels first; (N, U) rows
    g = torch.Generator(device=dev).manual_seed(0)
    conv = [torch.randn(n, 6, 5, 7, generator=g, device=dev) * 3 for n in (4, 2)]
    rows = [torch.randn(n, 5, generator=g, device=dev) * 3 for n in (40, 30)]
    rows[1][3, 0], rows[1][4, 1], rows[1][5, 2], rows[0][0, 4] = math.nan, math.inf, -math.inf, 3e38
    half = torch.randn(20, 5, generator=g, device=dev).half()

    def forwards() -> None:
        for c, r in zip(conv, rows, strict=True):
            net["conv"](c)
            net["rows"](r)
        net["rows"](half)
        with rec.eval_pass():
            net["conv"](conv[0])

    rec = ActivationRecorder(net, {"conv": net["conv"], "rows": net["rows"]}, reservoir=16, reservoir_splits=SPLITS)
    rec.start_epoch(0)
    forwards()  # warm-up: the bucket tables and the generator are made once per device
    rec.start_epoch(20)  # fresh statistics at a reservoir epoch: the first batch sets the shift
    torch.cuda.synchronize()
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")  # any host synchronization raises
    try:
        forwards()
    finally:
        torch.cuda.set_sync_debug_mode(before)
    got = rec.snapshot()
    ref = record([r.cpu() for r in (*rows, half)], epoch=20, reservoir=16)  # the same values on the CPU
    for f in STAT_FIELDS:
        np.testing.assert_array_equal(layer(got, "train/rows")[f], layer(ref)[f], err_msg=f)
    for f in ("mean", "var", "skew", "kurt"):
        np.testing.assert_allclose(layer(got, "train/rows")[f], layer(ref)[f], rtol=1e-10, err_msg=f)
    cpu_conv = [c.cpu().permute(0, 2, 3, 1).reshape(-1, 6).numpy() for c in conv]
    ref_conv = reference(np.concatenate(cpu_conv), got["edges"])
    assert_matches_reference(layer(got, "train/conv"), ref_conv, scale=20.0)
    assert got["train/conv/reservoir"].shape == (16, 6) and got["eval/conv/reservoir"].shape == (16, 6)


# -- graph, hooks, outputs ---------------------------------------------------------------------


def test_no_graph_is_kept_alive_and_outputs_are_untouched():
    for dtype in (torch.float32, torch.float64):
        lin = nn.Linear(3, 4).to(dtype)
        x = torch.randn(8, 3, generator=gen(15), dtype=dtype)
        with ActivationRecorder(lin, {"lin": lin}, reservoir=16) as rec:  # k > rows: all rows kept
            rec.start_epoch(0)
            out = lin(x)
            expected = out.detach().clone()
            ref = weakref.ref(out)
            torch.testing.assert_close(out, expected, rtol=0, atol=0)  # recording never writes into it
            out.detach().mul_(0)  # a later in-place op on the output must not reach the reservoir
            kept = torch.from_numpy(rec.snapshot()["train/lin/reservoir"]).to(dtype)
            assert sorted(map(tuple, kept.tolist())) == sorted(
                map(tuple, expected.to(torch.float32).to(dtype).tolist())
            )
            out.sum().backward()
            del out
            gc.collect()
            assert ref() is None
            held = [v for s in rec._stats.values() for v in vars(s).values() if isinstance(v, torch.Tensor)]
            assert held and not any(t.requires_grad or t.grad_fn is not None for t in held)


def test_hooks_are_removed_on_exception():
    model = build_model("small_cnn", depth=2)
    with pytest.raises(KeyError), ActivationRecorder(model, "all"):
        assert all(len(m._forward_hooks) == 1 for m in model.pre_activations().values())
        raise KeyError("boom")
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_non_float_output_is_an_error():
    tap, rec = tap_recorder()
    rec.start_epoch(0)
    with pytest.raises(TypeError, match="floating-point"):
        tap(torch.tensor([[1, 2]]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bins": 0}, "bins must be an integer >= 1"),
        ({"bins": 2.5}, "bins must be an integer >= 1"),
        ({"reservoir": 2.5}, "reservoir must be an integer >= 0"),
        ({"reservoir": -1}, "reservoir must be an integer >= 0"),
        ({"reservoir_every": 0}, "reservoir_every must be an integer >= 1"),
        ({"train_every": True}, "train_every must be an integer >= 1"),
        ({"seed": "x"}, r"seed must be an integer in \[0, 2\*\*64\)"),
        ({"seed": 2**70}, r"seed must be an integer in \[0, 2\*\*64\)"),
        ({"chunk_elements": 0}, "chunk_elements must be None \\(the device's default\\) or a positive integer"),
        ({"range": (1, 2, 3)}, "range must be two finite numbers"),
        ({"range": (2, 1)}, "range must be two finite numbers"),
        ({"range": "ab"}, "range must be two finite numbers"),
        ({"reservoir_splits": ("test",)}, "reservoir_splits must be a subset"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tap_recorder(**kwargs)


def test_bad_model_epoch_and_empty_batches():
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        ActivationRecorder("abc")
    tap, rec = tap_recorder()
    for epoch in (1.7, -1, "3", True):
        with pytest.raises(ValueError, match="epoch must be an integer >= 0"):
            rec.start_epoch(epoch)
    rec.start_epoch(np.int64(2))  # numpy integers are integers
    tap(torch.zeros(0, 3))  # an empty batch: nothing counted, no error
    assert not any(k.startswith("train/") for k in rec.snapshot())
    tap(torch.ones(4, 3))
    assert layer(rec.snapshot())["count"].tolist() == [4, 4, 4]


# -- saving, budget, tensorboard ---------------------------------------------------------------


def test_save_writes_the_documented_schema(tmp_path):
    tap, rec = tap_recorder(reservoir=4)
    rec.start_epoch(20)
    tap(torch.randn(9, 2, generator=gen(16)))
    with rec.eval_pass():
        tap(torch.randn(3, 2, generator=gen(17)))
    path = rec.save(tmp_path, 20)
    rd = RunDir(tmp_path)
    assert path == rd.activation_path(20)
    z = rd.read_npz(path)
    assert int(z["format_version"]) == RECORDER_FORMAT and int(z["epoch"]) == 20 and int(z["reservoir_k"]) == 4
    assert z["layers"].tolist() == ["x"] and z["edges"].dtype == np.float64 and z["edges"].shape == (41,)
    assert z["count_fields"].tolist() == list(COUNT_FIELDS) and z["sum_fields"].tolist() == list(SUM_FIELDS)
    for split, rows in (("train", 9), ("eval", 3)):
        shapes = {
            f: (z[f"{split}/x/{f}"].shape, z[f"{split}/x/{f}"].dtype) for f in ("hist", "counts", "sums", "minmax")
        }
        assert shapes == {
            "hist": ((2, 40), np.int64),
            "counts": ((2, 6), np.int64),
            "sums": ((2, 5), np.float64),
            "minmax": ((2, 2), np.float64),
        }
        assert layer_stats(z, split, "x")["count"].tolist() == [rows, rows]
    with pytest.raises(KeyError, match=r"no train/y statistics; recorded: \['eval/x', 'train/x'\]"):
        layer_stats(z, "train", "y")
    assert z["train/x/reservoir"].shape == (4, 2) and z["train/x/reservoir"].dtype == np.float32
    assert "eval/x/reservoir" not in z  # default: train split only
    with pytest.raises(ValueError, match="epoch"):
        rec.save(tmp_path, 21)
    assert not list(rd.activations_dir.glob(".*tmp"))  # atomic: no temp file left


def trainer_setup(cfg: TrainConfig):
    """What ``per_core.train.build`` makes of ``cfg`` (on smoke data of the same shape, on the CPU)."""
    with torch.random.fork_rng():  # build seeds the global generator
        setup = build(cfg.replace(device="cpu").as_smoke())
    setup.per.remove()
    if setup.penalty is not None:
        setup.penalty.remove()
    return setup


def storage_of_a_run(cfg: TrainConfig, train_images: int = 50_000) -> tuple[int, dict[str, int]]:
    """Bytes of activation files a run of ``cfg`` writes, with the trainer's recorder and schedule.

    CIFAR-sized counts (``train_images`` per epoch, ``cfg.record_eval_samples`` eval images) filled into
    the real recorder's accumulators; one ordinary and one reservoir epoch are compressed as
    ``RunDir.write_npz`` does, and the run's recorded epochs are counted as ``per_core.train`` does.
    """
    setup = trainer_setup(cfg)
    rec, model = setup.recorder, setup.module
    rec.start_epoch(0)
    model.train()
    with torch.no_grad():
        model(setup.task.record_batch()[:1])  # one image: rows per image of every layer
    one = rec.snapshot()
    rec.remove()
    shapes = {
        label: (len(one[f"train/{label}/counts"]), int(one[f"train/{label}/counts"][0, 0])) for label in rec.layers
    }
    recorded = [e for e in range(1, cfg.epochs + 1) if _should_record(cfg, e)]
    # per_core.train: start_epoch(epoch, reservoir=True if epoch == cfg.epochs else None)
    with_reservoir = [e for e in recorded if e % rec.reservoir_every == 0 or e == cfg.epochs]
    steps = -(-train_images // cfg.batch_size)
    images = {"train": -(-steps // rec.train_every) * cfg.batch_size, "eval": cfg.record_eval_samples}
    rng = np.random.default_rng(0)
    e = rec.edges.numpy()

    def epoch_bytes(reservoir: bool) -> int:
        rec.start_epoch(1, reservoir=reservoir)
        for split in SPLITS:
            for label, (w, per_image) in shapes.items():
                st_ = _Stats(w, rec.bins, torch.device("cpu"))
                mu, sd = rng.normal(0, 1, w), rng.uniform(0.3, 3, w)  # wide, drifting units
                cdf = np.concatenate(
                    [np.zeros((w, 1)), stats.norm.cdf((e - mu[:, None]) / sd[:, None]), np.ones((w, 1))], 1
                )
                c = np.zeros((w, rec.bins + 5), dtype=np.int64)
                rows = images[split] * per_image
                c[:, 1 : rec.bins + 3] = rng.multinomial(rows, np.diff(cdf, axis=1))
                st_.counts = torch.from_numpy(c.reshape(-1))
                st_.shift, st_.sums = torch.from_numpy(mu), torch.from_numpy(rng.normal(size=(4, w)) * rows)
                st_.min, st_.max = torch.from_numpy(mu - 5 * sd), torch.from_numpy(mu + 5 * sd)
                if rec._reservoir_now and split in rec.reservoir_splits:
                    k = min(rec.reservoir, rows)
                    st_.keys, st_.rows = torch.rand(k, dtype=torch.float64), torch.randn(k, w)
                rec._stats[split, label] = st_
        buf = io.BytesIO()
        np.savez_compressed(buf, **rec.snapshot())  # what RunDir.write_npz writes
        return len(buf.getvalue())

    plain, reservoir = epoch_bytes(False), epoch_bytes(True)
    total = (len(recorded) - len(with_reservoir)) * plain + len(with_reservoir) * reservoir
    units = sum(w for w, _ in shapes.values())
    return total, {
        "epochs": len(recorded),
        "reservoir_epochs": len(with_reservoir),
        "epoch_bytes": plain,
        "reservoir_epoch_bytes": reservoir,
        "reservoir_bytes": rec.reservoir * units * 4 * len(rec.reservoir_splits),
    }


def test_budget_of_the_table2_runs_with_the_trainers_recorder():
    """Every Table 2 preset (the paper's 11-layer CNN on CIFAR) writes < 200 MB of activation files."""
    totals = {}
    for name in (n for n in PRESETS if n.startswith("table2-")):
        cfg = PRESETS[name]()
        key = (cfg.model, cfg.data, cfg.epochs, cfg.batch_size, cfg.record, cfg.record_every, cfg.record_eval_samples)
        key += (cfg.record_train_every, cfg.record_reservoir_every)
        if key not in totals:
            totals[key] = storage_of_a_run(cfg)
        total, parts = totals[key]
        assert parts["reservoir_epoch_bytes"] - parts["epoch_bytes"] > 0.9 * parts["reservoir_bytes"]  # incompressible
        assert total < 200e6, f"{name}: {total / 1e6:.0f} MB ({parts})"


def test_to_tensorboard_logs_one_histogram_per_split_and_layer():
    calls = []

    class Writer:
        def add_histogram_raw(self, tag, **kw):
            calls.append((tag, kw))

    x = torch.randn(50, 3, generator=gen(18)) * 3
    x[0, 0] = 50.0  # outside the range: in num and sum, not in the buckets
    tap, rec = tap_recorder()
    rec.start_epoch(5)
    tap(x)
    rec.to_tensorboard(Writer())
    [(tag, kw)] = calls
    assert tag == "activations/train/x" and kw["global_step"] == 5 and kw["num"] == 150
    assert sum(kw["bucket_counts"]) == 149 and len(kw["bucket_limits"]) == 40
    assert kw["sum"] == pytest.approx(float(x.double().sum()))
    assert kw["sum_squares"] == pytest.approx(float((x.double() ** 2).sum()))
    assert kw["max"] == 50.0


@pytest.mark.parametrize(("layer", "shape"), [(nn.Conv2d(3, 5, 3), (3, 10, 10)), (nn.Linear(4, 6), (4,))])
def test_an_unbatched_input_is_recorded_as_a_batch_of_one(layer, shape):
    # a conv's H must not pass for its channels; a Linear's (d,) is one row of d units
    x = torch.randn(*shape)
    snaps = []
    for inp in (x, x.unsqueeze(0)):
        with ActivationRecorder(layer, {"l": layer}) as rec:
            rec.start_epoch(1)
            layer(inp)
            snaps.append(layer_stats(rec.snapshot(), "train", "l"))
    assert snaps[0]["count"].shape == (layer.weight.shape[0],)
    for key in ("count", "mean", "var"):
        np.testing.assert_array_equal(snaps[0][key], snaps[1][key])


def test_passes_under_inference_mode_are_recorded_and_later_passes_still_work():
    lin = nn.Linear(4, 6)
    rec = ActivationRecorder(lin, {"fc": lin})
    xs = [torch.randn(8, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    for epoch in (1, 2):  # buffers made in one epoch's inference-mode pass are updated in the next
        rec.start_epoch(epoch)
        with torch.inference_mode():
            lin(xs[0])
        lin(xs[1])
        with rec.eval_pass(), torch.inference_mode():
            lin(xs[2])
        rec.end_epoch()
    snap = rec.snapshot()
    with torch.no_grad():
        train, ev = torch.cat([lin(xs[0]), lin(xs[1])]), lin(xs[2])
    assert layer_stats(snap, "train", "fc")["count"].tolist() == [16] * 6
    assert np.allclose(layer_stats(snap, "train", "fc")["mean"], train.mean(0).double().numpy(), atol=1e-6)
    assert np.allclose(layer_stats(snap, "eval", "fc")["mean"], ev.mean(0).double().numpy(), atol=1e-6)


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_records_each_row_once(reentrant):
    from torch.utils.checkpoint import checkpoint

    lin = nn.Linear(4, 6)
    x = torch.randn(8, 4, requires_grad=True)
    with ActivationRecorder(lin, {"fc": lin}) as rec:
        rec.start_epoch(1)
        checkpoint(lambda x: torch.tanh(lin(x)), x, use_reentrant=reentrant).sum().backward()
        assert layer_stats(rec.snapshot(), "train", "fc")["count"].tolist() == [8] * 6  # not 16: the recompute


def test_saving_an_epoch_that_recorded_nothing_warns_and_names_eval_pass(tmp_path):
    lin = nn.Linear(4, 6).eval()  # eval mode outside eval_pass(): nothing is recorded
    rec = ActivationRecorder(lin, {"fc": lin})
    rec.start_epoch(1)
    lin(torch.randn(8, 4))
    with pytest.warns(UserWarning, match=r"no layer recorded anything in epoch 1.*eval_pass"):
        rec.save(RunDir(tmp_path))
    rec.start_epoch(2)
    with rec.eval_pass():
        lin(torch.randn(8, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec.save(RunDir(tmp_path))


def test_each_module_type_is_recorded_as_rows_of_its_own_units():
    # before: a Linear on channels-last maps (N, H, W, C) was recorded as H units, a BatchNorm1d after a Conv1d as L
    lin, bn, act = nn.Linear(3, 7), nn.BatchNorm1d(4), nn.ELU()
    model = nn.ModuleDict({"lin": lin, "bn": bn, "act": act})
    x, y = torch.randn(2, 5, 6, 3, generator=gen(30)), torch.randn(6, 4, 9, generator=gen(31))
    units = {}
    for layout, expected_act in ((None, 9), ("channels_first", 4), ({"act": "channels_first"}, 4)):
        with ActivationRecorder(model, {"lin": lin, "bn": bn, "act": act}, layout=layout) as rec:
            rec.start_epoch(0)
            with torch.no_grad():
                lin(x), act(bn(y))
            arrays = rec.snapshot()
        units = {k: len(layer_stats(arrays, "train", k)["count"]) for k in ("lin", "bn", "act")}
        assert units == {"lin": 7, "bn": 4, "act": expected_act}, layout  # layout= only decides for "act"
    with pytest.raises(ValueError, match="layout must be None"):
        ActivationRecorder(model, {"lin": lin}, layout="nhwc")
    with pytest.raises(ValueError, match=r"layout names unknown layers \['act'\]"):
        ActivationRecorder(model, {"lin": lin}, layout={"act": "channels_first"})
