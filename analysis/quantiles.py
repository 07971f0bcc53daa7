r"""Quantiles of a unit's values from its recorded histogram (the bands of Figure 2).

:func:`hist_quantiles` interpolates within bins (resolution: the bin width), places the under- and
overflow between the histogram's range and the recorded min/max, and there, given the unit's exact
mean and variance, follows a normal tail. :func:`bin_width` is the resolution a histogram gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["QUANTILES", "bin_width", "hist_quantiles"]

#: Quantile levels of Figure 2's bands: 5-95% (light), 25-75% (dark) and the median.
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def hist_quantiles(
    counts: Any,
    edges: Any,
    q: Sequence[float] = QUANTILES,
    *,
    under: Any = 0,
    over: Any = 0,
    data_min: Any = None,
    data_max: Any = None,
    mean: Any = None,
    std: Any = None,
) -> np.ndarray:
    r"""Quantiles of histogrammed data, interpolated linearly within bins.

    The under/overflow counts become two more bins, :math:`[\min, e_0)` and :math:`(e_n, \max]`,
    and every edge is clipped to the recorded :math:`[\min, \max]` (no value lies outside it), so
    the bins holding the extremes shrink to where the data are. With :math:`C_j` the count below
    edge :math:`j` and :math:`N` the total, the :math:`q`-quantile lies in the bin :math:`j` with
    :math:`C_j < qN \le C_{j+1}` (for :math:`q = 0`, the first bin that holds a value) and is read off
    assuming values spread evenly in it:

    .. math::
        \hat x_q = e_j + (e_{j+1} - e_j) \frac{qN - C_j}{C_{j+1} - C_j}.

    The sample quantile :math:`x_{(\lceil qN \rceil)}` (numpy's ``method="inverted_cdf"``) lies in
    the same bin, so the error is at most the width of that bin: the histogram's bin width inside
    the range (0.5 for the recorder's defaults), up to :math:`e_0 - \min` or :math:`\max - e_n` in
    the under/overflow. For large samples numpy's default (linear) quantile is as close.

    An even spread is a poor model of a tail: the extreme :math:`\min` moves out with the sample
    size while most of the tail's mass stays near the edge (a unit of std 20 against edges at
    :math:`\pm 10`: the 5 % quantile read -77 for a true -33). Given the data's exact ``mean``
    :math:`\mu` and ``std`` :math:`\sigma` (the recorder's moments), a quantile in the underflow,
    at the fraction :math:`r = qN / N_{under}` of it, is placed where a normal tail with those
    moments puts it, conditioned on :math:`x < e_0` (:math:`\Phi` the standard normal CDF):

    .. math::
        \hat x_q = \mu + \sigma\, \Phi^{-1}\!\left( r\, \Phi\!\left(\frac{e_0 - \mu}{\sigma}\right) \right),
        \quad \text{clipped to } [\min, e_0],

    and in the overflow symmetrically, with :math:`1 - r` of it above and :math:`\Phi((\mu - e_n)/\sigma)`.
    This is exact in the limit for normal data, and continuous with the in-range interpolation at
    :math:`e_0` and :math:`e_n`; for other tails it is a model (heavier tails are read too short,
    lighter ones too long, never beyond :math:`[\min, \max]`). Where :math:`\sigma` is not a
    positive finite number the even spread is used.

    Parameters
    ----------
    counts : array_like, shape (..., bins)
        Histogram counts, e.g. one row per epoch.
    edges : array_like, shape (bins + 1,) or (..., bins + 1)
        Bin edges (increasing), shared or one row per histogram.
    q : sequence of float
        Quantile levels in [0, 1].
    under, over : array_like, shape (...), optional
        Counts below ``edges[0]`` and above ``edges[-1]``.
    data_min, data_max : array_like, shape (...), optional
        The recorded minimum and maximum; needed when ``under``/``over`` are non-zero.
    mean, std : array_like, shape (...), optional
        The data's exact mean and standard deviation: quantiles in the under/overflow follow a
        normal tail with these moments instead of an even spread (both or neither).

    Returns
    -------
    quantiles : ndarray, shape (..., len(q))
        NaN where the histogram is empty.

    Example
    -------
    >>> x = np.random.default_rng(0).normal(size=10_000)
    >>> edges = np.linspace(-10, 10, 41)
    >>> est = hist_quantiles(np.histogram(x, edges)[0], edges, data_min=x.min(), data_max=x.max())
    >>> bool(np.all(np.abs(est - np.quantile(x, QUANTILES)) <= 0.5))
    True
    """
    counts = np.asarray(counts, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if counts.ndim < 1:
        raise ValueError("counts must have a bins axis")
    if not np.all((q >= 0) & (q <= 1)):  # NaN fails too
        raise ValueError(f"quantile levels must lie in [0, 1], got {q.tolist()}")
    lead = counts.shape[:-1]
    edges = np.broadcast_to(np.asarray(edges, dtype=np.float64), (*lead, counts.shape[-1] + 1))
    if not (np.isfinite(edges).all() and (np.diff(edges, axis=-1) > 0).all()):
        raise ValueError("edges must be finite and strictly increasing along the last axis")
    under = np.broadcast_to(np.asarray(under, dtype=np.float64), lead)
    over = np.broadcast_to(np.asarray(over, dtype=np.float64), lead)
    for name, arr in (("counts", counts), ("under", under), ("over", over)):
        if not np.all(np.isfinite(arr) & (arr >= 0)):
            raise ValueError(f"{name} must be finite non-negative counts, got {arr.ravel()[:8].tolist()} ...")
    if (mean is None) != (std is None):
        raise ValueError("mean and std place the tails together: give both or neither")
    if (np.any(under > 0) and data_min is None) or (np.any(over > 0) and data_max is None):
        raise ValueError("under/overflow counts need data_min/data_max to place them")
    lo = edges[..., 0] if data_min is None else np.broadcast_to(np.asarray(data_min, dtype=np.float64), lead)
    hi = edges[..., -1] if data_max is None else np.broadcast_to(np.asarray(data_max, dtype=np.float64), lead)
    nonempty = (counts.sum(-1) + under + over) > 0
    if np.isnan(lo).any() or np.isnan(hi).any() or not np.all(np.isfinite(lo) & np.isfinite(hi) | ~nonempty):
        raise ValueError("data_min/data_max must be finite wherever the histogram holds values (+-inf only when empty)")
    # (..., bins + 3) edges [min, e_0 .. e_n, max] clipped into [min, max]; (..., bins + 2) counts
    ext = np.concatenate([lo[..., None], edges, hi[..., None]], axis=-1)
    with np.errstate(invalid="ignore"):  # empty units have min = +inf, max = -inf
        ext = np.clip(ext, np.minimum(lo, hi)[..., None], np.maximum(lo, hi)[..., None])
    c = np.concatenate([under[..., None], counts, over[..., None]], axis=-1)
    cum = np.concatenate([np.zeros((*lead, 1)), np.cumsum(c, axis=-1)], axis=-1)  # (..., bins + 3)
    total = cum[..., -1:]
    target = q * total  # (..., len(q))
    below = cum[..., None, 1:]
    j = ((below < target[..., :, None]) | (below <= 0)).sum(-1)  # first bin with C_{j+1} >= qN and C_{j+1} > 0
    j = np.minimum(j, c.shape[-1] - 1)
    c_j = np.take_along_axis(c, j, -1)
    frac = np.clip((target - np.take_along_axis(cum, j, -1)) / np.maximum(c_j, 1e-300), 0.0, 1.0)
    left, right = np.take_along_axis(ext, j, -1), np.take_along_axis(ext, j + 1, -1)
    with np.errstate(invalid="ignore"):  # empty histograms (NaN below) may have infinite ends
        out = left + frac * (right - left)
        if mean is not None:
            out = _normal_tails(out, j, frac, edges, ext, under, over, mean, std)
        out = np.clip(out, ext[..., :1], ext[..., -1:])  # rounding never leaves [min, max]
    return np.where(total > 0, out, np.nan)


def _normal_tails(
    out: np.ndarray,
    j: np.ndarray,
    frac: np.ndarray,
    edges: np.ndarray,
    ext: np.ndarray,
    under: np.ndarray,
    over: np.ndarray,
    mean: Any,
    std: Any,
) -> np.ndarray:
    """:func:`hist_quantiles`' quantiles in the under/overflow (bins 0 and -1 of ``ext``) placed by a normal tail."""
    from scipy import special

    lead = out.shape[:-1]
    mu = np.broadcast_to(np.asarray(mean, dtype=np.float64), lead)[..., None]
    sd = np.broadcast_to(np.asarray(std, dtype=np.float64), lead)[..., None]
    usable = np.isfinite(mu) & np.isfinite(sd) & (sd > 0)
    sd = np.where(usable, sd, 1.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # log(0) = -inf: the quantile is min
        low = mu + sd * special.ndtri_exp(np.log(frac) + special.log_ndtr((edges[..., :1] - mu) / sd))
        high = mu - sd * special.ndtri_exp(np.log1p(-frac) + special.log_ndtr((mu - edges[..., -1:]) / sd))
    last = ext.shape[-1] - 2
    in_under = usable & (j == 0) & (under[..., None] > 0)
    in_over = usable & (j == last) & (over[..., None] > 0)
    out = np.where(in_under, np.clip(low, ext[..., :1], ext[..., 1:2]), out)
    return np.where(in_over, np.clip(high, ext[..., -2:-1], ext[..., -1:]), out)


def bin_width(edges: np.ndarray) -> float:
    return float(np.diff(edges).max())
