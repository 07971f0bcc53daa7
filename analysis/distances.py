r"""Wasserstein-1 distances: exact 1-D distances to :math:`\mathcal{N}(0,1)`, sliced and exact OT.

Everything here uses :math:`p = 1` and returns Python floats (per-slice functions return arrays).

- :func:`w1_to_normal` and :func:`w1_to_normal_hist`: the *exact* :math:`W_1` between a 1-D
  empirical distribution (or a histogram, with a stated error bound) and :math:`\mathcal{N}(0,1)`,
  by the closed form of the quantile integral; the Gaussian is never sampled.
- :func:`sliced_w1_to_normal`: :math:`SW_1` between the rows of ``X`` and :math:`\mathcal{N}(0, I_d)`,
  exact on every slice (a unit direction projects :math:`\mathcal{N}(0, I_d)` to :math:`\mathcal{N}(0,1)`);
  only the expectation over directions is a Monte-Carlo average.
- :func:`sliced_w1`, :func:`max_sliced_w1`, :func:`w1`: between two samples, through POT [4]_.

Slices come from :func:`per_core.per.sample_slices` with a ``torch.Generator`` seeded by ``seed``
(see :func:`_projections`), so ``sliced_w1_to_normal(X, s, seed)`` and
``analysis.bounds.per_bound(X, s, seed)`` use exactly the same directions.

POT conventions this module relies on (checked against its source, POT 0.9.x, and tested):
``ot.sliced_wasserstein_distance`` takes ``projections`` of shape ``(dim, n_projections)`` and
returns :math:`SW_p` itself (default ``p=2``); ``ot.lp.wasserstein_1d`` returns :math:`W_p^p`;
``ot.dist`` defaults to the *squared* Euclidean cost and computes ``'euclidean'`` through the Gram
matrix (cancellation of order :math:`\sqrt{\varepsilon}\,\lVert x \rVert`), so :func:`w1` builds its
cost with :func:`scipy.spatial.distance.cdist`; POT's own random projections come from its
backend's generator (a numpy ``RandomState`` for numpy input), not from a torch seed, so this
module always passes its projections in. ``ot`` is imported lazily
(it adds about half a second to ``import analysis``).

Extreme magnitudes: means are taken without overflow (rows near the float64 maximum give their
true distance, not ``inf``, as long as their projections are finite: a projection beyond the float64
maximum raises ValueError even where the mean would be finite), and :func:`sliced_w1`,
:func:`max_sliced_w1` and :func:`w1`, which are positively homogeneous, work on inputs divided by
a power of two (exact) when the largest :math:`|x|` is above :math:`2^{300}` or below
:math:`2^{-300}`. A result beyond the float64 maximum raises ValueError.

References
----------
.. [1] Joo, T., Kang, D., Kim, B. "Regularizing activations in neural networks via
   distribution matching with the Wasserstein metric", ICLR 2020, arXiv:2002.05366.
.. [2] Bonneel, N., Rabin, J., Peyré, G., Pfister, H. "Sliced and Radon Wasserstein
   barycenters of measures", J. Math. Imaging Vis. 51 (2015).
.. [3] Rabin, J., Peyré, G., Delon, J., Bernot, M. "Wasserstein barycenter and its application
   to texture mixing", SSVM 2011.
.. [4] Flamary, R. et al. "POT: Python Optimal Transport", JMLR 22 (2021).
.. [5] del Barrio, E., Giné, E., Matrán, C. "Central limit theorems for the Wasserstein distance
   between the empirical and the true distributions", Ann. Probab. 27 (1999).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from scipy import special

from per_core.checks import check_positive_int, check_seed
from per_core.per import sample_slices

__all__ = [
    "GAUSSIAN_SAMPLE_W1",
    "W1_MAX_SAMPLES",
    "max_sliced_w1",
    "sliced_w1",
    "sliced_w1_to_normal",
    "sliced_w1_to_normal_grad",
    "sliced_w1_to_normal_slices",
    "w1",
    "w1_to_normal",
    "w1_to_normal_hist",
]

#: Default cap on the rows of each sample given to exact OT in :func:`w1` (n * m <= 2.5e7:
#: a 5000 x 5000 cost matrix is 200 MB and the network simplex takes several seconds).
W1_MAX_SAMPLES = 5000

#: The finite-sample floor of :math:`W_1` to :math:`\mathcal{N}(0,1)`: m draws from N(0, 1) itself score
#: :math:`\mathbb{E}\, W_1(F_m, \Phi) \approx c / \sqrt{m}` with
#: :math:`c = \sqrt{2/\pi} \int \sqrt{\Phi(x)(1 - \Phi(x))}\, dx = 1.28838` (the mean of the limit
#: :math:`\int |B(\Phi(x))|\, dx` of :math:`\sqrt{m}\, W_1`, B a Brownian bridge [5]_; within 2 % of the
#: truth for m >= 64). The same holds per slice of :func:`sliced_w1_to_normal` on a Gaussian sample.
GAUSSIAN_SAMPLE_W1 = 1.2883791903

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
#: Elements of one (rows x slices) block of projections: bounds the memory of the sliced functions.
_CHUNK_ELEMENTS = 1 << 22
#: Slices must have unit norm to this tolerance (the projection of N(0, I) is N(0, |theta|^2)).
_UNIT_NORM_TOL = 1e-6


# --- input validation -------------------------------------------------------------------------


def _as_float_array(x: Any, name: str) -> np.ndarray:
    """``x`` (ndarray, torch tensor, list, scalar) as a float64 ndarray; real numbers only."""
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise TypeError(f"{name} must hold real numbers, got a complex tensor ({x.dtype})")
        return x.detach().cpu().to(torch.float64).numpy()
    try:
        arr = np.asarray(x)
        if arr.dtype.kind == "O":
            arr = arr.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an array of real numbers, got {type(x).__name__} ({err})") from err
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers, got an array of dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def _count(value: Any, name: str) -> float:
    """A single finite non-negative number (Python, numpy or 0-d torch) as a float."""
    try:
        arr = _as_float_array(value, name)
    except TypeError:
        arr = None
    if arr is None or arr.ndim != 0 or not (math.isfinite(float(arr)) and float(arr) >= 0):
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
    return float(arr)


def _check_finite(arr: np.ndarray, name: str) -> None:
    if not np.isfinite(arr).all():
        n_nan, n_inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
        raise ValueError(
            f"{name} must be finite, got {n_nan} NaN and {n_inf} infinite value(s) among {arr.size}; "
            "filter or count them before computing distances"
        )


def _sample_1d(x: Any, name: str) -> np.ndarray:
    arr = _as_float_array(x, name)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sample, shape (n_samples,), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty")
    _check_finite(arr, name)
    return arr


def _samples_2d(X: Any, name: str, allow_1d: bool = False) -> np.ndarray:
    arr = _as_float_array(X, name)
    if arr.ndim == 1 and allow_1d:
        arr = arr[:, None]
    if arr.ndim != 2:
        hint = "" if allow_1d else "; use x.reshape(-1, 1) for a 1-D sample"
        raise ValueError(f"{name} must have shape (n_samples, dim) (rows are samples), got {arr.shape}{hint}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one column, got shape {arr.shape}")
    _check_finite(arr, name)
    return arr


def _check_same_dim(X: np.ndarray, Y: np.ndarray) -> None:
    if X.shape[1] != Y.shape[1]:
        raise ValueError(f"X and Y must have the same dimension, got X {X.shape} and Y {Y.shape}")


def _finite_result(value: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(value).all():
        raise ValueError(f"{what} overflowed (the values are too large for float64); rescale the input")
    return value


def _mean(values: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Mean that does not overflow: values near the float64 maximum sum to inf, their (v / n) do not.

    The plain mean (bit-identical to ``values.mean(axis)``) whenever its sum is finite.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        out = values.mean(axis=axis)
    if np.isfinite(out).all() or not np.isfinite(values).all():
        return out
    return (values / (values.size if axis is None else values.shape[axis])).sum(axis=axis)


#: Inputs of the homogeneous distances (W1(cX, cY) = c W1(X, Y)) are brought to a magnitude of about 1
#: by a power of two when their largest |value| is outside this range (squares in cdist, sums of n
#: terms in POT would over- or underflow); powers of two scale exactly.
_SAFE_MAGNITUDE = (2.0**-300, 2.0**300)


def _common_scale(*arrays: np.ndarray) -> float:
    """A power of two c with max|arrays| / c in [1, 2), or 1.0 when the magnitudes are safe as they are."""
    top = max(float(np.abs(a).max()) for a in arrays)
    if top == 0.0 or _SAFE_MAGNITUDE[0] <= top <= _SAFE_MAGNITUDE[1]:
        return 1.0
    return math.ldexp(1.0, math.frexp(top)[1] - 1)


# --- slices -----------------------------------------------------------------------------------


def _projections(d: int, n_projections: int, seed: int) -> np.ndarray:
    """The slices used by every sliced function here and in :mod:`analysis.bounds`, shape (s, d).

    Drawn by :func:`per_core.per.sample_slices` in float64 with ``torch.Generator().manual_seed(seed)``:
    the same ``(d, n_projections, seed)`` always gives the same unit directions.
    """
    n_projections = check_positive_int(n_projections, "n_projections")
    d = check_positive_int(d, "d")
    gen = torch.Generator().manual_seed(check_seed(seed))
    return sample_slices(n_projections, d, generator=gen, dtype=torch.float64).numpy()


def _resolve_projections(d: int, n_projections: int, seed: int, projections: Any) -> np.ndarray:
    """Validated slices of shape (s, d): ``projections`` if given, else :func:`_projections`."""
    if projections is None:
        return _projections(d, n_projections, seed)
    P = _as_float_array(projections, "projections")
    if P.ndim != 2 or P.shape[1] != d or P.shape[0] == 0:
        raise ValueError(f"projections must have shape (n_projections, {d}), got {P.shape}")
    _check_finite(P, "projections")
    norms = np.linalg.norm(P, axis=1)
    if np.abs(norms - 1.0).max() > _UNIT_NORM_TOL:
        raise ValueError(
            f"projections must be unit vectors (rows of norm 1), got norms in [{norms.min():.6g}, {norms.max():.6g}]"
        )
    return P


def _slice_chunks(n_rows: int, n_slices: int):
    step = max(1, _CHUNK_ELEMENTS // max(n_rows, 1))
    for j in range(0, n_slices, step):
        yield slice(j, min(j + step, n_slices))


# --- exact 1-D W1 to N(0, 1) ------------------------------------------------------------------


def _normal_quantile(u: np.ndarray, u_c: np.ndarray) -> np.ndarray:
    r""":math:`\Phi^{-1}(u)` from ``u`` and its complement ``u_c = 1 - u`` (each accurate on its side)."""
    return np.where(u <= 0.5, special.ndtri(np.minimum(u, 0.5)), -special.ndtri(np.minimum(u_c, 0.5)))


def _pdf(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # z * z = inf for |z| > 1e154: exp(-inf) = 0 is the right answer
        return _INV_SQRT_2PI * np.exp(-0.5 * z * z)


def _w1_sorted_to_normal(
    xs: np.ndarray, lo: np.ndarray, lo_c: np.ndarray, hi: np.ndarray, hi_c: np.ndarray
) -> np.ndarray:
    r"""Exact :math:`W_1` to :math:`\mathcal{N}(0,1)` of each column of ``xs`` (sorted along axis 0).

    Row i of ``xs`` is the value of the quantile function on the step :math:`[a_i, b_i]`;
    ``lo, lo_c, hi, hi_c`` = :math:`a_i, 1 - a_i, b_i, 1 - b_i`, all shape (n, 1) (complements are
    passed separately so that both tails keep their relative precision).
    With :math:`q_a = \Phi^{-1}(a)`, :math:`t = \mathrm{clip}(x, q_a, q_b)` and :math:`G = \varphi \circ \Phi^{-1}`:

    .. math::
        \int_a^b |x - \Phi^{-1}(u)|\, du = x\,\big[(\Phi(t) - a) - (b - \Phi(t))\big]
        + 2\varphi(t) - G(a) - G(b)
    """
    q_lo = _normal_quantile(lo, lo_c)  # (n, 1), -inf for the first step
    q_hi = _normal_quantile(hi, hi_c)  # (n, 1), +inf for the last step
    g_lo, g_hi = _pdf(q_lo), _pdf(q_hi)
    t = np.clip(xs, q_lo, q_hi)  # (n, k): where the step crosses the Gaussian quantile
    # Phi(t) - a and b - Phi(t): from the left on the lower half, from the right on the upper half
    lower = (lo + hi) <= 1.0
    cdf, sf = special.ndtr(t), special.ndtr(-t)
    below = np.where(lower, cdf - lo, lo_c - sf)
    above = np.where(lower, hi - cdf, sf - hi_c)
    below = np.where(xs <= q_lo, 0.0, np.maximum(below, 0.0))
    above = np.where(xs >= q_hi, 0.0, np.maximum(above, 0.0))
    steps = xs * (below - above) + 2.0 * _pdf(t) - g_lo - g_hi
    return np.maximum(steps.sum(axis=0), 0.0)


def _equal_steps(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    i = np.arange(n, dtype=np.float64)[:, None]
    return i / n, (n - i) / n, (i + 1) / n, (n - 1 - i) / n  # a_i, 1 - a_i, b_i, 1 - b_i


def w1_to_normal(x: Any, weights: Any = None) -> float:
    r"""Exact :math:`W_1` between the empirical distribution of a 1-D sample and :math:`\mathcal{N}(0,1)`.

    With the sorted sample :math:`x_{(1)} \le \dots \le x_{(n)}` and cumulative weights
    :math:`c_i` (:math:`c_i = i/n` for equal weights), the 1-D quantile formula [3]_ gives

    .. math::
        W_1(\nu_n, \mathcal{N}(0,1)) = \int_0^1 |F_n^{-1}(u) - \Phi^{-1}(u)|\, du
        = \sum_{i=1}^n \int_{c_{i-1}}^{c_i} |x_{(i)} - \Phi^{-1}(u)|\, du,

    each step split at :math:`u^* = \Phi(x_{(i)})` when it falls inside it and integrated with
    :math:`\int_a^b \Phi^{-1}(u)\, du = \varphi(\Phi^{-1}(a)) - \varphi(\Phi^{-1}(b))`. No sampling of
    the Gaussian; :math:`O(n \log n)` (the sort), vectorized. Upper-tail steps use complements
    :math:`1 - c_i`, so tail steps keep their relative precision; the absolute rounding error is
    about :math:`n \varepsilon` (1e-10 for :math:`n = 10^6`).

    Parameters
    ----------
    x : array_like, shape (n_samples,)
        Finite values (ndarray, torch tensor or list).
    weights : array_like, shape (n_samples,), optional
        Non-negative finite weights (normalized here; zero weights are allowed). Equal if None.

    Returns
    -------
    w1 : float

    Example
    -------
    >>> round(w1_to_normal([0.0]), 6)  # a point mass at 0: E|Z| = sqrt(2/pi)
    0.797885
    >>> round(w1_to_normal([-1.0, 1.0], weights=[3, 1]), 6) == round(w1_to_normal([-1, -1, -1, 1]), 6)
    True

    References
    ----------
    .. [3] Rabin, J., Peyré, G., Delon, J., Bernot, M. "Wasserstein barycenter and its application
       to texture mixing", SSVM 2011 (1-D optimal transport by sorting / quantile functions).
    """
    x = _sample_1d(x, "x")
    if weights is None:
        xs = np.sort(x)[:, None]
        steps = _equal_steps(x.size)
    else:
        w = _sample_1d(weights, "weights")
        if w.shape != x.shape:
            raise ValueError(f"weights must have the shape of x {x.shape}, got {w.shape}")
        if (w < 0).any() or not (w > 0).any():
            raise ValueError("weights must be non-negative with a positive sum")
        keep = w > 0
        x, w = x[keep], w[keep] / w.max()  # scaled to max 1 first: the sum of huge finite weights stays finite
        order = np.argsort(x, kind="stable")
        xs, w = x[order][:, None], (w[order] / w.sum())[:, None]
        cum = np.cumsum(w[:, 0])
        cum_c = np.cumsum(w[::-1, 0])[::-1]  # sum_{j >= i} w_j, accurate in the upper tail
        cum[-1] = cum_c[0] = 1.0  # exact ends: the first step starts at 0, the last ends at 1
        steps = (
            np.concatenate([[0.0], cum[:-1]])[:, None],  # a_i
            cum_c[:, None],  # 1 - a_i
            cum[:, None],  # b_i
            np.concatenate([cum_c[1:], [0.0]])[:, None],  # 1 - b_i
        )
    return float(_finite_result(_w1_sorted_to_normal(xs, *steps), "w1_to_normal")[0])


def w1_to_normal_hist(
    counts: Any,
    edges: Any,
    *,
    underflow: float = 0.0,
    overflow: float = 0.0,
    data_min: float | None = None,
    data_max: float | None = None,
) -> tuple[float, float]:
    r""":math:`W_1` to :math:`\mathcal{N}(0,1)` of a histogrammed sample, with a rigorous error bound.

    Each bin's mass is placed at the midpoint :math:`m_k` of the bin (clipped to
    ``[data_min, data_max]`` when those are given) and the exact :func:`w1_to_normal` of that
    weighted sample is returned with the bound on the binning error. Every sample of bin k lies
    within the half-width :math:`r_k` of :math:`m_k`, so moving it there is a coupling, and the
    triangle inequality gives, with :math:`p_k` the fraction of samples in bin k,

    .. math::
        |W_1(\nu, \mathcal{N}(0,1)) - W_1(\nu_{mid}, \mathcal{N}(0,1))|
        \le W_1(\nu, \nu_{mid}) \le \sum_k p_k\, r_k \le \tfrac{1}{2} \max_k w_k.

    Under/overflow (samples below ``edges[0]`` / above ``edges[-1]``) are located only when
    ``data_min`` / ``data_max`` is given: they then form one more bin ``[data_min, min(edges[0], data_max)]``
    (resp. ``[max(edges[-1], data_min), data_max]``: a unit whose values all lie beyond the range is then
    located by its min and max). Without it their values are unknown: they are placed at the edge and
    the bound is ``inf`` (the value is then only indicative).

    Parameters
    ----------
    counts : array_like, shape (n_bins,)
        Non-negative finite counts (or weights) per bin.
    edges : array_like, shape (n_bins + 1,)
        Strictly increasing finite bin edges.
    underflow, overflow : float
        Counts below ``edges[0]`` and above ``edges[-1]``.
    data_min, data_max : float, optional
        The smallest and largest sample (e.g. recorded with the histogram); they tighten the bins.

    Returns
    -------
    value : float
        Exact :math:`W_1` of the midpoint distribution.
    error_bound : float
        :math:`\sum_k p_k r_k` (``inf`` with unlocated under/overflow).

    Example
    -------
    >>> x = np.random.default_rng(0).normal(0.5, 1.0, 10_000)
    >>> counts, edges = np.histogram(x, bins=200)
    >>> value, bound = w1_to_normal_hist(counts, edges)
    >>> bool(abs(value - w1_to_normal(x)) <= bound), bound < 0.02
    (True, True)
    """
    c = _sample_1d(counts, "counts")
    e = _sample_1d(edges, "edges")
    if e.size != c.size + 1:
        raise ValueError(f"edges must have n_bins + 1 = {c.size + 1} entries, got {e.size}")
    if not (np.diff(e) > 0).all():
        raise ValueError("edges must be strictly increasing")
    underflow, overflow = (_count(v, name) for v, name in ((underflow, "underflow"), (overflow, "overflow")))
    if (c < 0).any():
        raise ValueError("counts must be non-negative")
    total = c.sum() + underflow + overflow
    if total <= 0:
        raise ValueError("the histogram is empty (counts, underflow and overflow sum to 0)")
    lo_d = -math.inf if data_min is None else float(data_min)
    hi_d = math.inf if data_max is None else float(data_max)
    for name, v in (("data_min", data_min), ("data_max", data_max)):
        if v is not None and not math.isfinite(float(v)):
            raise ValueError(f"{name} must be finite, got {v!r}")
    if lo_d > hi_d:
        raise ValueError(f"data_min {lo_d} is larger than data_max {hi_d}")
    full = c > 0
    if ((e[1:][full] < lo_d) | (e[:-1][full] > hi_d)).any():
        raise ValueError("a non-empty bin lies outside [data_min, data_max]; the histogram is inconsistent")
    if underflow > 0 and lo_d > e[0]:
        raise ValueError(f"underflow > 0 but data_min {lo_d} is not below edges[0] {e[0]}")
    if overflow > 0 and hi_d < e[-1]:
        raise ValueError(f"overflow > 0 but data_max {hi_d} is not above edges[-1] {e[-1]}")

    left = np.clip(e[:-1], lo_d, hi_d)
    right = np.clip(e[1:], lo_d, hi_d)
    mids, radii, mass = [(left + right) / 2], [(right - left) / 2], [c]
    bound_inf = False
    # the out-of-range bins end where the data do: all values above the range lie in [max(e_n, data_min), data_max]
    for n_out, inner, outer in ((underflow, min(e[0], hi_d), lo_d), (overflow, max(e[-1], lo_d), hi_d)):
        if n_out > 0:
            if math.isfinite(outer):
                mids.append(np.array([(inner + outer) / 2]))
                radii.append(np.array([abs(inner - outer) / 2]))
            else:
                mids.append(np.array([inner]))
                radii.append(np.array([0.0]))
                bound_inf = True
            mass.append(np.array([float(n_out)]))
    m, r, p = np.concatenate(mids), np.concatenate(radii), np.concatenate(mass) / total
    value = w1_to_normal(m, weights=p)
    bound = math.inf if bound_inf else float(np.dot(p, r))
    return value, bound


# --- sliced W1 to N(0, I) ---------------------------------------------------------------------


def sliced_w1_to_normal_slices(
    X: Any, n_projections: int = 256, seed: int = 0, *, projections: Any = None
) -> np.ndarray:
    r"""Per-slice exact :math:`W_1(\nu_\theta, \mathcal{N}(0,1))` for the rows of ``X``.

    .. math::
        w_j = W_1\big(\tfrac{1}{n} \textstyle\sum_i \delta_{\langle x_i, \theta_j \rangle},\ \mathcal{N}(0,1)\big),
        \qquad j = 1..s

    computed by the closed form of :func:`w1_to_normal` on every slice.

    Parameters
    ----------
    X : array_like, shape (n_samples, dim)
    n_projections : int
        Number of slices s (ignored when ``projections`` is given).
    seed : int
        Seed of the slices (see :func:`_projections`).
    projections : array_like, shape (n_projections, dim), optional
        Unit directions to use instead.

    Returns
    -------
    w : ndarray, shape (n_projections,)

    Example
    -------
    >>> sliced_w1_to_normal_slices(np.zeros((3, 2)), n_projections=4).round(6)  # E|Z| on every slice
    array([0.797885, 0.797885, 0.797885, 0.797885])
    """
    X = _samples_2d(X, "X")
    P = _resolve_projections(X.shape[1], n_projections, seed, projections)
    n = X.shape[0]
    steps = _equal_steps(n)
    out = np.empty(P.shape[0])
    for cols in _slice_chunks(n, P.shape[0]):
        with np.errstate(over="ignore", invalid="ignore"):  # reported just below as a ValueError
            proj = np.sort(X @ P[cols].T, axis=0)  # (n, d) @ (d, c) -> (n, c), sorted per slice
        _finite_result(proj, "the projections of X")
        out[cols] = _w1_sorted_to_normal(proj, *steps)
    return _finite_result(out, "sliced_w1_to_normal")


def sliced_w1_to_normal(X: Any, n_projections: int = 256, seed: int = 0, *, projections: Any = None) -> float:
    r"""Sliced :math:`W_1` between the rows of ``X`` and :math:`\mathcal{N}(0, I_d)`, exact per slice.

    .. math::
        SW_1(\nu, \mathcal{N}(0, I_d)) = \mathbb{E}_{\theta \sim U(S^{d-1})}
        W_1(\nu_\theta, \mathcal{N}(0,1)) \approx \frac{1}{s} \sum_{j=1}^{s} W_1(\nu_{\theta_j}, \mathcal{N}(0,1))

    (paper [1]_, sliced Wasserstein [2]_); a unit direction projects :math:`\mathcal{N}(0, I_d)` to
    :math:`\mathcal{N}(0, 1)`, so each term is exact (:func:`w1_to_normal`) and only the average
    over directions is Monte Carlo. The slices are those of
    ``analysis.bounds.per_bound(X, n_projections, seed)``.

    Parameters
    ----------
    X : array_like, shape (n_samples, dim)
    n_projections : int
        Number of slices s (ignored when ``projections`` is given).
    seed : int
        Seed of the slices.
    projections : array_like, shape (n_projections, dim), optional
        Unit directions to use instead.

    Returns
    -------
    sw1 : float

    Example
    -------
    >>> X = np.random.default_rng(0).normal(size=(20_000, 3))
    >>> sliced_w1_to_normal(X, n_projections=64) < 0.02
    True
    >>> round(sliced_w1_to_normal(np.zeros((5, 3))), 6)  # a point mass at 0
    0.797885

    References
    ----------
    .. [1] Joo, Kang, Kim, "Regularizing activations in neural networks via distribution matching
       with the Wasserstein metric", ICLR 2020, arXiv:2002.05366.
    .. [2] Bonneel, Rabin, Peyré, Pfister, "Sliced and Radon Wasserstein barycenters of measures",
       J. Math. Imaging Vis. 51 (2015).
    """
    values = sliced_w1_to_normal_slices(X, n_projections, seed, projections=projections)
    return float(_finite_result(_mean(values), "sliced_w1_to_normal"))


# --- between two samples (POT) ----------------------------------------------------------------


def sliced_w1_to_normal_grad(X: Any, n_projections: int = 256, seed: int = 0, *, projections: Any = None) -> np.ndarray:
    r"""Gradient of the exact-per-slice :math:`SW_1(\nu, \mathcal{N}(0, I))` with respect to the rows of ``X``.

    Sort the projections :math:`a_{ij} = \langle x_i, \theta_j \rangle` of each slice; if row i has
    rank r, it carries the quantile step :math:`[r/n, (r+1)/n]` and (:func:`w1_to_normal`)

    .. math::
        \frac{\partial SW_1}{\partial x_i} = \frac{1}{s} \sum_{j=1}^{s}
        \big(2\,\Phi(t_{ij}) - \tfrac{2r + 1}{n}\big)\, \theta_j, \qquad
        t_{ij} = \mathrm{clip}\big(a_{ij}, \Phi^{-1}(\tfrac{r}{n}), \Phi^{-1}(\tfrac{r+1}{n})\big)

    i.e. :math:`\pm 1/n` along :math:`\theta_j` when :math:`a_{ij}` lies outside its Gaussian
    quantile step. Unlike the PER gradient (:func:`per_core.per.per_grad`) it needs a sort per
    slice and couples the rows through their ranks; it is the reference PER's bound replaces.

    Parameters
    ----------
    X : array_like, shape (n_samples, dim)
    n_projections, seed, projections
        As in :func:`sliced_w1_to_normal` (same slices for the same seed).

    Returns
    -------
    grad : ndarray, shape (n_samples, dim)

    Example
    -------
    >>> g = sliced_w1_to_normal_grad(np.zeros((4, 2)), n_projections=8)
    >>> g.shape
    (4, 2)
    """
    X = _samples_2d(X, "X")
    P = _resolve_projections(X.shape[1], n_projections, seed, projections)
    n = X.shape[0]
    lo, _, hi, _ = _equal_steps(n)
    grad = np.zeros_like(X)
    for cols in _slice_chunks(n, P.shape[0]):
        with np.errstate(over="ignore", invalid="ignore"):
            proj = X @ P[cols].T  # (n, c)
        _finite_result(proj, "the projections of X")
        order = np.argsort(proj, axis=0, kind="stable")
        xs = np.take_along_axis(proj, order, axis=0)  # sorted per slice
        t = np.clip(xs, special.ndtri(lo), special.ndtri(hi))
        d_sorted = 2.0 * special.ndtr(t) - lo - hi  # d W1_j / d x_(r), in [-1/n, 1/n]
        d = np.empty_like(d_sorted)
        np.put_along_axis(d, order, d_sorted, axis=0)  # back to row order
        grad += d @ P[cols]  # (n, c) @ (c, dim)
    return grad / P.shape[0]


def _pot():
    import ot  # lazy: keeps `import analysis` fast

    return ot


def _sliced_pot(X: Any, Y: Any, n_projections: int, seed: int, projections: Any, reduce: str) -> float:
    X = _samples_2d(X, "X")
    Y = _samples_2d(Y, "Y")
    _check_same_dim(X, Y)
    P = _resolve_projections(X.shape[1], n_projections, seed, projections)
    c = _common_scale(X, Y)  # SW1(cX, cY) = c SW1(X, Y): POT's sums stay finite at any magnitude
    if c != 1.0:
        X, Y = X / c, Y / c
    ot = _pot()
    fn = ot.sliced_wasserstein_distance if reduce == "mean" else ot.max_sliced_wasserstein_distance
    parts = []  # POT projects all slices at once: chunks of slices bound the memory
    for cols in _slice_chunks(X.shape[0] + Y.shape[0], P.shape[0]):
        # POT: projections of shape (dim, n_projections); p=1 returns SW_1 itself (no power to undo)
        value = fn(X, Y, projections=np.ascontiguousarray(P[cols].T), p=1)
        parts.append((float(value), cols.stop - cols.start))
    values = np.array([v for v, _ in parts])
    sizes = np.array([k for _, k in parts])
    value = values.max() if reduce == "max" else np.dot(values, sizes / sizes.sum())
    with np.errstate(over="ignore"):
        value = np.float64(value) * c
    return float(_finite_result(np.asarray(value, dtype=np.float64), "the sliced distance"))


def sliced_w1(X: Any, Y: Any, n_projections: int = 256, seed: int = 0, *, projections: Any = None) -> float:
    r"""Sliced :math:`W_1` between the rows of ``X`` and ``Y`` (POT, exact 1-D OT per slice).

    .. math::
        SW_1(\mu, \nu) \approx \frac{1}{s} \sum_{j=1}^{s} W_1(\mu_{\theta_j}, \nu_{\theta_j})

    [2]_, computed by ``ot.sliced_wasserstein_distance(X, Y, projections=P.T, p=1)`` with the slices
    ``P`` of :func:`_projections` (so the same ``seed`` gives the slices of :func:`sliced_w1_to_normal`).

    Parameters
    ----------
    X : array_like, shape (n_samples_x, dim)
    Y : array_like, shape (n_samples_y, dim)
    n_projections : int
        Number of slices s (ignored when ``projections`` is given).
    seed : int
        Seed of the slices.
    projections : array_like, shape (n_projections, dim), optional
        Unit directions to use instead (note: rows are directions, unlike POT).

    Returns
    -------
    sw1 : float

    Example
    -------
    >>> X = np.random.default_rng(0).normal(size=(100, 3))
    >>> round(sliced_w1(X, X + [1.0, 0.0, 0.0], n_projections=1, projections=[[1.0, 0.0, 0.0]]), 6)
    1.0

    References
    ----------
    .. [2] Bonneel, Rabin, Peyré, Pfister, "Sliced and Radon Wasserstein barycenters of measures",
       J. Math. Imaging Vis. 51 (2015).
    """
    return _sliced_pot(X, Y, n_projections, seed, projections, "mean")


def max_sliced_w1(X: Any, Y: Any, n_projections: int = 256, seed: int = 0, *, projections: Any = None) -> float:
    r"""Max-sliced :math:`W_1` over the given slices (POT): a lower bound of the true max-sliced distance.

    .. math::
        \max_{j} W_1(\mu_{\theta_j}, \nu_{\theta_j}) \le \max_{\theta \in S^{d-1}} W_1(\mu_\theta, \nu_\theta)
        \le W_1(\mu, \nu)

    computed by ``ot.max_sliced_wasserstein_distance(X, Y, projections=P.T, p=1)`` (no optimization
    over directions: the maximum over the s slices of :func:`_projections`).

    Parameters
    ----------
    X : array_like, shape (n_samples_x, dim)
    Y : array_like, shape (n_samples_y, dim)
    n_projections, seed, projections
        As in :func:`sliced_w1`.

    Returns
    -------
    msw1 : float

    Example
    -------
    >>> X = np.zeros((4, 2))
    >>> round(max_sliced_w1(X, X + [3.0, 4.0], projections=[[1.0, 0.0], [0.6, 0.8]]), 6)
    5.0
    """
    return _sliced_pot(X, Y, n_projections, seed, projections, "max")


# --- exact W1 between two samples (POT emd2) --------------------------------------------------


def _subsample(X: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    return X if X.shape[0] <= k else X[np.sort(rng.choice(X.shape[0], size=k, replace=False))]


def w1(X: Any, Y: Any, *, max_samples: int = W1_MAX_SAMPLES, seed: int = 0) -> float:
    r"""Exact :math:`W_1` between two samples with equal weights on their rows.

    .. math::
        W_1(\mu, \nu) = \min_{\gamma \in \Pi(a, b)} \sum_{ij} \gamma_{ij} \lVert x_i - y_j \rVert_2

    solved by ``ot.emd2(a, b, M)`` (network simplex) with the Euclidean cost
    ``M = cdist(X, Y)`` (not ``ot.dist``: its default is the *squared* distance and its
    ``'euclidean'`` goes through the Gram matrix, losing :math:`\sqrt{\varepsilon}\lVert x \rVert`).
    For ``dim == 1`` the sorted 1-D formula (``ot.wasserstein_1d(x, y, p=1)``, which returns
    :math:`W_1^1`) gives the same exact value for any size. In higher dimension a sample with more
    than ``max_samples`` rows is subsampled (without replacement, seeded) with a warning; the result
    is then a Monte-Carlo estimate, biased upward (:math:`W_1` is jointly convex).

    Parameters
    ----------
    X : array_like, shape (n_samples_x, dim) or (n_samples_x,)
    Y : array_like, shape (n_samples_y, dim) or (n_samples_y,)
        1-D arrays are samples in dimension 1.
    max_samples : int
        Largest number of rows of each sample given to exact OT (default
        :data:`W1_MAX_SAMPLES` = 5000, i.e. n * m <= 2.5e7: about 200 MB and several seconds).
    seed : int
        Seed of the subsampling.

    Returns
    -------
    w1 : float

    Example
    -------
    >>> round(w1([[0.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, 1.0]]), 6)
    1.0
    >>> round(w1([0.0, 1.0, 2.0], [10.0]), 6)  # 1-D: mean distance to the point mass
    9.0
    """
    X = _samples_2d(X, "X", allow_1d=True)
    Y = _samples_2d(Y, "Y", allow_1d=True)
    _check_same_dim(X, Y)
    max_samples = check_positive_int(max_samples, "max_samples")
    seed = check_seed(seed)
    c = _common_scale(X, Y)  # W1(cX, cY) = c W1(X, Y): no overflow (or underflow) of the squares in cdist
    if c != 1.0:
        X, Y = X / c, Y / c
    ot = _pot()
    if X.shape[1] == 1:
        value = ot.wasserstein_1d(X[:, 0], Y[:, 0], p=1)  # W_1^1 = W_1
        with np.errstate(over="ignore"):
            value = np.float64(value) * c
        return float(_finite_result(np.asarray(value, dtype=np.float64), "w1"))
    n, m = X.shape[0], Y.shape[0]
    if n > max_samples or m > max_samples:
        warnings.warn(
            f"w1: exact OT between {n} and {m} rows (dim {X.shape[1]}) would be slow; using random "
            f"subsamples of at most {max_samples} rows each (seed {seed}): a Monte-Carlo estimate, "
            "biased upward",
            stacklevel=2,
        )
        rng = np.random.default_rng(seed)
        X, Y = _subsample(X, max_samples, rng), _subsample(Y, max_samples, rng)
        n, m = X.shape[0], Y.shape[0]
    from scipy.spatial.distance import cdist

    M = cdist(X, Y, metric="euclidean")  # (n, m), exact differences (no Gram-matrix cancellation)
    _finite_result(M, "the cost matrix of w1")
    a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="numItermax reached")
        cost, log = ot.emd2(a, b, M, numItermax=max(100_000, 100 * n * m), log=True)
    if log["warning"] is not None:
        raise RuntimeError(f"w1: the network simplex did not reach the optimum ({log['warning']})")
    with np.errstate(over="ignore"):
        cost = np.float64(cost) * c
    return float(_finite_result(np.asarray(cost), "w1"))
