"""analysis.bounds: L_per on the same slices as SW1, the two inequalities, and the point-mass trap."""

import dataclasses
import json
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import analysis.bounds as bounds_module
from analysis.bounds import (
    LPER_AT_GAUSSIAN,
    LPER_FLOOR,
    BoundReport,
    check_bounds,
    per_bound,
    per_bound_slices,
)
from analysis.distances import _projections, sliced_w1_to_normal, sliced_w1_to_normal_slices, w1_to_normal
from per_core.per import per_loss, sample_slices


def test_reference_constants():
    assert LPER_FLOOR == pytest.approx(0.7978845608, rel=1e-10)
    assert LPER_AT_GAUSSIAN == pytest.approx(1.1283791671, rel=1e-10)


def test_per_bound_is_per_loss_on_the_slices_of_sliced_w1_to_normal():
    X = np.random.default_rng(0).standard_t(3, size=(257, 4))
    theta = sample_slices(32, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    expected = float(per_loss(torch.from_numpy(X), theta=theta))
    assert per_bound(X, 32, seed=7) == expected
    assert per_bound(X, projections=theta.numpy()) == expected
    np.testing.assert_array_equal(_projections(4, 32, 7), theta.numpy())  # the slices of sliced_w1_to_normal
    assert per_bound_slices(X, 32, seed=7).mean() == pytest.approx(expected, rel=1e-13)
    assert per_bound(torch.from_numpy(X), 32, seed=7) == expected  # tensors in, float out
    assert per_bound(X, 32, seed=8) != expected


def test_per_bound_slices_in_chunks(monkeypatch):
    import analysis.distances as distances_module

    X = np.random.default_rng(12).normal(size=(300, 3))
    ref = per_bound_slices(X, 40)
    monkeypatch.setattr(distances_module, "_CHUNK_ELEMENTS", 900)  # 3 slices per chunk
    np.testing.assert_allclose(per_bound_slices(X, 40), ref, rtol=1e-14)


def test_per_bound_against_monte_carlo_over_z():
    rng = np.random.default_rng(1)
    X = rng.normal(0.5, 2.0, size=(6, 3))
    P = _projections(3, 10, 0)
    a = (X @ P.T).ravel()  # (n * s,)
    z = rng.standard_normal(200_000)
    per_z = np.abs(z[:, None] - a[None, :]).mean(axis=1)  # mean over (i, j) for every z
    mc, se = per_z.mean(), per_z.std() / math.sqrt(z.size)
    assert abs(per_bound(X, projections=P) - mc) < 5 * se
    # and slice by slice
    per_slice_mc = np.abs(z[:20_000, None, None] - (X @ P.T)[None]).mean(axis=(0, 1))
    np.testing.assert_allclose(per_bound_slices(X, projections=P), per_slice_mc, rtol=0.02)


def test_reference_values_floor_and_gaussian():
    assert per_bound(np.zeros((5, 3)), 8) == pytest.approx(LPER_FLOOR, rel=1e-14)
    X = np.random.default_rng(2).normal(size=(100_000, 3))
    assert per_bound(X, 32) == pytest.approx(LPER_AT_GAUSSIAN, abs=0.01)
    assert sliced_w1_to_normal(X, 32) < 0.01  # the Gaussian is the target, yet L_per is not minimal there


@st.composite
def datasets(draw):
    """Distributions of many shapes: each kind is generated from a seed so hypothesis can shrink it."""
    kind = draw(
        st.sampled_from(
            [
                "gaussian",
                "skewed",
                "student_t",
                "cauchy_clipped",
                "multimodal",
                "correlated",
                "all_equal",
                "single_row",
                "tiny",
                "huge",
                "shifted",
                "minute",
                "enormous",
            ]
        )
    )
    n = 1 if kind == "single_row" else draw(st.integers(2, 80))
    d = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**20)))
    X = {
        "gaussian": lambda: rng.normal(size=(n, d)),
        "skewed": lambda: rng.lognormal(0.0, 1.0, size=(n, d)),
        "student_t": lambda: rng.standard_t(2.5, size=(n, d)),
        "cauchy_clipped": lambda: np.clip(rng.standard_cauchy(size=(n, d)), -1e4, 1e4),
        "multimodal": lambda: rng.integers(-3, 4, size=(n, d)) * 2.0 + rng.normal(0, 0.2, size=(n, d)),
        "correlated": lambda: rng.normal(size=(n, d)) @ rng.normal(size=(d, d)),
        "all_equal": lambda: np.tile(rng.normal(0, 3, size=d), (n, 1)),
        "single_row": lambda: rng.normal(0, 3, size=(1, d)),
        "tiny": lambda: 1e-8 * rng.normal(size=(n, d)),
        "huge": lambda: 1e6 * rng.normal(size=(n, d)),
        "minute": lambda: 1e-300 * rng.normal(size=(n, d)),
        "enormous": lambda: 1e300 * rng.normal(size=(n, d)),  # squares and sums of n terms would overflow
        "shifted": lambda: rng.normal(size=(n, d)) + rng.normal(0, 5, size=d),
    }[kind]()
    return kind, X


