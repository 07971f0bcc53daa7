"""analysis.distances against independent references: quadrature, mpmath, scipy, closed forms, POT."""

import itertools
import math
import time
import warnings

import mpmath
import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from analysis.distances import (
    GAUSSIAN_SAMPLE_W1,
    W1_MAX_SAMPLES,
    _projections,
    max_sliced_w1,
    sliced_w1,
    sliced_w1_to_normal,
    sliced_w1_to_normal_grad,
    sliced_w1_to_normal_slices,
    w1,
    w1_to_normal,
    w1_to_normal_hist,
)
from per_core.per import sample_slices

SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


def point_mass_w1(c: float) -> float:
    """W1(delta_c, N(0,1)) = E|Z - c| in closed form (math.erf, not the code under test)."""
    return c * math.erf(c / math.sqrt(2)) + SQRT_2_OVER_PI * math.exp(-c * c / 2)


def gaussian_w1(m: float, s: float) -> float:
    """W1(N(m, s^2), N(0, 1)) = E|m + (s - 1) Z| (the monotone coupling z -> m + s z is optimal in 1-D)."""
    k = abs(s - 1)
    if k == 0:
        return abs(m)
    return m * math.erf(m / (math.sqrt(2) * k)) + k * SQRT_2_OVER_PI * math.exp(-m * m / (2 * k * k))


def quad_w1(x, weights=None) -> float:
    """int |F_n(t) - Phi(t)| dt by scipy quadrature on the pieces of F_n (the CDF form, not the quantile form)."""
    x = np.asarray(x, dtype=float)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float)
    order = np.argsort(x)
    xs, cum = x[order], np.cumsum(w[order]) / w.sum()
    opts = dict(epsabs=1e-13, epsrel=1e-12, limit=200)
    total = integrate.quad(stats.norm.cdf, -np.inf, xs[0], **opts)[0]
    total += integrate.quad(stats.norm.sf, xs[-1], np.inf, **opts)[0]
    for left, right, c in zip(xs[:-1], xs[1:], cum[:-1], strict=True):
        if right <= left:
            continue
        cut = float(np.clip(stats.norm.ppf(c), left, right))
        for lo, hi in ((left, cut), (cut, right)):
            if hi > lo:
                total += integrate.quad(lambda t, c=c: abs(c - stats.norm.cdf(t)), lo, hi, **opts)[0]
    return total


def mpmath_w1(x, weights=None, dps: int = 30) -> float:
    """The same integral in 30-digit arithmetic (mpmath), for the tails where float64 references fail."""
    with mpmath.workdps(dps):
        x = [mpmath.mpf(float(v)) for v in x]
        w = [mpmath.mpf(1)] * len(x) if weights is None else [mpmath.mpf(float(v)) for v in weights]
        pairs = sorted(zip(x, w, strict=True), key=lambda p: p[0])
        total_w = sum(p[1] for p in pairs)
        total = mpmath.quad(mpmath.ncdf, [-mpmath.inf, pairs[0][0]])
        total += mpmath.quad(lambda t: 1 - mpmath.ncdf(t), [pairs[-1][0], mpmath.inf])
        c = mpmath.mpf(0)
        for (left, wl), (right, _) in itertools.pairwise(pairs):
            c += wl / total_w
            if right <= left:
                continue
            cut = min(max(mpmath.sqrt(2) * mpmath.erfinv(2 * c - 1), left), right)
            for lo, hi in ((left, cut), (cut, right)):
                if hi > lo:
                    total += mpmath.quad(lambda t, c=c: abs(c - mpmath.ncdf(t)), [lo, hi])
        return float(total)


@pytest.fixture(scope="module")
def big_gaussian():
    return np.random.default_rng(12345).standard_normal(1_000_000)


# --- w1_to_normal -----------------------------------------------------------------------------


@given(st.floats(-60, 60))
@settings(max_examples=60, deadline=None)
def test_point_mass_matches_closed_form(c):
    assert w1_to_normal([c]) == pytest.approx(point_mass_w1(c), rel=1e-12, abs=1e-14)
    # n copies of the same point are the same distribution
    assert w1_to_normal([c] * 7) == pytest.approx(point_mass_w1(c), rel=1e-12, abs=1e-14)


@given(
    st.lists(st.floats(-8, 8), min_size=1, max_size=10),
    st.none() | st.lists(st.integers(0, 5), min_size=10, max_size=10),
)
@settings(max_examples=40, deadline=None)
def test_matches_quadrature_of_the_cdf_difference(x, counts):
    weights = None
    if counts is not None:
        weights = counts[: len(x)]
        if sum(weights) == 0:
            weights[0] = 1
    assert w1_to_normal(x, weights=weights) == pytest.approx(quad_w1(x, weights), rel=1e-8, abs=1e-10)


@pytest.mark.parametrize(
    ("x", "weights"),
    [
        (stats.norm.ppf((np.arange(20) + 0.5) / 20), None),  # the quantile grid: W1 is small, terms cancel
        ([6.0, 7.5, 9.0, 12.0], None),  # the whole sample deep in the upper tail
        ([-11.0, -7.0, -6.5], None),  # and in the lower tail
        ([0.0, 9.0], [1 - 1e-9, 1e-9]),  # a tiny mass at the top: steps in (1 - 1e-9, 1]
        ([-9.0, 0.0], [1e-9, 1 - 1e-9]),
        ([-1e6, 0.0, 1e6], None),
    ],
)
def test_matches_mpmath_in_the_tails(x, weights):
    assert w1_to_normal(x, weights=weights) == pytest.approx(mpmath_w1(x, weights), rel=1e-10, abs=1e-15)


