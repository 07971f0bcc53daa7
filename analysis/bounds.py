r"""The Minkowski bound :math:`L_{per}` and the checks :math:`SW_1 \le L_{per}` and :math:`SW_1 \le W_1`.

PER [1]_ minimizes an upper bound of the sliced Wasserstein distance [2]_ to :math:`\mathcal{N}(0, I_d)`:
for every unit direction :math:`\theta`, with :math:`a_i = \langle x_i, \theta \rangle`,

.. math::
    W_1(\nu_\theta, \mathcal{N}(0,1)) \le \frac{1}{n} \sum_i W_1(\delta_{a_i}, \mathcal{N}(0,1))
    = \frac{1}{n} \sum_i \mathbb{E}|Z - a_i|

(convexity of :math:`W_1` in its first argument, i.e. Minkowski's inequality moved outside the
absolute value), and, since a projection is 1-Lipschitz, :math:`W_1(\nu_\theta, \mathcal{N}(0,1))
\le W_1(\nu, \mathcal{N}(0, I_d))`. Averaged over the same slices:

.. math::
    SW_1 \le L_{per}, \qquad SW_1 \le W_1.

The first inequality holds *slice by slice*, so with the same slices it is a deterministic check
(equality for a point mass). The bound is loose and has the wrong minimizer: :math:`L_{per}` is
smallest at a point mass at 0 (:data:`LPER_FLOOR` :math:`= \sqrt{2/\pi} \approx 0.798`), not at
:math:`\mathcal{N}(0, I)` (:data:`LPER_AT_GAUSSIAN` :math:`= 2/\sqrt{\pi} \approx 1.128`), while
:math:`SW_1` of the point mass is :math:`\sqrt{2/\pi}`: a small :math:`L_{per}` can mean that the
activations shrank, not that they became Gaussian. :func:`check_bounds` reports this.

The closed form is not reimplemented here: :func:`per_bound` calls :func:`per_core.per.per_loss`
and :func:`per_bound_slices` calls :func:`per_core.per.folded_normal_mean`, on the slices of
:func:`analysis.distances._projections` (the slices of :func:`analysis.distances.sliced_w1_to_normal`).

Columns of bounds.csv and distances.csv
---------------------------------------
``python -m analysis.bounds RUN_DIR`` writes both into ``RUN_DIR/analysis/``. Distances are in the
units of the activations (W1 has the units of the values); flags are True/False.

bounds.csv: one row per (run, split, epoch, layer) that kept a reservoir (a uniform sample of the
epoch's rows, 256 by default); its distances are those of that m-row sample.

- ``run``: the run's path below the path given (its folder name for a single run).
- ``method``: the run's method (``config.json``): vanilla, bn, per, ...
- ``split``: ``train`` (recorded training batches, train mode) or ``eval`` (a fixed validation batch,
  eval mode).
- ``epoch``: the epoch, counted from 1.
- ``layer``: the recorded layer's label (e.g. layer3).
- ``rows``: reservoir rows m used (rows holding a NaN or inf are left out); 0 when no row was finite:
  then nothing was checked, the numbers are NaN and the flags False.
- ``nonfinite_rows``: reservoir rows left out because they hold a NaN or inf (the run was diverging:
  ``python -m analysis.bounds`` names them in a ``note:``).
- ``units``: the layer's width d (the dimension of a row).
- ``sw1``: SW1 of the rows to N(0, I_d): the exact 1-D W1 of the projected rows to N(0, 1), averaged
  over the ``--n-projections`` slices (seed ``--seed``). 0 only for N(0, I) itself; an m-row
  Gaussian sample scores about 1.29/sqrt(m) (0.08 at m = 256), its finite-sample floor.
- ``lper``: L_per on the same slices, the bound PER minimizes (>= ``sw1``); 0.798 = sqrt(2/pi) at
  its minimum (a point mass at 0), 1.128 = 2/sqrt(pi) at N(0, I).
- ``gap``: ``lper - sw1`` (>= 0 up to rounding, e.g. -2e-15 for a point mass): how loose the bound is.
- ``per_slice_ok``: SW1 <= L_per held on every slice (relative tolerance 1e-9, absolute 1e-12).
- ``per_slice_max_violation``: the largest (W1 of a slice - L_per of that slice); <= 0 up to rounding.
- ``w1``: the W1 side: exact optimal transport between the rows (at most 2000) and as many N(0, I)
  sample points, a Monte Carlo estimate of W1(rows, N(0, I)), biased upward; for d = 1 the exact
  closed form (then equal to ``sw1``). The bias grows with d and dominates there: 256 rows drawn
  from N(0, I) itself score about 0.27 at d = 2, 1.8 at d = 8, 3.5 at d = 16, 5.9 at d = 32 and 9.2
  at d = 64 (``check_bounds`` of Gaussian samples, 3 seeds each), so compare ``w1`` between runs of
  one layer and with that floor, never with 0; ``sw1`` has no such growth.
- ``w1_slack``: what the comparison adds to ``w1`` so that ``sw1 <= w1 + w1_slack`` is rigorous:
  it bounds the error of replacing N(0, I) by the Gaussian sample (and the rows by their
  subsample), by the triangle inequality on every slice: SW1(Gaussian sample, N(0, I)) [+ SW1(rows,
  subsample) when rows > 2000] on the same slices; 0 for d = 1.
- ``w1_ok``: ``sw1 <= w1 + w1_slack`` held (same tolerance).
- ``projected_std``: the spread of the projected rows, sqrt(mean over slices of their variance): 1
  for N(0, I), 0 for a point mass.
- ``collapsed``: ``projected_std < 0.5`` and ``lper < 1.128``: the bound is small because the
  projected activations spread little (shrunk by a regularizer, small from the start as in early
  epochs, or narrow around a non-zero mean), not because they are Gaussian; ``sw1`` is then large.
- ``passed``: ``per_slice_ok`` and ``w1_ok``; False with ``rows`` > 0 is a violation of the theory
  (exit status 1).

distances.csv: one row per (run, split, epoch, layer, unit) recorded.

- ``run``, ``method``, ``split``, ``epoch``, ``layer``: as in bounds.csv.
- ``unit``: the unit's index in the layer (neuron or channel), from 0.
- ``nonfinite``: the unit's recorded values that were NaN or inf (left out of ``w1_hist``).
- ``w1_hist``: W1 of the unit's values to N(0, 1) from its histogram (every value recorded in that
  epoch and split, not only the reservoir), each bin's values moved to its midpoint; NaN when no
  finite value was recorded.
- ``w1_hist_error``: a rigorous bound on the binning error, ``|W1(values, N(0, 1)) - w1_hist| <=
  w1_hist_error``: at most half the bin width (0.25 for the recorder's 0.5-wide bins), more where
  values fell outside the histogram range (that bin reaches the recorded min or max).
- ``w1_reservoir``: the exact W1 of the unit's finite reservoir values to N(0, 1) (an m-point sample:
  compare at equal m); NaN when the epoch kept no reservoir.

References
----------
.. [1] Joo, T., Kang, D., Kim, B. "Regularizing activations in neural networks via
   distribution matching with the Wasserstein metric", ICLR 2020, arXiv:2002.05366.
.. [2] Bonneel, N., Rabin, J., Peyré, G., Pfister, H. "Sliced and Radon Wasserstein
   barycenters of measures", J. Math. Imaging Vis. 51 (2015).
.. [3] Rabin, J., Peyré, G., Delon, J., Bernot, M. "Wasserstein barycenter and its application
   to texture mixing", SSVM 2011.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from analysis.distances import (
    _common_scale,
    _finite_result,
    _mean,
    _resolve_projections,
    _samples_2d,
    _slice_chunks,
    sliced_w1,
    sliced_w1_to_normal_slices,
    w1,
    w1_to_normal,
)
from per_core.checks import check_positive_int, check_seed
from per_core.per import folded_normal_mean, per_loss

__all__ = [
    "COLLAPSE_STD",
    "EXACT_MAX_SAMPLES",
    "LPER_AT_GAUSSIAN",
    "LPER_FLOOR",
    "BoundReport",
    "check_bounds",
    "per_bound",
    "per_bound_slices",
]

#: :math:`L_{per}` of a point mass at 0, its minimum: :math:`\mathbb{E}|Z| = \sqrt{2/\pi}`.
LPER_FLOOR = math.sqrt(2.0 / math.pi)
#: :math:`L_{per}` of :math:`\mathcal{N}(0, I)` itself: :math:`\mathbb{E}|Z - Z'| = 2/\sqrt{\pi}`.
LPER_AT_GAUSSIAN = 2.0 / math.sqrt(math.pi)

_RNG_TAG = 0x5045_5242  # "PERB": separates check_bounds' numpy stream from default_rng(seed)

#: Default number of rows given to exact OT in :func:`check_bounds` (2000 x 2000: under a second).
EXACT_MAX_SAMPLES = 2000
#: Projected standard deviation below which a layer counts as collapsed (with
#: :math:`L_{per} <` :data:`LPER_AT_GAUSSIAN`): the default of :func:`check_bounds`, used by the plots.
COLLAPSE_STD = 0.5
# --help's epilog: the section of the module docstring that explains the columns of the two tables
_TABLES_HELP = (__doc__ or "").partition("\nColumns of bounds.csv")[2].partition("\nReferences\n")[0]
_TABLES_HELP = "Columns of bounds.csv" + _TABLES_HELP.replace("``", "") if _TABLES_HELP else None


def per_bound(X: Any, n_projections: int = 256, seed: int = 0, *, projections: Any = None) -> float:
    r"""The Minkowski bound :math:`L_{per}` of the rows of ``X``, on the slices of :func:`sliced_w1_to_normal`.

    .. math::
        L_{per} = \frac{1}{n s} \sum_{i=1}^{n} \sum_{j=1}^{s} \mathbb{E}_{Z \sim \mathcal{N}(0,1)}
        |Z - \langle x_i, \theta_j \rangle| \;\ge\; \frac{1}{s} \sum_{j=1}^{s}
        W_1(\nu_{\theta_j}, \mathcal{N}(0,1))

    computed by :func:`per_core.per.per_loss` in float64 (paper [1]_, Eq. 6). When its sum of n s
    terms would overflow (values near the float64 maximum), the mean of :func:`per_bound_slices` is
    taken instead, without overflow; a bound beyond the float64 maximum raises ValueError, and so
    does a projection :math:`\langle x_i, \theta_j \rangle` beyond it, even where the mean would
    be finite (rows of norm above ~1e308).

    Parameters
    ----------
    X : array_like, shape (n_samples, dim)
    n_projections : int
        Number of slices s (ignored when ``projections`` is given).
    seed : int
        Seed of the slices: the same as ``sliced_w1_to_normal(X, n_projections, seed)``.
    projections : array_like, shape (n_projections, dim), optional
        Unit directions to use instead.

    Returns
    -------
    lper : float

    Example
    -------
    >>> round(per_bound(np.zeros((4, 3))), 6)  # the floor sqrt(2/pi), attained by a point mass at 0
    0.797885
    >>> X = np.random.default_rng(0).normal(size=(20_000, 3))
    >>> abs(per_bound(X, 64) - LPER_AT_GAUSSIAN) < 0.02  # N(0, I) is *not* the minimizer
    True

    References
    ----------
    .. [1] Joo, Kang, Kim, "Regularizing activations in neural networks via distribution matching
       with the Wasserstein metric", ICLR 2020, arXiv:2002.05366.
    """
    X = _samples_2d(X, "X")
    P = _resolve_projections(X.shape[1], n_projections, seed, projections)
    n, d = X.shape
    # per_loss sums n s terms E|Z - a| <= |a| + 1 <= sqrt(d) max|x| + 1 before dividing: near the float64
    # maximum that sum overflows, and the mean is taken slice by slice without overflow instead
    with np.errstate(over="ignore"):
        largest_sum = n * P.shape[0] * (math.sqrt(d) * float(np.abs(X).max()) + 1.0)
    if not largest_sum < np.finfo(np.float64).max / 4:
        return float(_finite_result(_mean(per_bound_slices(X, projections=P)), "per_bound"))
    theta = torch.from_numpy(P)
    return float(per_loss(torch.from_numpy(np.ascontiguousarray(X)), n_slices=P.shape[0], theta=theta))


def per_bound_slices(X: Any, n_projections: int = 256, seed: int = 0, *, projections: Any = None) -> np.ndarray:
    r"""Per-slice Minkowski bound :math:`\frac{1}{n} \sum_i \mathbb{E}|Z - \langle x_i, \theta_j \rangle|`.

    .. math::
        \ell_j = \frac{1}{n} \sum_{i=1}^n \Big[a_{ij}\,\mathrm{erf}(a_{ij}/\sqrt{2})
        + \sqrt{2/\pi}\, e^{-a_{ij}^2/2}\Big] \;\ge\; W_1(\nu_{\theta_j}, \mathcal{N}(0,1)),
        \qquad a_{ij} = \langle x_i, \theta_j \rangle

    by :func:`per_core.per.folded_normal_mean`; ``per_bound_slices(...).mean() == per_bound(...)``.

    Parameters
    ----------
    X : array_like, shape (n_samples, dim)
    n_projections, seed, projections
        As in :func:`per_bound`.

    Returns
    -------
    lper : ndarray, shape (n_projections,)

    Example
    -------
    >>> per_bound_slices(np.zeros((2, 2)), 3).round(6)
    array([0.797885, 0.797885, 0.797885])
    """
    X = _samples_2d(X, "X")
    P = _resolve_projections(X.shape[1], n_projections, seed, projections)
    Xt, Pt = torch.from_numpy(np.ascontiguousarray(X)), torch.from_numpy(P)
    out = np.empty(P.shape[0])
    for cols in _slice_chunks(X.shape[0], P.shape[0]):
        proj = _finite_result((Xt @ Pt[cols].T).numpy(), "the projections of X")  # (n, d) @ (d, c) -> (n, c)
        out[cols] = _mean(folded_normal_mean(torch.from_numpy(proj)).numpy(), axis=0)  # (n, c) -> (c,)
    return _finite_result(out, "per_bound_slices")


@dataclasses.dataclass(frozen=True)
class BoundReport:
    r"""Result of :func:`check_bounds`; ``passed`` is True when both inequalities hold.

    Attributes
    ----------
    n_samples, dim, n_projections, seed : int
        What was checked.
    sw1 : float
        :math:`SW_1(\nu, \mathcal{N}(0, I))`, exact per slice, averaged over the slices.
    lper : float
        :math:`L_{per}` on the same slices.
    gap : float
        ``lper - sw1`` (>= 0): how loose the bound is.
    per_slice_max_violation : float
        :math:`\max_j (w_j - \ell_j)`; <= 0 up to rounding (0 for a point mass).
    per_slice_ok : bool
        :math:`w_j \le \ell_j (1 + r) + a` for every slice (``rtol`` r, ``atol`` a).
    w1 : float
        The :math:`W_1` side: exact (``dim == 1``) or exact OT to a Gaussian sample (see ``w1_method``).
    w1_method : str
        How ``w1`` was obtained.
    w1_slack : float
        What the comparison adds to ``w1`` so that :math:`SW_1 \le W_1 + slack` is rigorous.
    w1_ok : bool
        ``sw1 <= w1 + w1_slack`` (with the tolerance).
    projected_std : float
        :math:`\sqrt{\mathrm{mean}_j \mathrm{Var}_i \langle x_i, \theta_j \rangle}`: 1 for
        :math:`\mathcal{N}(0, I)`, 0 for a point mass.
    collapsed : bool
        ``projected_std < collapse_std`` and ``lper < lper_at_gaussian``: :math:`L_{per}` is small
        because the projected activations spread little (shrunk, or narrow around a non-zero mean), not
        because they are Gaussian (see ``notes``).
    rtol, atol, collapse_std : float
        Settings used.
    lper_floor, lper_at_gaussian : float
        :math:`\sqrt{2/\pi}` (minimum of :math:`L_{per}`, at a point mass at 0) and :math:`2/\sqrt{\pi}`
        (:math:`L_{per}` of :math:`\mathcal{N}(0, I)`).
    notes : tuple of str
        Human-readable findings and caveats.
    """

    n_samples: int
    dim: int
    n_projections: int
    seed: int
    sw1: float
    lper: float
    gap: float
    per_slice_max_violation: float
    per_slice_ok: bool
    w1: float
    w1_method: str
    w1_slack: float
    w1_ok: bool
    projected_std: float
    collapsed: bool
    rtol: float
    atol: float
    collapse_std: float
    lper_floor: float = LPER_FLOOR
    lper_at_gaussian: float = LPER_AT_GAUSSIAN
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """Both checks hold: SW1 <= L_per on every slice and SW1 <= W1 (+ slack)."""
        return self.per_slice_ok and self.w1_ok

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (JSON-serializable), including ``passed``."""
        out = dataclasses.asdict(self)
        out["notes"] = list(self.notes)
        out["passed"] = self.passed
        return out

    def __str__(self) -> str:
        def mark(ok: bool) -> str:
            return "ok" if ok else "FAILED"

        lines = [
            f"BoundReport: {'PASSED' if self.passed else 'FAILED'} "
            f"(n={self.n_samples}, d={self.dim}, slices={self.n_projections}, seed={self.seed})",
            f"  SW1 to N(0,I)        {self.sw1:.6g}   (exact per slice)",
            f"  L_per (same slices)  {self.lper:.6g}   gap L_per - SW1 = {self.gap:.6g}",
            f"  SW1 <= L_per per slice: {mark(self.per_slice_ok)} "
            f"(max violation {self.per_slice_max_violation:.3g}, rtol {self.rtol:g}, atol {self.atol:g})",
            f"  SW1 <= W1: {mark(self.w1_ok)} (W1 = {self.w1:.6g} + slack {self.w1_slack:.3g}; {self.w1_method})",
            f"  L_per floor sqrt(2/pi) = {self.lper_floor:.6f} (point mass at 0); "
            f"L_per at N(0,I) = 2/sqrt(pi) = {self.lper_at_gaussian:.6f}",
            f"  projected std {self.projected_std:.4g} (1 for N(0,I)); collapsed: {self.collapsed}",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def check_bounds(
    X: Any,
    n_projections: int = 256,
    seed: int = 0,
    *,
    projections: Any = None,
    exact_max_samples: int = EXACT_MAX_SAMPLES,
    rtol: float = 1e-9,
    atol: float = 1e-12,
    collapse_std: float = COLLAPSE_STD,
) -> BoundReport:
    r"""Check :math:`SW_1 \le L_{per}` (slice by slice) and :math:`SW_1 \le W_1` on the rows of ``X``.

    **SW1 <= L_per.** With the same slices, for every slice j (see the module docstring)

    .. math::
        w_j = W_1(\nu_{\theta_j}, \mathcal{N}(0,1)) \le \ell_j = \frac{1}{n} \sum_i \mathbb{E}|Z - a_{ij}|,

    a deterministic inequality (equality for a point mass), checked with the float tolerance
    :math:`w_j \le \ell_j (1 + r) + a`.

    **SW1 <= W1.** For ``dim == 1``, :math:`W_1` is exact (:func:`analysis.distances.w1_to_normal`)
    and equals :math:`SW_1` (slack 0). For ``dim > 1``, :math:`W_1(\nu, \mathcal{N}(0, I))` has no
    closed form: it is estimated by exact OT (:func:`analysis.distances.w1`) between a subsample
    :math:`\nu_m` of at most ``exact_max_samples`` rows and an m-point Gaussian sample
    :math:`\gamma_m` drawn with ``seed``. This estimate is biased *upward* as an estimate of
    :math:`W_1(\nu, \mathcal{N}(0, I))` (by convexity; the bias grows with d, like
    :math:`m^{-1/d}`), so it is not a fair number to compare against in either direction. The
    comparison made is the rigorous one, by the triangle inequality on every slice and because
    projections are 1-Lipschitz:

    .. math::
        SW_1(\nu, \mathcal{N}) \le SW_1(\nu, \nu_m) + W_1(\nu_m, \gamma_m) + SW_1(\gamma_m, \mathcal{N})

    with the two sliced terms computed exactly on the same slices; their sum is ``w1_slack``.

    **The point-mass trap.** :math:`L_{per} \ge \sqrt{2/\pi}` with equality only for a point mass at
    0, whose :math:`SW_1` is also :math:`\sqrt{2/\pi}`, while :math:`L_{per}(\mathcal{N}(0, I)) = 2/\sqrt{\pi}`.
    When the projected spread is small (``projected_std < collapse_std``) and :math:`L_{per}` is below
    its value at the Gaussian, the report is flagged ``collapsed`` with a note: the bound is small
    because the activations spread little (shrunk towards 0, where it nears its floor, or narrow around
    a non-zero mean), not because they are Gaussian; the note gives the true :math:`SW_1`.

    Parameters
    ----------
    X : array_like, shape (n_samples, dim)
    n_projections : int
        Number of slices s (ignored when ``projections`` is given).
    seed : int
        Seed of the slices, the subsample and the Gaussian sample.
    projections : array_like, shape (n_projections, dim), optional
        Unit directions to use instead.
    exact_max_samples : int
        Largest number of rows given to exact OT (dim > 1).
    rtol, atol : float
        Float tolerance of both checks.
    collapse_std : float
        Projected standard deviation below which the activations count as collapsed.

    Returns
    -------
    report : BoundReport

    Example
    -------
    >>> X = np.random.default_rng(0).normal(size=(300, 2))
    >>> report = check_bounds(X, n_projections=32)
    >>> report.passed, report.collapsed, round(report.lper_floor, 3)
    (True, False, 0.798)
    >>> check_bounds(0.01 * X, n_projections=32).collapsed  # L_per near its floor, SW1 large
    True
    """
    X = _samples_2d(X, "X")
    seed = check_seed(seed)
    exact_max_samples = check_positive_int(exact_max_samples, "exact_max_samples")
    for name, v in (("rtol", rtol), ("atol", atol), ("collapse_std", collapse_std)):
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite non-negative number, got {v!r}")
    n, d = X.shape
    P = _resolve_projections(d, n_projections, seed, projections)
    notes: list[str] = []

    # SW1 <= L_per, slice by slice
    sw_slices = sliced_w1_to_normal_slices(X, projections=P)
    lper_slices = per_bound_slices(X, projections=P)
    sw1, lper = float(_mean(sw_slices)), float(_mean(lper_slices))
    excess = sw_slices - lper_slices
    per_slice_ok = bool((excess <= rtol * np.abs(lper_slices) + atol).all())
    if not per_slice_ok:
        notes.append(
            f"SW1 > L_per on {int((excess > rtol * np.abs(lper_slices) + atol).sum())} of {P.shape[0]} "
            "slices: this contradicts Minkowski's inequality (a numerical or implementation problem)"
        )

    # SW1 <= W1
    if d == 1:
        w1_value, slack = w1_to_normal(X[:, 0]), 0.0
        method = "exact 1-D closed form (equals SW1 in dimension 1)"
    else:
        # a stream of its own: data drawn with default_rng(seed) must not be reused as the Gaussian sample
        rng = np.random.default_rng([_RNG_TAG, seed])
        m = min(n, exact_max_samples)
        X_m = X if m == n else X[np.sort(rng.choice(n, size=m, replace=False))]
        gauss = rng.standard_normal((m, d))
        w1_value = w1(X_m, gauss, max_samples=exact_max_samples, seed=seed)
        slack = _mean(sliced_w1_to_normal_slices(gauss, projections=P))
        if m < n:
            slack += sliced_w1(X, X_m, projections=P)
        slack = float(slack)
        method = (
            f"exact OT between {'all' if m == n else f'a subsample of {m} of the'} rows and {m} N(0,I) "
            "points (Monte Carlo, biased upward); slack = SW1(Gaussian sample, N(0,I))"
            + ("" if m == n else " + SW1(rows, subsample)")
        )
    w1_ok = bool(sw1 <= (w1_value + slack) * (1 + rtol) + atol)
    if not w1_ok:
        notes.append(f"SW1 = {sw1:.6g} > W1 + slack = {w1_value + slack:.6g}: this contradicts the theory")

    proj_std = _projected_std(X, P)
    collapsed = bool(proj_std < collapse_std and lper < LPER_AT_GAUSSIAN)
    if collapsed:
        near_floor = lper <= LPER_FLOOR + 0.25 * (LPER_AT_GAUSSIAN - LPER_FLOOR)
        notes.append(
            f"collapsed: the projected spread is small (std {proj_std:.3g}; 1 for N(0,I)) and L_per = {lper:.4g} is "
            f"below its value at N(0,I) (2/sqrt(pi) = {LPER_AT_GAUSSIAN:.4f})"
            + (f", near its floor sqrt(2/pi) = {LPER_FLOOR:.4f} (a point mass at 0)" if near_floor else "")
            + f"; the true SW1 = {sw1:.4g}: a small L_per does not mean the activations are Gaussian"
        )
    if (X == X[0]).all():
        notes.append("all rows are equal (a point mass): SW1 = L_per on every slice (the bound is tight)")
    return BoundReport(
        n_samples=n,
        dim=d,
        n_projections=P.shape[0],
        seed=seed,
        sw1=sw1,
        lper=lper,
        gap=lper - sw1,
        per_slice_max_violation=float(excess.max()),
        per_slice_ok=per_slice_ok,
        w1=float(w1_value),
        w1_method=method,
        w1_slack=slack,
        w1_ok=w1_ok,
        projected_std=proj_std,
        collapsed=collapsed,
        rtol=float(rtol),
        atol=float(atol),
        collapse_std=float(collapse_std),
        notes=tuple(notes),
    )


def _projected_std(X: np.ndarray, P: np.ndarray) -> float:
    """sqrt(mean_j Var_i <x_i, theta_j>) = sqrt(mean_j theta_j^T Cov theta_j).

    Homogeneous of degree 1 in X: computed on X / c (a power of two) so that the squares cannot overflow.
    """
    c = _common_scale(X)
    X = X / c if c != 1.0 else X
    centered = X - X.mean(axis=0)
    cov = centered.T @ centered / X.shape[0]  # (d, d)
    return c * float(math.sqrt(max(0.0, np.einsum("jk,kl,jl->", P, cov, P) / P.shape[0])))


# --- command line: python -m analysis.bounds RUN_DIR ---------------------------------------------


def _add_slice_options(parser: argparse.ArgumentParser) -> None:
    """``--n-projections`` and ``--seed``: the slices of SW1 and L_per, shared by the analysis CLIs."""
    parser.add_argument("--n-projections", type=int, default=256, help="slices for SW1 and L_per (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the slices (default 0)")


def _check_slice_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A one-line usage error (exit 2) naming each slice option out of range and its value."""
    wrong = []
    if args.n_projections < 1:
        wrong.append(f"--n-projections must be >= 1, got {args.n_projections}")
    if not 0 <= args.seed < 2**64:
        wrong.append(f"--seed must be in [0, 2**64), got {args.seed}")
    if wrong:
        parser.error("; ".join(wrong))


def _nonfinite_notes(table: Any) -> list[str]:
    """One line per (run, split, layer) whose reservoirs held rows with a NaN or inf: the epochs and counts."""
    hit = table[table["nonfinite_rows"] > 0]
    notes = []
    for (run, split, layer), g in hit.groupby(["run", "split", "layer"], sort=False):
        rows = zip(g["epoch"], g["nonfinite_rows"], g["rows"], strict=True)
        each = ", ".join(f"{e} ({n} of {n + m})" for e, n, m in rows)
        empty = [str(e) for e, m in zip(g["epoch"], g["rows"], strict=True) if m == 0]
        unchecked = f"; nothing checked at epoch(s) {', '.join(empty)}: no finite row" if empty else ""
        notes.append(
            f"run {run}, split {split}, layer {layer}: reservoir rows with NaN or inf left out at epoch(s) {each}"
            f"{unchecked} (the run diverged or overflowed there)"
        )
    return notes


def _summary(path: str, table: Any, violations: int) -> list[str]:
    """The stdout lines of one path: what was counted, the violations, and the collapsed rows per run."""
    unchecked = int((table["rows"] == 0).sum())
    table = table[table["rows"] > 0]
    runs = list(dict.fromkeys(table["run"].astype(str)))
    methods = dict(zip(table["run"].astype(str), table["method"].astype(str), strict=True))
    splits = "+".join(dict.fromkeys(table["split"].astype(str)))
    per_run = ", ".join(
        f"{run}{'' if methods[run] == run else f' ({methods[run]})'} "
        f"{int(table.loc[table['run'] == run, 'collapsed'].astype(bool).sum())} of {int((table['run'] == run).sum())}"
        for run in runs
    )
    return [
        f"{path}: {len(table)} reservoirs checked, one per (run, split, epoch, layer) "
        f"({len(runs)} run{'s' * (len(runs) != 1)}, splits {splits or 'none'}); {violations} violations"
        + (f"; {unchecked} without a finite row, not checked" if unchecked else ""),
        f"  collapsed (projected std < {COLLAPSE_STD:g} and L_per < 1.128: activations of small spread, shrunk, "
        f"small from the start or narrow around a non-zero mean): {per_run or 'none checked'}",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Check every recorded layer and epoch; write analysis/bounds.csv and analysis/distances.csv per run.

    Exit status: 0 when every check passed, 1 when a bound was violated (reported with its run,
    split, layer and epoch), 2 for user errors (bad path, damaged file, no activations recorded).
    """
    import sys

    from per_core.cli import OneLineArgumentParser, nonempty_path, run_command
    from per_core.rundir import RunDirError

    p = OneLineArgumentParser(  # usage errors: one line, exit 2
        prog="python -m analysis.bounds",
        description="Distances to N(0, I) and the checks SW1 <= L_per, SW1 <= W1 for every recorded layer and epoch.",
        epilog=_TABLES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", type=nonempty_path, help="run directories or sweep directories")
    _add_slice_options(p)
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable files and say which")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    _check_slice_options(p, args)
    from analysis.io import suggest_skip_bad
    from analysis.tables import write_tables

    def body() -> int:
        failed = 0
        for path in args.paths:
            written, table, skipped = write_tables(
                path,
                n_projections=args.n_projections,
                seed=args.seed,
                skip_bad=args.skip_bad,
                progress=not args.no_progress,
            )
            for msg in skipped:
                print(f"skipped: {msg}", file=sys.stderr)
            for msg in _nonfinite_notes(table):
                print(f"note: {msg}", file=sys.stderr)
            bad = table[(table["rows"] > 0) & ~table["passed"].astype(bool)]
            for r in bad.itertuples(index=False):
                what = "SW1 > L_per on a slice" if not r.per_slice_ok else "SW1 > W1 + slack"
                print(
                    f"VIOLATION {what}: run {r.run}, split {r.split}, layer {r.layer}, epoch {r.epoch} "
                    f"(SW1 {r.sw1:.4f}, L_per {r.lper:.4f}, W1 {r.w1:.4f})",
                    file=sys.stderr,
                )
            failed += len(bad)
            print("\n".join(_summary(path, table, len(bad))))
            for w in written:
                print(f"  wrote {w}")
        return 1 if failed else 0

    return run_command(
        suggest_skip_bad(body, args.skip_bad), debug=args.debug, errors=(RunDirError, ValueError, OSError)
    )


if __name__ == "__main__":
    raise SystemExit(main())