@given(datasets(), st.integers(0, 100))
@settings(max_examples=60, deadline=None)
def test_check_bounds_passes_on_many_distributions(data, seed):
    kind, X = data
    report = check_bounds(X, n_projections=24, seed=seed, exact_max_samples=60)
    assert report.per_slice_ok, str(report)
    assert report.w1_ok, str(report)
    assert report.passed
    # the per-slice inequality itself, recomputed from the public functions
    sw = sliced_w1_to_normal_slices(X, 24, seed)
    lp = per_bound_slices(X, 24, seed)
    assert np.all(sw <= lp * (1 + 1e-9) + 1e-12)
    assert report.sw1 == pytest.approx(sw.mean(), rel=1e-14) and report.lper == pytest.approx(lp.mean(), rel=1e-14)
    assert report.lper >= LPER_FLOOR * (1 - 1e-12)  # E|Z - a| >= E|Z| for every a
    assert report.gap >= -1e-9 * report.lper
    if kind in ("all_equal", "single_row"):  # a point mass: the bound is an equality on every slice
        np.testing.assert_allclose(sw, lp, rtol=1e-10)
        assert report.projected_std == pytest.approx(0.0, abs=1e-9 * (1 + np.abs(X).max()))
        assert any("point mass" in note for note in report.notes)
    if kind in ("tiny", "minute"):
        assert report.collapsed and any("near its floor" in note for note in report.notes)
        assert report.lper == pytest.approx(LPER_FLOOR, rel=1e-6)
    if kind in ("huge", "enormous"):
        assert not report.collapsed


def test_the_collapsed_note_says_near_the_floor_only_when_it_is():
    # an audit: rows narrow around (1, 1, 1) got "near its floor ... because the activations shrank" at L_per 1.09
    rng = np.random.default_rng(0)
    off = check_bounds(1.0 + 0.05 * rng.normal(size=(64, 3)), n_projections=32, seed=0)
    assert off.collapsed and off.lper > 1.0
    note = next(n for n in off.notes if n.startswith("collapsed"))
    assert "near its floor" not in note and "projected spread is small" in note and "the true SW1" in note
    shrunk = check_bounds(0.05 * rng.normal(size=(64, 3)), n_projections=32, seed=0)
    assert any(n.startswith("collapsed") and "near its floor" in n for n in shrunk.notes)


def test_the_point_mass_trap():
    """Shrinking the activations towards 0 lowers L_per to its floor while the true SW1 grows."""
    X = np.random.default_rng(3).normal(size=(4000, 3))
    scales = [1.0, 0.7, 0.5, 0.3, 0.1, 0.01, 0.0]
    reports = [check_bounds(c * X, n_projections=32, seed=0, exact_max_samples=300) for c in scales]
    lper = np.array([r.lper for r in reports])
    sw1 = np.array([r.sw1 for r in reports])
    assert np.all(np.diff(lper) < 0)  # L_per decreases ...
    assert np.all(np.diff(sw1) > 0)  # ... while the distance to N(0, I) increases
    assert lper[0] == pytest.approx(LPER_AT_GAUSSIAN, abs=0.03) and sw1[0] < 0.05
    assert lper[-1] == pytest.approx(LPER_FLOOR, rel=1e-14) and sw1[-1] == pytest.approx(LPER_FLOOR, rel=1e-12)
    # the shrunk activations have a *smaller* L_per than the target distribution itself
    assert all(r.lper < reports[0].lper for r in reports[1:])
    assert [r.collapsed for r in reports] == [False, False, False, True, True, True, True]
    assert all(r.passed for r in reports)
    assert "the true SW1" in str(reports[-2])