@pytest.mark.parametrize("scale", [1e308, 1e-310])
def test_weights_at_the_ends_of_float64_give_the_same_distance(scale):
    # before: at 1e308 the weights' sum overflowed to inf, every normalized weight became 0 and the last point got
    # all the mass (1.1666 = E|Z - 1| instead of 0.6666)
    x, w = np.array([0.0, 1.0, -0.5]), np.array([1.0, 1.0, 0.5])
    assert w1_to_normal(x, weights=w * scale) == pytest.approx(w1_to_normal(x, weights=w), rel=1e-12)


@pytest.mark.parametrize(("m", "s"), [(0.0, 1.0), (0.5, 2.0), (-1.0, 0.3), (3.0, 1.0), (0.0, 5.0), (0.2, 0.0)])
def test_gaussian_samples_match_the_two_gaussian_closed_form(m, s, big_gaussian):
    z = big_gaussian[:200_000]
    x = m + s * z
    # rigorous: |W1(x, N) - W1(N(m, s^2), N)| <= W1(x, N(m, s^2)) = s * W1(z, N(0,1)) (triangle inequality)
    slack = s * w1_to_normal(z)
    assert slack < 0.005 * max(1.0, s)  # the check is sharp: 200k points are close to their Gaussian
    assert abs(w1_to_normal(x) - gaussian_w1(m, s)) <= slack + 1e-12


def test_against_scipy_and_a_huge_gaussian_sample(big_gaussian):
    rng = np.random.default_rng(0)
    g = big_gaussian
    slack = w1_to_normal(g)  # W1(g, N(0,1)), small (about 1e-3 for 1e6 points)
    assert slack < 3e-3
    for x in (rng.standard_t(3, 500), rng.exponential(1.0, 300) - 1, np.r_[rng.normal(-2, 0.5, 200), 3.0]):
        ref = stats.wasserstein_distance(x, g)
        assert abs(w1_to_normal(x) - ref) <= slack + 1e-9


def test_a_million_points_is_fast(big_gaussian):
    t0 = time.perf_counter()
    value = w1_to_normal(big_gaussian)
    assert time.perf_counter() - t0 < 5.0
    assert 0 < value < 3e-3


@given(st.lists(st.floats(-5, 5), min_size=1, max_size=8), st.data())
@settings(max_examples=30, deadline=None)
def test_integer_weights_equal_repeated_points(x, data):
    counts = data.draw(st.lists(st.integers(1, 4), min_size=len(x), max_size=len(x)))
    repeated = np.repeat(x, counts)
    assert w1_to_normal(x, weights=counts) == pytest.approx(w1_to_normal(repeated), rel=1e-12, abs=1e-14)
    # zero weights drop points; scaling the weights changes nothing
    assert w1_to_normal([*x, 100.0], weights=[*counts, 0]) == pytest.approx(
        w1_to_normal(x, weights=np.array(counts) * 3.5), rel=1e-12, abs=1e-14
    )


@given(st.lists(st.floats(-20, 20), min_size=1, max_size=30), st.randoms())
@settings(max_examples=30, deadline=None)
def test_invariances_permutation_and_sign_flip(x, rnd):
    ref = w1_to_normal(x)
    shuffled = list(x)
    rnd.shuffle(shuffled)
    assert w1_to_normal(shuffled) == pytest.approx(ref, rel=1e-12, abs=1e-14)
    assert w1_to_normal([-v for v in x]) == pytest.approx(ref, rel=1e-10, abs=1e-13)  # N(0,1) is symmetric


def test_accepts_tensors_lists_and_ints():
    x = [0.5, -1.0, 2.0]
    ref = w1_to_normal(np.array(x))
    assert w1_to_normal(x) == ref
    assert w1_to_normal(torch.tensor(x, dtype=torch.float64, requires_grad=True)) == ref
    assert w1_to_normal(torch.tensor(x)) == pytest.approx(ref, rel=1e-7)  # float32 input, float64 math
    assert w1_to_normal([1, 2, 3]) == w1_to_normal([1.0, 2.0, 3.0])
    assert isinstance(ref, float)


@pytest.mark.parametrize(
    ("x", "weights", "match"),
    [
        ([0.0, np.nan], None, r"x must be finite, got 1 NaN"),
        ([np.inf, 0.0], None, r"x must be finite, got 0 NaN and 1 infinite"),
        ([], None, "x must not be empty"),
        ([[0.0, 1.0]], None, r"x must be a 1-D sample"),
        ([0.0, 1.0], [1.0], "weights must have the shape"),
        ([0.0, 1.0], [1.0, -1.0], "non-negative"),
        ([0.0, 1.0], [0.0, 0.0], "positive sum"),
        ([0.0, 1.0], [1.0, np.nan], "weights must be finite"),
    ],
)
def test_w1_to_normal_rejects_bad_input(x, weights, match):
    with pytest.raises(ValueError, match=match):
        w1_to_normal(x, weights=weights)


def test_rejects_non_real_input():
    with pytest.raises(TypeError, match="real numbers"):
        w1_to_normal(np.array([1 + 1j]))
    with pytest.raises(TypeError, match="real numbers"):
        w1_to_normal(["a", "b"])