def test_dimension_one_uses_the_exact_w1():
    x = np.random.default_rng(4).gamma(2.0, 1.0, size=(500, 1))
    report = check_bounds(x, n_projections=16)
    assert report.w1 == w1_to_normal(x[:, 0])
    assert report.w1_slack == 0.0 and "exact" in report.w1_method
    assert report.sw1 == pytest.approx(report.w1, rel=1e-12)  # slices are +-1: SW1 = W1 in 1-D
    assert report.passed


def test_w1_side_with_a_subsample_is_rigorous_and_reported():
    X = np.random.default_rng(5).exponential(size=(900, 3))
    report = check_bounds(X, n_projections=32, exact_max_samples=200)
    assert report.passed
    assert "subsample of 200" in report.w1_method
    full = check_bounds(X[:200], n_projections=32, exact_max_samples=200)
    assert "all" in full.w1_method and full.w1_slack > 0
    # the slack is the exact SW1 of a 200-point Gaussian sample (plus the subsample term): small
    assert report.w1_slack < 0.3 * report.w1


def test_the_w1_slack_is_needed_and_exact():
    # data that *is* the Gaussian sample check_bounds draws: the OT term is 0, and only the slack
    # SW1(Gaussian sample, N(0, I)) covers SW1 -- with equality, so a smaller slack would fail
    n, d, seed = 64, 3, 5
    X = np.random.default_rng([bounds_module._RNG_TAG, seed]).standard_normal((n, d))
    report = check_bounds(X, n_projections=16, seed=seed)
    assert report.w1 == pytest.approx(0.0, abs=1e-12)
    assert report.w1_slack == pytest.approx(report.sw1, rel=1e-12) and report.sw1 > 0.05
    assert report.passed


def test_check_detects_a_violated_minkowski_bound(monkeypatch):
    X = np.random.default_rng(6).normal(size=(50, 2)) + 3.0
    assert check_bounds(X, 16).passed
    monkeypatch.setattr(bounds_module, "per_bound_slices", lambda X, **kw: np.zeros(16))
    report = check_bounds(X, 16)
    assert not report.per_slice_ok and not report.passed
    assert report.per_slice_max_violation > 1.0
    assert any("Minkowski" in note for note in report.notes)
    assert "FAILED" in str(report)


def test_check_detects_a_violated_w1_bound(monkeypatch):
    X = np.random.default_rng(7).normal(size=(50, 2)) + 3.0
    monkeypatch.setattr(bounds_module, "w1", lambda *a, **kw: 0.0)
    report = check_bounds(X, 16)
    assert report.per_slice_ok and not report.w1_ok and not report.passed


def test_point_mass_far_out_is_an_equality_within_tolerance():
    # a point mass far out: both sides equal to rounding, so a zero tolerance would be flaky,
    # while a violation of 1e-6 relative is far beyond it
    X = np.full((7, 3), 4.2)
    report = check_bounds(X, 16)
    assert report.per_slice_ok
    assert abs(report.per_slice_max_violation) <= 1e-12 * report.lper