# --- w1_to_normal_hist ------------------------------------------------------------------------


@given(
    st.sampled_from(["normal", "skewed", "bimodal", "heavy"]),
    st.integers(1, 300),
    st.integers(1, 60),
    st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None)
def test_hist_bound_contains_the_exact_value(kind, n, bins, seed):
    rng = np.random.default_rng(seed)
    x = {
        "normal": lambda: rng.normal(0.3, 1.5, n),
        "skewed": lambda: rng.lognormal(0, 1, n),
        "bimodal": lambda: np.where(rng.random(n) < 0.5, -2.0, 2.0) + rng.normal(0, 0.3, n),
        "heavy": lambda: rng.standard_t(2, n),
    }[kind]()
    counts, edges = np.histogram(x, bins=bins)
    value, bound = w1_to_normal_hist(counts, edges)
    assert abs(w1_to_normal(x) - value) <= bound + 1e-12
    assert bound <= np.diff(edges).max() / 2 + 1e-15
    # with the data range, the bins tighten and the bound only improves
    value2, bound2 = w1_to_normal_hist(counts, edges, data_min=x.min(), data_max=x.max())
    assert bound2 <= bound + 1e-15
    assert abs(w1_to_normal(x) - value2) <= bound2 + 1e-12


def test_hist_bound_is_attained():
    # everything at the left edge of a far bin: the midpoint is off by exactly the half width
    value, bound = w1_to_normal_hist([5], [10.0, 12.0])
    assert bound == 1.0
    assert abs(value - w1_to_normal([10.0] * 5)) == pytest.approx(bound, rel=1e-12)


def test_hist_underflow_and_overflow():
    rng = np.random.default_rng(1)
    x = rng.standard_t(3, 2000)
    edges = np.linspace(-2, 2, 41)
    counts, _ = np.histogram(x, bins=edges)
    under, over = int((x < -2).sum()), int((x > 2).sum())
    assert under > 0 and over > 0
    exact = w1_to_normal(x)
    value, bound = w1_to_normal_hist(counts, edges, underflow=under, overflow=over)
    assert bound == math.inf  # the outliers' values are unknown
    value, bound = w1_to_normal_hist(counts, edges, underflow=under, overflow=over, data_min=x.min(), data_max=x.max())
    assert math.isfinite(bound)
    assert abs(exact - value) <= bound + 1e-12
    # ignoring the outliers would be wrong, and the bound says so only if they are declared
    value_wrong, bound_wrong = w1_to_normal_hist(counts, edges)
    assert abs(exact - value_wrong) > bound_wrong


@given(st.floats(-60, 60), st.floats(0.01, 5), st.integers(1, 500), st.integers(0, 2**16))
@settings(max_examples=40, deadline=None)
def test_hist_of_a_unit_beyond_the_range_is_located_by_its_min_and_max(mean, std, n, seed):
    # a review: the overflow bin was always [edges[-1], data_max], so a unit at 50 +- 1 against the recorder's
    # [-10, 10] range was placed at 30 (w1_hist 31.7 for an exact 50.0); it lies in [max(e_n, data_min), data_max]
    x = np.random.default_rng(seed).normal(mean, std, n)
    edges = np.linspace(-10, 10, 41)
    counts, _ = np.histogram(x, bins=edges)
    under, over = int((x < edges[0]).sum()), int((x > edges[-1]).sum())
    value, bound = w1_to_normal_hist(counts, edges, underflow=under, overflow=over, data_min=x.min(), data_max=x.max())
    exact = w1_to_normal(x)
    assert abs(exact - value) <= bound + 1e-9 * max(1.0, exact)
    if under == n or over == n:  # all beyond the range: the bound is half the data's own spread
        assert bound <= (x.max() - x.min()) / 2 + 1e-12


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(counts=[1, 2], edges=[0.0, 1.0]), "n_bins \\+ 1"),
        (dict(counts=[1, 2], edges=[0.0, 1.0, 1.0]), "strictly increasing"),
        (dict(counts=[1, -2], edges=[0.0, 1.0, 2.0]), "non-negative"),
        (dict(counts=[0, 0], edges=[0.0, 1.0, 2.0]), "empty"),
        (dict(counts=[1, np.nan], edges=[0.0, 1.0, 2.0]), "counts must be finite"),
        (dict(counts=[1, 1], edges=[0.0, 1.0, 2.0], underflow=-1), "underflow"),
        (dict(counts=[1, 1], edges=[0.0, 1.0, 2.0], data_min=1.5), "outside"),
        (dict(counts=[1, 1], edges=[0.0, 1.0, 2.0], underflow=1, data_min=0.5), "not below"),
        (dict(counts=[1, 1], edges=[0.0, 1.0, 2.0], data_min=np.nan), "data_min must be finite"),
    ],
)
def test_hist_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        w1_to_normal_hist(**kwargs)


# --- slices and sliced W1 to N(0, I) ----------------------------------------------------------


def test_projections_are_the_seeded_sample_slices():
    P = _projections(5, 16, 3)
    ref = sample_slices(16, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64).numpy()
    assert P.dtype == np.float64 and P.shape == (16, 5)
    np.testing.assert_array_equal(P, ref)
    np.testing.assert_allclose(np.linalg.norm(P, axis=1), 1.0, rtol=1e-14)
    np.testing.assert_array_equal(P, _projections(5, 16, 3))
    assert not np.allclose(P, _projections(5, 16, 4))


def test_no_global_random_state_is_touched():
    np_state, torch_state = np.random.get_state(), torch.get_rng_state()  # noqa: NPY002 (the legacy global)
    X = np.random.default_rng(0).normal(size=(50, 3))
    sliced_w1_to_normal(X, 8)
    sliced_w1(X, X[:20] + 1, 8)
    max_sliced_w1(X, X + 1, 8)
    with pytest.warns(UserWarning, match="subsamples"):
        w1(X, X[:10], max_samples=20)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()  # noqa: NPY002
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]


def test_sliced_in_dimension_one_is_exact():
    x = np.random.default_rng(2).gamma(2.0, 1.0, 301)
    # the slices are +-1 and N(0,1) is symmetric: every slice is the exact W1
    np.testing.assert_allclose(sliced_w1_to_normal_slices(x[:, None], 10), w1_to_normal(x), rtol=1e-12)


def test_sliced_per_slice_against_scipy(big_gaussian):
    rng = np.random.default_rng(3)
    X = rng.standard_t(4, size=(400, 3)) @ rng.normal(size=(3, 3))
    P = _projections(3, 8, 0)
    slack = w1_to_normal(big_gaussian)
    per_slice = sliced_w1_to_normal_slices(X, projections=P)
    for j, theta in enumerate(P):
        assert abs(per_slice[j] - stats.wasserstein_distance(X @ theta, big_gaussian)) <= slack + 1e-9
    assert sliced_w1_to_normal(X, projections=P) == pytest.approx(per_slice.mean(), rel=1e-14)
    assert sliced_w1_to_normal(X, 8, 0) == sliced_w1_to_normal(X, projections=P)


@pytest.mark.parametrize("sigma", [0.1, 1.0, 3.0])
def test_sliced_scaled_gaussian_matches_closed_form(sigma):
    Z = np.random.default_rng(4).normal(size=(50_000, 4))
    P = _projections(4, 16, 1)
    got = sliced_w1_to_normal_slices(sigma * Z, projections=P)
    # each slice is N(0, sigma^2): W1 = |sigma - 1| sqrt(2/pi), up to sigma * W1(empirical Z theta, N(0,1))
    slack = sigma * sliced_w1_to_normal_slices(Z, projections=P)
    assert np.all(np.abs(got - abs(sigma - 1) * SQRT_2_OVER_PI) <= slack + 1e-12)
    assert slack.max() < 0.05


@given(st.integers(1, 40), st.integers(1, 5), st.integers(0, 1000))
@settings(max_examples=25, deadline=None)
def test_sliced_invariances(n, d, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.1, 3) + rng.normal(size=d)
    P = _projections(d, 12, seed)
    ref = sliced_w1_to_normal_slices(X, projections=P)
    np.testing.assert_allclose(sliced_w1_to_normal_slices(X[rng.permutation(n)], projections=P), ref, rtol=1e-12)
    np.testing.assert_allclose(sliced_w1_to_normal_slices(-X, projections=P), ref, rtol=1e-10, atol=1e-13)
    # rotating the data is rotating the slices: <x R, theta> = <x, R theta>
    R = np.linalg.qr(rng.normal(size=(d, d)))[0]
    np.testing.assert_allclose(
        sliced_w1_to_normal_slices(X @ R, projections=P), sliced_w1_to_normal_slices(X, projections=P @ R.T),
        rtol=1e-9, atol=1e-12,
    )  # fmt: skip


def test_sliced_to_normal_is_not_fooled_by_matching_moments():
    # Figure 1 of the paper: the same mean and variance per coordinate, different distributions
    rng = np.random.default_rng(5)
    n = 20_000
    gauss = rng.normal(size=(n, 2))
    bimodal = np.where(rng.random((n, 2)) < 0.5, -1.0, 1.0) * math.sqrt(0.9) + rng.normal(0, math.sqrt(0.1), (n, 2))
    skewed = rng.exponential(1.0, (n, 2)) - 1.0
    for X in (bimodal, skewed):
        np.testing.assert_allclose(X.std(axis=0), 1.0, atol=0.03)
        assert sliced_w1_to_normal(X, 64) > 4 * sliced_w1_to_normal(gauss, 64)


# --- sliced_w1 and max_sliced_w1 (POT) --------------------------------------------------------


def hand_sliced(X, Y, P):
    """Equal sizes: W1 per slice = mean |sorted(X theta) - sorted(Y theta)| (the 1-D formula by hand)."""
    return np.array([np.abs(np.sort(X @ t) - np.sort(Y @ t)).mean() for t in P])


@given(st.integers(1, 60), st.integers(1, 5), st.integers(0, 1000))
@settings(max_examples=25, deadline=None)
def test_sliced_w1_matches_the_definition(n, d, seed):
    rng = np.random.default_rng(seed)
    X, Y = rng.normal(size=(n, d)), rng.exponential(size=(n, d)) * 2
    P = _projections(d, 16, seed)
    ref = hand_sliced(X, Y, P)
    assert sliced_w1(X, Y, 16, seed) == pytest.approx(ref.mean(), rel=1e-10, abs=1e-14)
    assert sliced_w1(X, Y, projections=P) == pytest.approx(ref.mean(), rel=1e-10, abs=1e-14)
    assert max_sliced_w1(X, Y, 16, seed) == pytest.approx(ref.max(), rel=1e-10, abs=1e-14)
    assert sliced_w1(Y, X, 16, seed) == pytest.approx(sliced_w1(X, Y, 16, seed), rel=1e-12, abs=1e-14)
    assert sliced_w1(X, X, 16, seed) == 0.0