def test_report_is_frozen_serializable_and_readable():
    X = np.random.default_rng(8).normal(size=(120, 2))
    report = check_bounds(X, 16, seed=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.sw1 = 0.0  # type: ignore[misc]
    d = report.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["passed"] is True and d["lper_floor"] == LPER_FLOOR and d["lper_at_gaussian"] == LPER_AT_GAUSSIAN
    assert set(d) >= {"sw1", "lper", "gap", "w1", "w1_slack", "collapsed", "notes", "n_projections", "seed"}
    text = str(report)
    assert "PASSED" in text and "sqrt(2/pi)" in text and f"{report.sw1:.6g}" in text
    assert isinstance(report, BoundReport)
    assert check_bounds(X, 16, seed=3) == report  # reproducible
    assert check_bounds(X, 16, seed=4).sw1 != report.sw1


def test_no_global_random_state_is_touched():
    np_state, torch_state = np.random.get_state(), torch.get_rng_state()  # noqa: NPY002 (the legacy global)
    check_bounds(np.random.default_rng(9).normal(size=(40, 3)), 8, exact_max_samples=20)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1])  # noqa: NPY002


def test_gaussian_sample_is_not_the_data_stream():
    # data drawn with default_rng(seed) must not come back as the "independent" Gaussian sample
    X = np.random.default_rng(0).normal(size=(200, 3))
    assert check_bounds(X, 8, seed=0).w1 > 0.1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(X=[[np.nan, 0.0]]), "X must be finite"),
        (dict(X=np.ones(4)), r"shape \(n_samples, dim\)"),
        (dict(X=np.ones((3, 2)), n_projections=0), "n_projections"),
        (dict(X=np.ones((3, 2)), exact_max_samples=0), "exact_max_samples"),
        (dict(X=np.ones((3, 2)), rtol=-1.0), "rtol"),
        (dict(X=np.ones((3, 2)), collapse_std=math.nan), "collapse_std"),
        (dict(X=np.ones((3, 2)), projections=[[2.0, 0.0]]), "unit"),
    ],
)
def test_check_bounds_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        check_bounds(**kwargs)


def test_per_bound_validation():
    with pytest.raises(ValueError, match="X must be finite"):
        per_bound([[0.0, np.inf]])
    with pytest.raises(ValueError, match="n_projections"):
        per_bound_slices(np.ones((2, 2)), -3)


# --- reliability: seeds, extreme magnitudes, NaN/Inf and half precision ------------------------------


def test_three_rows_near_the_float64_maximum():
    # the true L_per (~9e306) fits in float64; per_loss's sum of n x s terms would not
    X = np.full((3, 2), 1e307)
    P = _projections(2, 256, 0)
    a = np.abs(P @ [1.0, 1.0])  # |<x, theta_j>| / 1e307 of the point mass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # E|Z - a| = |a| once exp(-a^2/2) underflows: L_per = mean_j |a_j|
        assert per_bound(X) == pytest.approx(1e307 * a.mean(), rel=1e-12)
        np.testing.assert_allclose(per_bound_slices(X, projections=P), 1e307 * a, rtol=1e-12)
        report = check_bounds(X * [1, -1], n_projections=64)
    assert report.passed and math.isfinite(report.lper) and math.isfinite(report.w1)
    assert report.lper == pytest.approx(report.sw1, rel=1e-12)  # a point mass: the bound is tight
    with pytest.raises(ValueError, match="overflow"):  # projections beyond the float64 maximum
        per_bound(np.full((3, 2), 1.5e308))


@pytest.mark.parametrize("seed", [2**64, 2**70, -1])
def test_out_of_range_seeds_name_the_argument(seed):
    for call in (per_bound, per_bound_slices, check_bounds):
        with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*64\)"):
            call(np.ones((3, 2)), 8, seed)


@given(
    n=st.integers(1, 20),
    d=st.integers(1, 4),
    log_scale=st.integers(-300, 300),
    bad=st.sampled_from([np.nan, np.inf, -np.inf]),
    as_tensor=st.booleans(),
    data=st.data(),
)
@settings(max_examples=40, deadline=None)
def test_nan_and_inf_anywhere_are_rejected_naming_x(n, d, log_scale, bad, as_tensor, data):
    X = np.random.default_rng(n * d).normal(size=(n, d)) * 10.0**log_scale
    X[data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, d - 1))] = bad
    X = torch.from_numpy(X) if as_tensor else X
    for call in (per_bound, per_bound_slices, check_bounds):
        with pytest.raises(ValueError, match="X must be finite"):
            call(X, 8)