def test_sliced_w1_unequal_sizes_against_scipy():
    rng = np.random.default_rng(6)
    X, Y = rng.normal(size=(37, 3)), rng.laplace(size=(91, 3)) + 0.5
    P = _projections(3, 10, 2)
    ref = [stats.wasserstein_distance(X @ t, Y @ t) for t in P]
    assert sliced_w1(X, Y, projections=P) == pytest.approx(np.mean(ref), rel=1e-10)
    assert max_sliced_w1(X, Y, projections=P) == pytest.approx(np.max(ref), rel=1e-10)


def test_sliced_w1_against_a_gaussian_sample_approaches_the_exact_sliced_distance(big_gaussian):
    rng = np.random.default_rng(7)
    X = rng.exponential(size=(2000, 2))
    G = big_gaussian[:400_000].reshape(-1, 2)
    P = _projections(2, 32, 0)
    exact = sliced_w1_to_normal(X, projections=P)
    slack = sliced_w1_to_normal(G, projections=P)  # SW1(G, N(0, I)), exact
    assert abs(sliced_w1(X, G, projections=P) - exact) <= slack + 1e-12
    assert slack < 5e-3


# --- POT pitfalls, each pinned down ------------------------------------------------------------


def test_pot_pitfalls():
    rng = np.random.default_rng(8)
    X, Y = rng.normal(size=(50, 3)), rng.normal(size=(50, 3)) + 1
    P = _projections(3, 7, 0)
    w1s = hand_sliced(X, Y, P)
    # 1. sliced_wasserstein_distance defaults to p=2 and returns SW_p itself (not to the power p)
    w2sq = np.array([np.mean((np.sort(X @ t) - np.sort(Y @ t)) ** 2) for t in P])
    pot_default = ot.sliced_wasserstein_distance(X, Y, projections=P.T)
    assert pot_default == pytest.approx(math.sqrt(w2sq.mean()), rel=1e-10)
    assert pot_default > w1s.mean() * 1.01
    assert sliced_w1(X, Y, projections=P) == pytest.approx(w1s.mean(), rel=1e-10)
    # 2. its projections are (dim, n_projections): our (n_projections, dim) would not even fit
    with pytest.raises(ValueError):
        ot.sliced_wasserstein_distance(X, Y, projections=P, p=1)
    # 3. wasserstein_1d returns W_p^p
    x, y = X[:, 0], Y[:, 0]
    assert ot.wasserstein_1d(x, y, p=2) == pytest.approx(np.mean((np.sort(x) - np.sort(y)) ** 2), rel=1e-10)
    # 4. ot.dist defaults to the squared Euclidean distance, and its 'euclidean' cancels at large scale
    np.testing.assert_allclose(ot.dist(X, Y), cdist(X, Y) ** 2, rtol=1e-10)
    far = 1e4 + X
    naive = np.diag(ot.dist(far, far + 1e-6, metric="euclidean"))
    assert np.abs(naive - 1e-6 * math.sqrt(3)).max() > 1e-6  # wrong by more than the answer itself
    assert w1(far, far + 1e-6) == pytest.approx(1e-6 * math.sqrt(3), rel=1e-6)
    # 5. POT's own projections come from its backend's generator: with the same seed they are not
    #    our slices, and without a seed two calls differ
    ours = sliced_w1(X, Y, 7, seed=0)
    assert ot.sliced_wasserstein_distance(X, Y, n_projections=7, p=1, seed=0) != pytest.approx(ours, rel=1e-6)
    a = ot.sliced_wasserstein_distance(X, Y, n_projections=7, p=1)
    assert ot.sliced_wasserstein_distance(X, Y, n_projections=7, p=1) != a
    assert sliced_w1(X, Y, 7, seed=0) == ours


# --- exact w1 (POT emd2) ----------------------------------------------------------------------


@given(
    st.lists(st.floats(-100, 100), min_size=1, max_size=30),
    st.lists(st.floats(-100, 100), min_size=1, max_size=30),
)
@settings(max_examples=30, deadline=None)
def test_w1_in_one_dimension_matches_scipy(x, y):
    ref = stats.wasserstein_distance(x, y)
    assert w1(x, y) == pytest.approx(ref, rel=1e-9, abs=1e-10)
    # the network-simplex path on the same data embedded in the plane
    X, Y = np.c_[x, np.zeros(len(x))], np.c_[y, np.zeros(len(y))]
    assert w1(X, Y) == pytest.approx(ref, rel=1e-9, abs=1e-10)


@given(st.integers(1, 12), st.integers(2, 4), st.integers(0, 1000))
@settings(max_examples=25, deadline=None)
def test_w1_equal_sizes_matches_the_assignment_problem(n, d, seed):
    rng = np.random.default_rng(seed)
    X, Y = rng.normal(size=(n, d)), rng.standard_t(2, size=(n, d))
    C = cdist(X, Y)
    rows, cols = linear_sum_assignment(C)
    ref = C[rows, cols].mean()
    assert w1(X, Y) == pytest.approx(ref, rel=1e-10, abs=1e-12)
    assert w1(Y, X) == pytest.approx(ref, rel=1e-10, abs=1e-12)
    assert w1(X[rng.permutation(n)], Y) == pytest.approx(ref, rel=1e-10, abs=1e-12)
    # sliced distances lower-bound W1 (projections are 1-Lipschitz)
    assert max_sliced_w1(X, Y, 16, seed) <= ref + 1e-12


def test_w1_translation_is_the_shift_length():
    X = np.random.default_rng(9).normal(size=(40, 3))
    assert w1(X, X + np.array([3.0, 4.0, 0.0])) == pytest.approx(5.0, rel=1e-12)
    assert w1(X, X) == 0.0


def test_w1_subsamples_large_inputs_with_a_warning():
    rng = np.random.default_rng(10)
    X, Y = rng.normal(size=(300, 2)), rng.normal(size=(120, 2)) + 2.0
    with pytest.warns(UserWarning, match=r"between 300 and 120 rows .* at most 100 rows"):
        a = w1(X, Y, max_samples=100, seed=1)
    with pytest.warns(UserWarning):
        b = w1(X, Y, max_samples=100, seed=1)
    assert a == b  # reproducible from the seed
    assert a == pytest.approx(w1(X, Y), rel=0.25)
    assert W1_MAX_SAMPLES**2 == 25_000_000


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: sliced_w1_to_normal(np.ones(5)), ValueError, r"shape \(n_samples, dim\)"),
        (lambda: sliced_w1_to_normal(np.ones((0, 2))), ValueError, "at least one row"),
        (lambda: sliced_w1_to_normal([[0.0, np.nan]]), ValueError, "X must be finite"),
        (lambda: sliced_w1_to_normal(np.ones((3, 2)), 0), ValueError, "n_projections must be a positive"),
        (lambda: sliced_w1_to_normal(np.ones((3, 2)), 2.5), ValueError, "n_projections"),
        (lambda: sliced_w1_to_normal(np.ones((3, 2)), True), ValueError, "n_projections"),
        (lambda: sliced_w1_to_normal(np.ones((3, 2)), seed=-1), ValueError, "seed"),
        (lambda: sliced_w1_to_normal(np.ones((3, 2)), projections=[[1.0, 1.0]]), ValueError, "unit vectors"),
        (lambda: sliced_w1_to_normal(np.ones((3, 2)), projections=[[1.0, 0, 0]]), ValueError, r"\(n_proj"),
        (lambda: sliced_w1(np.ones((3, 2)), np.ones((3, 3))), ValueError, "same dimension"),
        (lambda: sliced_w1(np.ones((3, 2)), [[np.inf, 0.0]]), ValueError, "Y must be finite"),
        (lambda: max_sliced_w1(np.ones((3, 2)), np.ones((0, 2))), ValueError, "Y must have at least"),
        (lambda: w1(np.ones((3, 2)), np.ones(3)), ValueError, "same dimension"),
        (lambda: w1([0.0, np.nan], [1.0]), ValueError, "X must be finite"),
        (lambda: w1([0.0], [1.0], max_samples=0), ValueError, "max_samples"),
        (lambda: w1(np.ones((2, 2, 2)), np.ones((2, 2))), ValueError, "shape"),
    ],
)
def test_validation(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_overflow_is_an_error_not_an_inf():
    # huge but representable values are fine (exp(-z^2/2) underflows to 0 as it should)
    assert sliced_w1_to_normal([[1e300, 0.0]], projections=[[1.0, 0.0]]) == pytest.approx(1e300, rel=1e-12)
    with pytest.raises(ValueError, match="overflow"):
        sliced_w1_to_normal([[1.5e308, 1.5e308]], projections=[[math.sqrt(0.5), math.sqrt(0.5)]])


def test_chunking_over_slices_changes_nothing(monkeypatch):
    import analysis.distances as distances_module

    rng = np.random.default_rng(11)
    X, Y = rng.normal(size=(500, 3)), rng.exponential(size=(300, 3))
    ref = (sliced_w1_to_normal_slices(X, 50), sliced_w1(X, Y, 50), max_sliced_w1(X, Y, 50))
    monkeypatch.setattr(distances_module, "_CHUNK_ELEMENTS", 7 * 800)  # chunks of a few slices
    np.testing.assert_allclose(sliced_w1_to_normal_slices(X, 50), ref[0], rtol=1e-14)
    assert sliced_w1(X, Y, 50) == pytest.approx(ref[1], rel=1e-13)
    assert max_sliced_w1(X, Y, 50) == ref[2]


def test_sliced_accepts_tensors():
    X = torch.randn(30, 3, generator=torch.Generator().manual_seed(0))
    assert sliced_w1_to_normal(X, 8) == pytest.approx(sliced_w1_to_normal(X.numpy(), 8), rel=1e-12)
    assert sliced_w1(X, X + 1, 8) == pytest.approx(sliced_w1(X.numpy(), X.numpy() + 1, 8), rel=1e-6)


# --- gradient of the exact sliced distance ---------------------------------------------------


def test_sliced_w1_to_normal_grad_matches_finite_differences():
    from analysis.distances import sliced_w1_to_normal_grad

    rng = np.random.default_rng(3)
    X = rng.normal(size=(7, 3)) * 1.7 + 0.4
    P = _projections(3, 16, 5)
    g = sliced_w1_to_normal_grad(X, projections=P)
    eps = 1e-7
    for i, k in [(0, 0), (3, 1), (6, 2), (2, 0)]:
        Xp, Xm = X.copy(), X.copy()
        Xp[i, k] += eps
        Xm[i, k] -= eps
        fd = (sliced_w1_to_normal(Xp, projections=P) - sliced_w1_to_normal(Xm, projections=P)) / (2 * eps)
        assert g[i, k] == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_exact_gradient_is_radially_neutral_at_the_gaussian_and_expands_shrunk_data_unlike_per():
    """The point-mass trap at the gradient level: PER's descent always pulls towards 0, the true one does not."""
    from analysis.distances import sliced_w1_to_normal_grad
    from per_core.per import per_grad

    X = np.random.default_rng(4).normal(size=(4000, 2))
    P = _projections(2, 64, 0)
    radial = X / np.linalg.norm(X, axis=1, keepdims=True)

    def outward(g):  # mean component of the gradient along x / |x|, per sample (x n)
        return float((g * radial).sum(1).mean() * len(X))

    def per(Y):
        return per_grad(torch.from_numpy(Y), theta=torch.from_numpy(P)).numpy()

    exact_at_gauss = outward(sliced_w1_to_normal_grad(X, projections=P))
    assert abs(exact_at_gauss) < 0.1 * outward(per(X))
    shrunk = 0.3 * X
    assert outward(sliced_w1_to_normal_grad(shrunk, projections=P)) < -0.3  # descent moves samples outwards
    assert outward(per(shrunk)) > 0.05  # PER's descent still pulls them in


# --- reliability: seeds, extreme magnitudes, NaN/Inf and half precision ------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda s: sliced_w1_to_normal(np.ones((3, 2)), seed=s),
        lambda s: sliced_w1(np.ones((3, 2)), np.zeros((3, 2)), seed=s),
        lambda s: max_sliced_w1(np.ones((3, 2)), np.zeros((3, 2)), seed=s),
        lambda s: w1(np.ones((3, 2)), np.zeros((3, 2)), seed=s),
    ],
)
@pytest.mark.parametrize("seed", [2**64, 2**70, -1, 1.5, "0"])
def test_out_of_range_seeds_name_the_argument(call, seed):
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*64\)"):
        call(seed)