@given(n=st.integers(1, 30), d=st.integers(1, 4), log_scale=st.floats(-300, 300), seed=st.integers(0, 2**16))
@settings(max_examples=60, deadline=None)
def test_per_bound_at_any_magnitude_up_to_1e300(n, d, log_scale, seed):
    scale = 10.0**log_scale
    X0 = np.random.default_rng(seed).standard_t(3, size=(n, d))
    P = _projections(d, 8, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lper = per_bound(X0 * scale, projections=P)
        slices = per_bound_slices(X0 * scale, projections=P)
    # |E|Z - a| - |a|| <= E|Z| = sqrt(2/pi): L_per is the mean |projection| up to that
    assert abs(lper - scale * np.abs(X0 @ P.T).mean()) <= LPER_FLOOR * (1 + 1e-9) + 1e-12 * scale
    assert lper >= LPER_FLOOR * (1 - 1e-12) and np.isfinite(slices).all()
    assert slices.mean() == pytest.approx(lper, rel=1e-12)


@given(
    n=st.integers(1, 40),
    d=st.integers(1, 4),
    log_scale=st.floats(-6, 4),
    dtype=st.sampled_from([torch.float16, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None)
def test_half_precision_tensors_are_handled_and_close_to_the_float32_result(n, d, log_scale, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    X32 = torch.randn(n, d, generator=g) * 10.0**log_scale + torch.randn(d, generator=g)
    X16 = X32.to(dtype)
    # L_per and SW1 move by at most max_i |x_i - x'_i| when each row moves (both are 1-Lipschitz)
    dx = float((X16.double() - X32.double()).norm(dim=1).max())
    assert abs(per_bound(X16, 16) - per_bound(X32, 16)) <= dx + 1e-9
    np.testing.assert_allclose(per_bound_slices(X16, 16), per_bound_slices(X32, 16), rtol=0, atol=dx + 1e-9)
    report = check_bounds(X16, 16, exact_max_samples=40)
    assert report.passed and abs(report.lper - per_bound(X32, 16)) <= dx + 1e-9


# --- the analysis command lines: usage errors are one line ----------------------------------------


@pytest.mark.parametrize(
    ("module", "argv", "message"),
    [
        ("analysis.bounds", ["RUN", "--seed", "x"], "argument --seed: invalid int value: 'x'"),
        ("analysis.bounds", ["RUN", "--seed", str(2**70)], f"error: --seed must be in [0, 2**64), got {2**70} ("),
        ("analysis.bounds", ["RUN", "--n-projections", "0"], "error: --n-projections must be >= 1, got 0 ("),
        (
            "analysis.bounds",
            ["RUN", "--n-projections", "-2", "--seed", "-1"],
            "error: --n-projections must be >= 1, got -2; --seed must be in [0, 2**64), got -1 (",
        ),
        ("analysis.bounds", [], "the following arguments are required: paths"),
        ("analysis.plot", ["RUN", "--format", "gif"], "argument --format: invalid choice: 'gif'"),
        ("analysis.plot", ["RUN", "--units", "a"], "argument --units: invalid int value: 'a'"),
        ("analysis.plot", ["RUN", "--seed", "-1"], "error: --seed must be in [0, 2**64), got -1 ("),
        ("analysis.plot", ["RUN", "--n-projections", "0"], "error: --n-projections must be >= 1, got 0 ("),
    ],
)
def test_analysis_cli_usage_errors_are_one_line_exit_2(module, argv, message, capsys):
    import importlib

    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"python -m {module}: error: ") and message in err, err
    assert err.count("\n") == 1 and err.endswith(" (see --help)\n") and "usage:" not in err


@pytest.mark.parametrize("module", ["analysis.bounds", "analysis.plot"])
def test_analysis_cli_process_prints_one_line_and_no_traceback(module, tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", module, str(tmp_path), "--n-projections", "many"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    message = "argument --n-projections: invalid int value: 'many'"
    assert proc.returncode == 2 and proc.stderr == f"python -m {module}: error: {message} (see --help)\n"