def test_three_rows_near_the_float64_maximum_do_not_overflow():
    # the true values (~1e307) fit in float64: means are taken without summing to inf, and the
    # homogeneous distances are computed on inputs scaled by a power of two
    X = np.full((3, 2), 1e307) * [1, -1]
    P = _projections(2, 256, 0)
    a = np.abs(P @ [1.0, -1.0])  # |<x, theta_j>| / 1e307
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "overflow encountered in reduce"
        # a point mass at a_j = 1e307 <x, theta_j>: W1 = E|Z - a_j| = |a_j| (the exp term underflows to 0)
        assert sliced_w1_to_normal(X) == pytest.approx(1e307 * a.mean(), rel=1e-12)
        assert sliced_w1(X, -X) == pytest.approx(2e307 * a.mean(), rel=1e-12)
        assert max_sliced_w1(X, -X) == pytest.approx(2e307 * a.max(), rel=1e-12)
        assert w1(X, -X) == pytest.approx(2e307 * math.sqrt(2), rel=1e-12)
        assert w1(X[:, :1], -X[:, :1]) == pytest.approx(2e307, rel=1e-12)
        assert w1([[1e-200, 0.0]], [[0.0, 1e-200]]) == pytest.approx(1e-200 * math.sqrt(2), rel=1e-12)  # no underflow
    with pytest.raises(ValueError, match="overflow"):  # a result beyond the float64 maximum is still an error
        w1(np.full((3, 2), 1e308), np.full((3, 2), -1e308))


@st.composite
def with_one_bad_value(draw, ndim=2):
    """A finite array of random shape with one NaN, +inf or -inf at a random place."""
    shape = (draw(st.integers(1, 12)),) if ndim == 1 else (draw(st.integers(1, 12)), draw(st.integers(1, 4)))
    x = np.random.default_rng(draw(st.integers(0, 2**16))).normal(size=shape) * 10.0 ** draw(st.integers(-300, 300))
    x[tuple(draw(st.integers(0, k - 1)) for k in shape)] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return x


@given(with_one_bad_value(), st.booleans(), st.booleans())
@settings(max_examples=60, deadline=None)
def test_nan_and_inf_anywhere_are_rejected_naming_the_argument(X, as_tensor, bad_is_y):
    good = np.zeros((3, X.shape[1]))
    if as_tensor:
        X = torch.from_numpy(X)
    for fn in (sliced_w1_to_normal, sliced_w1_to_normal_slices, sliced_w1_to_normal_grad):
        with pytest.raises(ValueError, match="X must be finite"):
            fn(X, 8)
    name, (A, B) = ("Y", (good, X)) if bad_is_y else ("X", (X, good))
    for fn in (sliced_w1, max_sliced_w1):
        with pytest.raises(ValueError, match=f"{name} must be finite"):
            fn(A, B, 8)
    with pytest.raises(ValueError, match=f"{name} must be finite"):
        w1(A, B)
    with pytest.raises(ValueError, match="projections must be finite"):
        sliced_w1_to_normal(good, projections=np.full((1, good.shape[1]), np.nan))


@given(with_one_bad_value(ndim=1))
@settings(max_examples=30, deadline=None)
def test_nan_and_inf_in_one_dimensional_samples_are_rejected(x):
    with pytest.raises(ValueError, match="x must be finite"):
        w1_to_normal(x)
    with pytest.raises(ValueError, match="weights must be finite"):
        w1_to_normal(np.zeros_like(x), weights=x)


@given(
    n=st.integers(1, 30),
    d=st.integers(1, 4),
    log_scale=st.floats(-300, 300),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=60, deadline=None)
def test_any_magnitude_up_to_1e300_gives_finite_results_within_their_bounds(n, d, log_scale, seed):
    rng = np.random.default_rng(seed)
    scale = 10.0**log_scale
    X0, Y0 = rng.normal(size=(n, d)), rng.standard_t(3, size=(n + 1, d))
    X, Y = X0 * scale, Y0 * scale
    P = _projections(d, 8, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sw = sliced_w1_to_normal(X, projections=P)
        # W1 to N(0,1) differs from W1 to the point mass at 0 (the mean |projection|) by at most E|Z|
        assert abs(sw - scale * np.abs(X0 @ P.T).mean()) <= SQRT_2_OVER_PI * (1 + 1e-9) + 1e-12 * scale
        # the distances between samples are homogeneous: W(cX, cY) = c W(X, Y)
        assert sliced_w1(X, Y, projections=P) == pytest.approx(scale * sliced_w1(X0, Y0, projections=P), rel=1e-9)
        assert max_sliced_w1(X, Y, projections=P) == pytest.approx(
            scale * max_sliced_w1(X0, Y0, projections=P), rel=1e-9
        )
        assert w1(X, Y) == pytest.approx(scale * w1(X0, Y0), rel=1e-9)
        g = sliced_w1_to_normal_grad(X, projections=P)
        assert np.isfinite(g).all() and np.abs(g).max() <= 1 / n + 1e-12


def _rounding_distance(a16, a32):
    """max_i |x_i - x'_i|: every W1 here moves by at most this when each row moves (1-Lipschitz)."""
    return float((a16.double() - a32.double()).norm(dim=1).max())


@given(
    n=st.integers(1, 40),
    d=st.integers(1, 4),
    log_scale=st.floats(-6, 4),  # within float16's range (max 65504)
    dtype=st.sampled_from([torch.float16, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=60, deadline=None)
def test_half_precision_tensors_are_handled_and_close_to_the_float32_result(n, d, log_scale, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    X32 = torch.randn(n, d, generator=g) * 10.0**log_scale + torch.randn(d, generator=g)
    Y32 = torch.randn(n + 2, d, generator=g) * 2.0
    X16, Y16 = X32.to(dtype), Y32.to(dtype)
    dx, dy = _rounding_distance(X16, X32), _rounding_distance(Y16, Y32)
    unit = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11  # relative rounding; float16 subnormals: 2^-25
    assert dx <= unit * float(X32.double().norm(dim=1).max()) + 2.0**-24 * math.sqrt(d)
    tol = 1e-9
    assert abs(sliced_w1_to_normal(X16, 16) - sliced_w1_to_normal(X32, 16)) <= dx + tol
    assert abs(sliced_w1(X16, Y16, 16) - sliced_w1(X32, Y32, 16)) <= dx + dy + tol
    assert abs(max_sliced_w1(X16, Y16, 16) - max_sliced_w1(X32, Y32, 16)) <= dx + dy + tol
    assert abs(w1(X16, Y16) - w1(X32, Y32)) <= dx + dy + tol
    assert abs(w1_to_normal(X16[:, 0]) - w1_to_normal(X32[:, 0])) <= dx + tol


def test_half_precision_overflow_is_reported_as_non_finite_input():
    X = torch.tensor([[7e4, 0.0]]).to(torch.float16)  # beyond float16's max: inf
    with pytest.raises(ValueError, match=r"X must be finite, got 0 NaN and 1 infinite"):
        sliced_w1_to_normal(X)


def test_the_stated_finite_sample_floor_matches_quadrature_and_monte_carlo():
    # what the figures and bounds.csv's docs call the score of an m-point Gaussian sample
    c = math.sqrt(2 / math.pi) * integrate.quad(lambda x: math.sqrt(stats.norm.cdf(x) * stats.norm.sf(x)), -40, 40)[0]
    assert GAUSSIAN_SAMPLE_W1 == pytest.approx(c, rel=1e-9)
    rng = np.random.default_rng(0)
    for m, reps in ((64, 3000), (256, 2000)):
        mean = np.mean([w1_to_normal(rng.normal(size=m)) for _ in range(reps)])  # standard error < 1 %
        assert mean * math.sqrt(m) == pytest.approx(GAUSSIAN_SAMPLE_W1, rel=0.04)
    X = rng.normal(size=(256, 8))
    assert sliced_w1_to_normal(X, 256, seed=0) == pytest.approx(GAUSSIAN_SAMPLE_W1 / 16, rel=0.15)  # per slice too


def test_hist_underflow_and_overflow_accept_any_scalar_and_reject_the_rest():
    counts, edges = [1, 1, 2], [0.0, 1.0, 2.0, 3.0]
    ref = w1_to_normal_hist(counts, edges, underflow=1.0, data_min=-1.0)
    for under in (1, np.int64(1), np.float32(1.0), torch.tensor(1.0), torch.tensor(1), np.array(1.0)):
        assert w1_to_normal_hist(counts, edges, underflow=under, data_min=-1.0) == ref
    for bad in (-1.0, math.nan, math.inf, "1", [1.0], torch.tensor([1.0]), True, None):
        with pytest.raises(ValueError, match="underflow must be a finite non-negative number"):
            w1_to_normal_hist(counts, edges, underflow=bad, data_min=-1.0)
