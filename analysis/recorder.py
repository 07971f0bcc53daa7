r"""ActivationRecorder: forward hooks -> streaming per-unit statistics of layer outputs.

A layer's output becomes rows with :func:`per_core.as_samples` (conv: every spatial location of
every image is a row of the C channels; LSTM/GRU: every time step is a row of the H hidden units);
the *units* are the columns. For every epoch, split and layer the recorder keeps, per unit:

- a histogram over fixed edges shared by all units, layers and epochs; bins are left-closed,
  :math:`[e_j, e_{j+1})`, except the last, :math:`[e_{n-1}, e_n]` (``numpy.histogram``'s rule);
- ``under`` (finite :math:`x < e_0`) and ``over`` (finite :math:`x > e_n`) counts;
- ``nan``, ``posinf`` and ``neginf`` counts, never in the histogram or the moments. A float64
  magnitude above float32's maximum (3.4e38) counts as infinite: that is what it is once stored
  as float32 (the reservoir's dtype), and it keeps every power sum below finite float64 range;
- ``count`` (finite values), ``min`` and ``max`` of the finite values;
- shifted power sums :math:`S_p = \sum (x - c)^p`, p = 1..4, in float64, over the finite values,
  with a per-unit shift :math:`c` = the mean of the unit's finite values in the first recorded batch
  of the epoch that has any (0 while it has none). The
  shift removes the cancellation that raw sums suffer when :math:`|\bar x| \gg \sigma`; with
  :math:`|x - c| \le 6.8 \cdot 10^{38}`, :math:`S_4` stays finite for up to :math:`10^{150}` rows.
  With :math:`a_p = S_p / n` (:func:`moments_from_sums`):

  .. math::
      \bar x = c + a_1, \quad m_2 = a_2 - a_1^2, \quad
      m_3 = a_3 - 3 a_1 a_2 + 2 a_1^3, \quad m_4 = a_4 - 4 a_1 a_3 + 6 a_1^2 a_2 - 3 a_1^4,

  .. math::
      \mathrm{var} = m_2, \qquad \mathrm{skew} = m_3 / m_2^{3/2}, \qquad
      \mathrm{kurt} = m_4 / m_2^2 - 3

  (population moments: numpy's ``var``, scipy's ``skew`` and Fisher ``kurtosis`` with
  ``bias=True``);
- a reservoir of k *joint* rows (k x units), a uniform sample without replacement of the rows
  seen in the epoch: every row gets an independent U(0, 1) key from the recorder's own generator
  and the k smallest keys are kept, so each of the n rows is kept with probability

  .. math::
      P(\text{row kept}) = \min(k, n) / n .

All accumulators are sums (plus min/max and "k smallest keys"), so merging two recorders, e.g. two
data-parallel ranks (give each rank its own ``seed``), is elementwise: :meth:`ActivationRecorder.merge`.
Everything is reduced on the activations' device, without host synchronization on CUDA: a layer's
output is viewed as (A, U, B) (conv: (N, C, H*W)), never copied into rows; a value's bucket is found
by arithmetic on the uniform edges, exactly (``_BucketTable``; ``bucketize`` only where the
range is too narrow for that), and counted with ``bincount`` on the CPU and ``index_add_`` elsewhere
(``torch.bincount`` synchronizes on CUDA to size its output, ``torch.histc`` fails in deterministic
mode). On the CPU, where a host sync is free, a batch whose values are all finite skips every mask.

Splits: ``train`` records the forwards of modules in training mode between :meth:`start_epoch`
and :meth:`end_epoch`; ``eval`` records every forward inside :meth:`eval_pass` (e.g. a fixed batch,
model in eval mode, under ``no_grad``). Nothing else is recorded.

The file ``RUN_DIR/activations/epoch_NNNN.npz`` (part of the run-directory contract, version
:data:`RECORDER_FORMAT`)::

    format_version               int64 ()         RECORDER_FORMAT
    epoch                        int64 ()
    edges                        float64 (bins+1,) shared histogram edges
    layers                       str (L,)         layer labels, in depth order
    reservoir_k                  int64 ()         configured reservoir size k
    count_fields                 str (6,)         COUNT_FIELDS: count under over nan posinf neginf
    sum_fields                   str (5,)         SUM_FIELDS: shift sum1 sum2 sum3 sum4
    {split}/{layer}/hist         int64 (U, bins)  split in {train, eval}; U units
    {split}/{layer}/counts       int64 (U, 6)     columns COUNT_FIELDS
    {split}/{layer}/sums         float64 (U, 5)   columns SUM_FIELDS: c and S_1..S_4
    {split}/{layer}/minmax       float64 (U, 2)   min, max of the finite values (+inf, -inf if none)
    {split}/{layer}/reservoir       float32 (m, U)  m = min(k, rows), rows sorted by key
    {split}/{layer}/reservoir_keys  float64 (m,)    ascending (only at reservoir epochs)

The per-unit fields are packed into four arrays per block because every npz entry costs about
0.1 ms to read; :func:`layer_stats` unpacks them by name. A (split, layer) that saw no forward in
the epoch has no entries. Every unit of a layer sees the same rows: ``count + nan + posinf + neginf``.

Budget: 40 bins of width 1/2 on [-10, 10] (the defaults) and k = 256 reservoir rows, recorded the
way ``per_core.train`` does it: one train batch in ``record_train_every``, the fixed eval batch, a
reservoir of both splits at epochs divisible by ``record_reservoir_every`` and at the last epoch.
The paper's 11-layer CNN records 10 conv layers of 192,192,240,240,260,260,280,280,300,300 = 2544
units. Per epoch and split, the 7 float64 numbers per unit (shift, S1..S4, min, max) are 2544 x 7 x
8 B = 142 KB and barely compress; the histograms, 2544 x 40 int64 = 0.8 MB raw, compress to about
0.15 MB: about 0.6 MB per recorded epoch for both splits. A reservoir epoch adds 256 x 2544 x 4 B =
2.6 MB of incompressible float32 per split, 5.2 MB for both. A Table 2 preset (165 epochs, every 5th
recorded, reservoirs every 20th and at the last: 33 epochs, 9 with reservoirs) writes about 63 MB,
under the 200 MB budget; with a reservoir at every recorded epoch it would be 180 MB, and 200
recorded epochs with reservoirs 1.1 GB. ``test_budget_of_the_table2_runs_with_the_trainers_recorder``
measures it with the trainer's recorder on synthetic CIFAR-sized counts.

Cost: per recorded element about 20 passes of simple arithmetic (bucket, count, min/max, four float64
power sums) over slices of 2^19 elements that stay in cache: 1.5-1.8 ns per element on a 2-core CPU
(the bucketize version before: 23 ns). A recorded training step costs 1.15x an unrecorded one for
the 11-layer CNN at batch 250 and 1.5-1.65x for the demo net, whose 3 ms step has small convs and
about 0.8 M recorded elements. Record one train batch in ``train_every`` (the trainer: 50): the
statistics then describe that sample of the epoch's batches, the reservoir stays uniform over the
rows recorded, and a recorded epoch costs 1.02x per step for both nets
(``bench/recorder.py``, ``bench/RESULTS.md`` goal 5).

References
----------
.. [1] Joo, T., Kang, D., Kim, B. "Regularizing activations in neural networks via
   distribution matching with the Wasserstein metric", ICLR 2020, arXiv:2002.05366.
.. [2] Vitter, J. S. "Random sampling with a reservoir", ACM TOMS 11 (1985).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from per_core.checks import check_optional_positive_int, check_seed, device_available, is_integer
from per_core.inplace import in_backward
from per_core.rundir import RunDir
from per_core.samples import Layout, check_layout, choose_layout, resolve_layout, with_batch_axis

__all__ = [
    "COUNT_FIELDS",
    "RECORDABLE",
    "RECORDER_FORMAT",
    "SPLITS",
    "SUM_FIELDS",
    "ActivationRecorder",
    "layer_stats",
    "moments_from_sums",
]

#: Version of the activation npz layout described in the module docstring.
RECORDER_FORMAT = 1
SPLITS = ("train", "eval")
#: Modules recorded by ``layers="all"`` when the model has no ``pre_activations()``.
RECORDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.LSTM, nn.GRU)
_FLT_MAX = float(torch.finfo(torch.float32).max)
#: Default ``chunk_elements`` on the CPU (the float64 temporaries of a slice stay in cache) and elsewhere.
CPU_CHUNK_ELEMENTS, DEVICE_CHUNK_ELEMENTS = 1 << 19, 1 << 22
#: Columns of ``{split}/{layer}/counts`` and ``{split}/{layer}/sums`` (also stored in every file).
COUNT_FIELDS = ("count", "under", "over", "nan", "posinf", "neginf")
SUM_FIELDS = ("shift", "sum1", "sum2", "sum3", "sum4")


def moments_from_sums(
    count: np.ndarray,
    shift: np.ndarray,
    sum1: np.ndarray,
    sum2: np.ndarray,
    sum3: np.ndarray,
    sum4: np.ndarray,
) -> dict[str, np.ndarray]:
    r"""Mean, variance, skewness and excess kurtosis from shifted power sums (see module docstring).

    Parameters
    ----------
    count : ndarray, shape (U,)
        Number of finite values n.
    shift : ndarray, shape (U,)
        The shift c.
    sum1, sum2, sum3, sum4 : ndarray, shape (U,)
        :math:`S_p = \sum (x - c)^p`.

    Returns
    -------
    moments : dict of ndarray, shape (U,)
        ``mean``, ``var`` (ddof 0), ``skew`` and ``kurt`` (Fisher, excess). NaN where ``count``
        is 0; skew and kurt are NaN where the variance is zero up to rounding, as in scipy.

    Example
    -------
    >>> x, c = np.array([0.0, 2.0, 4.0]), 1.0  # shift by any c
    >>> sums = [np.array([((x - c) ** p).sum()]) for p in (1, 2, 3, 4)]
    >>> {k: round(float(v[0]), 4) for k, v in moments_from_sums(np.array([3]), np.array([c]), *sums).items()}
    {'mean': 2.0, 'var': 2.6667, 'skew': 0.0, 'kurt': -1.5}
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        n = np.asarray(count, dtype=np.float64)
        a1, a2, a3, a4 = (np.asarray(s, dtype=np.float64) / n for s in (sum1, sum2, sum3, sum4))
        m2 = np.maximum(a2 - a1 * a1, 0.0)
        m3 = a3 - 3 * a1 * a2 + 2 * a1**3
        m4 = a4 - 4 * a1 * a3 + 6 * a1 * a1 * a2 - 3 * a1**4
        mean = np.asarray(shift, dtype=np.float64) + a1
        degenerate = m2 <= (np.finfo(np.float64).eps * mean) ** 2  # scipy's rule for constant data
        skew = np.where(degenerate, np.nan, m3 / m2**1.5)
        kurt = np.where(degenerate, np.nan, m4 / (m2 * m2) - 3.0)
    return {"mean": mean, "var": m2, "skew": skew, "kurt": kurt}


def layer_stats(arrays: Mapping[str, np.ndarray], split: str, layer: str) -> dict[str, np.ndarray]:
    r"""Named per-unit fields of one (split, layer) of a snapshot or an activation file, with moments.

    Parameters
    ----------
    arrays : mapping of str -> ndarray
        :meth:`ActivationRecorder.snapshot` or the contents of an ``epoch_NNNN.npz``.
    split, layer : str
        Which block.

    Returns
    -------
    fields : dict of str -> ndarray
        ``hist`` (U, bins); :data:`COUNT_FIELDS`, :data:`SUM_FIELDS`, ``min``, ``max`` and the
        :func:`moments_from_sums` (``mean``, ``var``, ``skew``, ``kurt``), each (U,); ``reservoir``
        (m, U) and ``reservoir_keys`` (m,) when recorded.
    """
    p = f"{split}/{layer}/"
    if p + "counts" not in arrays:
        there = sorted({k.rsplit("/", 1)[0] for k in arrays if k.count("/") == 2})
        raise KeyError(f"no {split}/{layer} statistics; recorded: {there}")
    out = {"hist": arrays[p + "hist"]}
    out.update(zip(COUNT_FIELDS, arrays[p + "counts"].T, strict=True))
    out.update(zip(SUM_FIELDS, arrays[p + "sums"].T, strict=True))
    out["min"], out["max"] = arrays[p + "minmax"].T
    out.update(moments_from_sums(*(out[f] for f in ("count", *SUM_FIELDS))))
    out.update({f: arrays[p + f] for f in ("reservoir", "reservoir_keys") if p + f in arrays})
    return out


class _Stats:
    """Accumulators of one (split, layer): sums, min/max and the reservoir's k smallest keys."""

    def __init__(self, units: int, bins: int, device: torch.device) -> None:
        if units * (bins + 5) >= 2**31:
            raise ValueError(f"{units} units x {bins + 5} buckets exceed the int32 bucket index")
        self.units, self.bins = units, bins
        # buckets per unit: 0 -inf | 1 under | 2..bins+1 histogram | bins+2 over | bins+3 +inf | bins+4 nan
        self.counts = torch.zeros(units * (bins + 5), dtype=torch.int64, device=device)
        self.shift = torch.zeros(units, dtype=torch.float64, device=device)
        self.shifted = False  # set by the first batch (a Python flag: no device sync)
        self.unset: Tensor | None = None  # (U,) bool: units that have seen no finite value yet, if any may have
        self.sums = torch.zeros(4, units, dtype=torch.float64, device=device)  # S_1..S_4
        self.min = torch.full((units,), math.inf, dtype=torch.float64, device=device)
        self.max = torch.full((units,), -math.inf, dtype=torch.float64, device=device)
        self.keys = torch.empty(0, dtype=torch.float64, device=device)
        self.rows = torch.empty(0, units, dtype=torch.float32, device=device)

    def _n(self) -> Tensor:
        return self.counts.view(self.units, -1)[:, 1 : self.bins + 3].sum(1).to(torch.float64)

    def reshifted(self, new_shift: Tensor) -> Tensor:
        r"""The power sums about ``new_shift``: :math:`\sum_j \binom{p}{j} \delta^{p-j} S_j`."""
        delta = self.shift - new_shift
        s = torch.cat([self._n()[None], self.sums])  # S_0 = n, S_1..S_4
        return torch.stack([sum(math.comb(p, j) * delta ** (p - j) * s[j] for j in range(p + 1)) for p in range(1, 5)])

    def keep_smallest(self, keys: Tensor, rows: Tensor, k: int) -> None:
        keys, rows = torch.cat([self.keys, keys]), torch.cat([self.rows, rows])  # copies: never a view of an output
        if keys.numel() > k:
            keys, index = torch.topk(keys, k, largest=False, sorted=False)
            rows = rows.index_select(0, index)
        self.keys, self.rows = keys, rows

    def merge_(self, other: _Stats, k: int) -> None:
        if (other.units, other.bins) != (self.units, self.bins):
            raise ValueError(f"cannot merge statistics of {other.units} units into {self.units} units")
        other = other.to(self.counts.device)
        shift = torch.where(self._n() > 0, self.shift, other.shift)
        self.sums = self.reshifted(shift) + other.reshifted(shift)
        self.shift, self.shifted = shift, self.shifted or other.shifted
        self.counts += other.counts
        if self.unset is not None or other.unset is not None:
            self.unset = self._n() == 0
        self.min, self.max = torch.minimum(self.min, other.min), torch.maximum(self.max, other.max)
        self.keep_smallest(other.keys, other.rows, k)

    def to(self, device: torch.device) -> _Stats:
        if device == self.counts.device:
            return self
        out = _Stats.__new__(_Stats)
        out.__dict__ = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in self.__dict__.items()}
        return out

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The npz entries of this (split, layer); fresh numpy arrays (CPU tensors would share memory)."""
        c, b = self.counts.view(self.units, -1).cpu().numpy(), self.bins
        columns = {"count": c[:, 1 : b + 3].sum(1), "under": c[:, 1], "over": c[:, b + 2]}
        columns.update(nan=c[:, b + 4], posinf=c[:, b + 3], neginf=c[:, 0])
        out = {
            "hist": np.array(c[:, 2 : b + 2]),
            "counts": np.stack([columns[f] for f in COUNT_FIELDS], axis=1),
            "sums": torch.cat([self.shift[:, None], self.sums.T], dim=1).cpu().numpy(),
            "minmax": torch.stack([self.min, self.max], dim=1).cpu().numpy(),
        }
        if self.keys.numel():
            order = torch.argsort(self.keys)
            out["reservoir"], out["reservoir_keys"] = self.rows[order].cpu().numpy(), self.keys[order].cpu().numpy()
        return {f"{prefix}/{k}": v for k, v in out.items()}


class _BucketTable:
    r"""How values of one (dtype, device) are put into buckets (bucket layout in :class:`_Stats`).

    ``bounds`` (bins+3,): :math:`-\max_{f32}`, :math:`e_0 .. e_{n-1}`, the next float after
    :math:`e_n`, the next float after :math:`\max_{f32}`; bucket j holds ``bounds[j-1] <= x <
    bounds[j]`` (what ``bucketize(right=True)`` returns), so ``upper`` (``bounds`` padded to bins+5)
    is every bucket's upper boundary. Three ways to find a value's bucket, fastest first:

    - ``grid``: when :math:`1/w` is a power of two :math:`\ge 1` and every edge is an integer
      multiple of w (the default: w = 1/2 on [-10, 10]), :math:`\lfloor x/w \rfloor` is exact, and
      the bucket of a finite value is :math:`\lfloor x/w \rfloor - e_0/w + 2` clamped to
      [1, bins+1], plus one where :math:`x > e_n` (the last bin is closed);
    - ``scale``/``offset``: the guess :math:`\lfloor x s + o \rfloor` with :math:`s = 1/w`,
      :math:`o = 3/2 - e_0/w`, clamped to [0, bins+2] (NaN: bins+4), is the true bucket or the one
      below it when its rounding plus the edges' distance from a uniform grid stays under half a
      bucket on the range and the under/overflow buckets are at least a bin wide (a range ending
      within a bin of :math:`\pm\max_{f32}` is not; checked here; None otherwise). The guess is monotone
      in x, so this then holds for every x, and one comparison with ``upper[guess]`` makes it exact;
    - otherwise ``bucketize`` (a binary search, ~10x slower).
    """

    def __init__(self, edges: Tensor, dtype: torch.dtype, device: torch.device) -> None:
        e = edges.to(dtype)
        top = torch.tensor([e[-1].item(), _FLT_MAX], dtype=dtype)
        top = torch.nextafter(top, torch.full_like(top, math.inf))  # x >= next(e_n) <=> x > e_n
        bounds = torch.cat([torch.tensor([-_FLT_MAX], dtype=dtype), e[:-1], top])
        upper = torch.cat([bounds, torch.full((2,), math.inf, dtype=dtype)])
        self.bounds, self.upper = (t.to(device, non_blocking=True) for t in (bounds, upper))
        e64 = edges.tolist()
        n, lo, hi = len(e64) - 1, e64[0], e64[-1]
        self.last = hi
        w = (hi - lo) / n
        s, o = 1.0 / w, 1.5 - lo / w
        # grid: x * s is exact (a power of two >= 1: no rounding, no underflow), the edges are integers
        inv = round(s)
        on_grid = inv >= 1 and inv & (inv - 1) == 0 and all(v * inv == lo * inv + j for j, v in enumerate(e64))
        self.grid: tuple[int, int] | None = None  # (1/w, e_0/w)
        if on_grid and float(lo * inv).is_integer() and abs(lo * inv) + n < 2**22:
            self.grid = (inv, int(lo * inv))
        s_d, o_d = (torch.tensor(v, dtype=dtype).item() for v in (s, o))  # as the kernels see them
        eps, big = torch.finfo(dtype).eps, max(abs(lo), abs(hi)) + w
        rounding = big * abs(s_d - s) + abs(o_d - o) + 2 * eps * (2 * big * s + abs(o) + 1)
        off_grid = max(abs(v - (lo + j * w)) for j, v in enumerate(e64)) / w + 1e-9
        # the guess is at most one bucket low only if the under/overflow buckets are a bin wide or more
        wide_ends = -_FLT_MAX <= lo - w and hi + w <= _FLT_MAX
        self.scale: float | None = s_d if rounding + off_grid < 0.25 and wide_ends else None  # < 0.5 needed
        self.offset = o_d


def _units_in_middle(h: Tensor, channels_first: bool) -> Tensor:
    """``h`` as (A, U, B) whose rows (those of :func:`per_core.as_samples`) are the pairs (a, b) in order.

    A conv output (N, C, *S) becomes (N, C, prod(S)), a view of a contiguous tensor: no transposed
    copy; channels-last memory and features-last outputs become rows (N', U, 1).
    """
    if channels_first:
        if h.is_contiguous() or not h.movedim(1, -1).is_contiguous():
            return h.reshape(h.shape[0], h.shape[1], -1)  # (N, C, *S) -> (N, C, L)
        h = h.movedim(1, -1)  # channels-last memory: (N, *S, C) is contiguous
    return h.reshape(-1, h.shape[-1])[:, :, None]  # (..., U) -> (N', U, 1)


def _per_unit(t: Tensor, op: str) -> Tensor:
    """Reduce (..., A, U, B) to (..., U) with ``op`` (sum, amin, amax) in the order that vectorizes on a CPU."""
    if t.shape[-1] >= 64:
        return getattr(t, op)((-3, -1))
    return getattr(getattr(t, op)(-3), op)(-1)  # short rows: over A first, contiguous (U, B) blocks


def _resolve_layers(model: nn.Module, layers: str | Sequence[str] | Mapping[str, nn.Module]) -> dict[str, nn.Module]:
    if isinstance(layers, str) and layers == "all":
        if callable(getattr(model, "pre_activations", None)):
            named = dict(model.pre_activations())
        else:
            # the model itself (name '') is labelled by its class, as PER labels a single module
            named = {name or type(m).__name__: m for name, m in model.named_modules() if isinstance(m, RECORDABLE)}
        if not named:
            raise ValueError(f"layers='all': {type(model).__name__} has no Linear/Conv/LSTM/GRU module")
    elif isinstance(layers, Mapping):
        named = dict(layers)
    else:
        pre = dict(model.pre_activations()) if callable(getattr(model, "pre_activations", None)) else {}
        modules = {**dict(model.named_modules()), **pre}  # a pre-activation label wins over a module name
        names = [layers] if isinstance(layers, str) else list(layers)
        unknown = [n for n in names if n not in modules]
        if unknown:
            available = list(pre) or sorted(n for n in modules if n)
            more = " (or any name from model.named_modules())" if pre else ""
            raise ValueError(f"unknown layer names {unknown}; available: {', '.join(available)}{more}")
        named = {n: modules[n] for n in names}
    if not named:
        raise ValueError("ActivationRecorder needs at least one layer")
    for label, module in named.items():
        if not isinstance(label, str) or not label or "/" in label:
            raise ValueError(f"layer labels must be non-empty strings without '/', got {label!r}")
        if not isinstance(module, nn.Module):
            raise TypeError(f"layer {label!r} is a {type(module).__name__}, not an nn.Module")
    return named


class ActivationRecorder:
    r"""Record per-unit activation statistics of chosen layers, epoch by epoch (see module docstring).

    Parameters
    ----------
    model : nn.Module
        The model whose layers are hooked.
    layers : "all", list of str, or dict of str -> nn.Module
        ``"all"``: ``model.pre_activations()`` if the model defines it, else every
        Linear/Conv1d/2d/3d/LSTM/GRU module; a list: labels of ``model.pre_activations()``
        (``"layer3"``, as the trainer's ``--record`` takes them) or names from
        ``model.named_modules()``; the name is the label; a dict: label -> module.
    bins : int
        Number of histogram bins between ``range[0]`` and ``range[1]``.
    range : tuple of float
        Histogram range. Edges are rounded to float32 so float32 activations are binned exactly as
        ``numpy.histogram(x, edges)`` would. The default [-10, 10] with 40 bins has width 1/2,
        exact in every float type, and shows tails to 10 standard deviations of a unit-variance
        layer within the 200 MB budget (module docstring); values outside count as under/over.
    reservoir : int
        Rows k kept per (split, layer) at reservoir epochs; 0 disables the reservoir.
    reservoir_every : int
        Reservoir epochs are those with ``epoch % reservoir_every == 0`` (override per epoch with
        ``start_epoch(epoch, reservoir=...)``).
    reservoir_splits : tuple of str
        Splits that keep a reservoir (default: train, the rows the regularizer sees).
    train_every : int
        Record one in ``train_every`` train-mode forwards of each layer (the first, then every
        ``train_every``-th); 1 records all. The eval split is always recorded in full.
    seed : int
        Seed of the recorder's own generators (one per device); use a different seed per rank.
    chunk_elements : int or None
        A layer output is processed in slices of about this many elements (bounds temporary memory:
        about 50 bytes per element; a slice holds at least one sample). None: 2^19 on the CPU, where
        the slice's temporaries stay in cache (3x faster than 2^24) and are kept between batches
        (about 23 MB, until :meth:`remove`), and 2^22 elsewhere.
    layout : {None, 'auto', 'features_last', 'channels_first'} or mapping label -> one of those
        How outputs become rows of units, as for :class:`per_core.PER`: a single value decides for
        the modules whose type says nothing about their layout (activations, ``Identity``), a
        mapping for the layers it names, whatever their type. None (default): from each type.

    Example
    -------
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.ELU(), nn.Linear(4, 2))
    >>> x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    >>> with ActivationRecorder(net, ["0"], bins=8, range=(-4.0, 4.0), reservoir=5) as rec:
    ...     rec.start_epoch(0)
    ...     _ = net(x)
    ...     rec.end_epoch()
    ...     arrays = rec.snapshot()
    >>> fields = layer_stats(arrays, "train", "0")
    >>> fields["hist"].shape, fields["count"].tolist(), fields["reservoir"].shape
    ((4, 8), [10, 10, 10, 10], (5, 4))
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | Sequence[str] | Mapping[str, nn.Module] = "all",
        *,
        bins: int = 40,
        range: tuple[float, float] = (-10.0, 10.0),  # numpy's name
        reservoir: int = 256,
        reservoir_every: int = 20,
        reservoir_splits: Sequence[str] = ("train",),
        train_every: int = 1,
        seed: int = 0,
        chunk_elements: int | None = None,
        layout: Layout | Mapping[str, Layout] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module (the network to record), got {type(model).__name__}")
        try:
            lo, hi = (float(v) for v in range)
        except (TypeError, ValueError):
            raise ValueError(f"range must be two finite numbers (lo, hi) with lo < hi, got {range!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"range must be two finite numbers (lo, hi) with lo < hi, got {range!r}")
        for name, value, least in (
            ("bins", bins, 1),
            ("reservoir", reservoir, 0),
            ("reservoir_every", reservoir_every, 1),
            ("train_every", train_every, 1),
        ):
            if not is_integer(value) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        check_seed(seed)
        chunk_elements = check_optional_positive_int(chunk_elements, "chunk_elements", "the device's default")
        if not set(reservoir_splits) <= set(SPLITS):
            raise ValueError(f"reservoir_splits must be a subset of {SPLITS}, got {reservoir_splits!r}")
        self.bins, self.reservoir, self.reservoir_every = bins, reservoir, reservoir_every
        self.reservoir_splits = tuple(reservoir_splits)
        self.train_every, self.seed, self.chunk_elements = train_every, seed, chunk_elements
        edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64).float()
        if not bool((edges[1:] > edges[:-1]).all()):
            raise ValueError(f"{bins} bins on {range!r} are narrower than float32 resolution")
        self.edges = edges.double()  # (bins+1,), exactly representable in float32
        self._last_edge = float(edges[-1])
        self.modules = _resolve_layers(model, layers)
        self.layers = list(self.modules)
        self.layout = check_layout(layout, self.layers)
        self.epoch: int | None = None
        self._train = self._eval = self._reservoir_now = False
        self._stats: dict[tuple[str, str], _Stats] = {}
        self._calls: dict[str, int] = {}  # train-mode forwards seen per layer this epoch
        self._tables: dict[tuple[torch.dtype, torch.device], _BucketTable] = {}
        self._generators: dict[torch.device, torch.Generator] = {}
        self._buffers: dict[tuple[str, torch.dtype], tuple[Tensor, Tensor]] = {}  # CPU scratch (_scratch)
        self._unit_offsets: dict[tuple[int, torch.device, int], Tensor] = {}
        self._handles = [m.register_forward_hook(self._hook(n, m)) for n, m in self.modules.items()]

    # -- epochs and splits ----------------------------------------------------------------------
    def start_epoch(self, epoch: int, *, reservoir: bool | None = None) -> None:
        """Clear the statistics and record train-mode forwards for ``epoch`` (reservoir: see class)."""
        if not is_integer(epoch) or epoch < 0:
            raise ValueError(f"epoch must be an integer >= 0, got {epoch!r}")
        self._stats.clear()
        self._calls.clear()
        self.epoch, self._train = int(epoch), True
        self._reservoir_now = self.reservoir > 0 and (
            self.epoch % self.reservoir_every == 0 if reservoir is None else bool(reservoir)
        )

    def end_epoch(self) -> None:
        """Stop recording train-mode forwards; the statistics stay until saved or restarted."""
        self._train = False

    @contextmanager
    def eval_pass(self) -> Iterator[ActivationRecorder]:
        """Record every forward inside the block into this epoch's ``eval`` statistics."""
        if self.epoch is None:
            raise RuntimeError("eval_pass() records into the current epoch: call start_epoch(epoch) first")
        previous, self._eval = self._eval, True
        try:
            yield self
        finally:
            self._eval = previous

    def reset(self) -> None:
        """Forget the epoch and its statistics (the generators keep their state)."""
        self._stats.clear()
        self.epoch, self._train, self._eval = None, False, False

    # -- hooks ----------------------------------------------------------------------------------
    def _hook(self, label: str, module: nn.Module):
        def forward_hook(mod: nn.Module, args: tuple, out: object) -> None:
            if in_backward():
                return  # a forward inside backward: gradient checkpointing recomputing rows already recorded
            if self._eval:
                split = "eval"
            elif self._train and mod.training:
                calls = self._calls[label] = self._calls.get(label, 0) + 1
                if (calls - 1) % self.train_every:
                    return
                split = "train"
            else:
                return
            h = out[0] if isinstance(out, tuple) else out
            if isinstance(h, PackedSequence):
                h = h.data  # (sum of lengths, H): already rows
            if not isinstance(h, Tensor) or not h.is_floating_point():
                raise TypeError(f"ActivationRecorder: layer {label!r} output is not a floating-point tensor")
            if h.numel() == 0:  # an empty batch: nothing to count (its units appear with the first real batch)
                return
            # not in inference mode even under torch.inference_mode(): the statistics and scratch buffers
            # live across passes and are updated in place, which an inference tensor refuses
            with torch.inference_mode(False), torch.no_grad():
                v = with_batch_axis(mod, h.detach())  # unbatched: a batch of one
                self._record(split, label, v, choose_layout(mod, v.ndim, label, self.layout))

        return forward_hook

    def _record(self, split: str, label: str, h: Tensor, layout: str) -> None:
        if h.ndim < 2:
            raise ValueError(f"layer {label!r}: output of shape {tuple(h.shape)} has no unit dimension")
        channels_first = resolve_layout(tuple(h.shape), layout) == "channels_first"
        dtype = torch.float64 if h.dtype == torch.float64 else torch.float32
        chunk = self.chunk_elements or (CPU_CHUNK_ELEMENTS if h.device.type == "cpu" else DEVICE_CHUNK_ELEMENTS)
        step = max(1, chunk // max(1, h[0].numel()))
        keep = self._reservoir_now and split in self.reservoir_splits
        for i in range(0, h.shape[0], step):
            x = _units_in_middle(h[i : i + step], channels_first).to(dtype)  # (A, U, B): rows are (a, b)
            stats = self._stats.get((split, label))
            if stats is None:
                stats = self._stats[split, label] = _Stats(x.shape[1], self.bins, x.device)
            elif stats.units != x.shape[1] or stats.counts.device != x.device:
                raise ValueError(
                    f"layer {label!r}: {x.shape[1]} units on {x.device}, earlier batches had "
                    f"{stats.units} on {stats.counts.device}"
                )
            self._update(stats, x, keep)

    def _table(self, dtype: torch.dtype, device: torch.device) -> _BucketTable:
        key = (dtype, device)
        if key not in self._tables:
            self._tables[key] = _BucketTable(self.edges, dtype, device)
        return self._tables[key]

    def _scratch(self, name: str, like: Tensor, dtype: torch.dtype, shape: tuple[int, ...] | None = None) -> Tensor:
        """An uninitialized tensor of ``shape`` (default ``like``'s) on ``like``'s device; on the CPU the
        same memory every batch.

        Fresh multi-megabyte temporaries on the CPU go back to the OS when freed and page-fault in
        again at the next batch (glibc), which cost the demo net's first layer 4x its arithmetic.
        """
        shape = like.shape if shape is None else torch.Size(shape)
        if like.device.type != "cpu":
            return torch.empty(shape, dtype=dtype, device=like.device)
        buf, view = self._buffers.get((name, dtype), (None, None))
        if view is not None and view.shape == shape:
            return view
        if buf is None or buf.numel() < shape.numel():
            buf = torch.empty(shape.numel(), dtype=dtype)
        view = buf[: shape.numel()].view(shape)
        self._buffers[name, dtype] = buf, view
        return view

    def _offsets(self, units: int, device: torch.device, bucket: int) -> Tensor:
        """(U, 1) int32: unit * (bins+5) + ``bucket``, the flat index of that bucket of every unit."""
        key = (units, device, bucket)
        if key not in self._unit_offsets:
            nb = self.bins + 5
            offsets = torch.arange(0, units * nb, nb, dtype=torch.int32, device=device) + bucket
            self._unit_offsets[key] = offsets[:, None]
        return self._unit_offsets[key]

    def _buckets(self, x: Tensor, finite: bool, over: bool = True) -> Tensor:
        """unit * (bins+5) + the bucket of every value of ``x`` (A, U, B): int32 (see :class:`_BucketTable`).

        ``finite``: every value is known to be finite in float32 (no NaN, inf or float64 beyond);
        ``over``: some value may be above the last edge.
        """
        tab, top, units = self._table(x.dtype, x.device), self.bins + 2, x.shape[1]
        k, step = self._scratch("bucket", x, torch.int32), self._scratch("step", x, torch.int32)
        if finite and tab.grid is not None:
            inv, first = tab.grid  # 1/w and e_0/w, integers
            g = torch.mul(x, inv, out=self._scratch("guess", x, x.dtype))
            k.copy_(g.floor_().clamp_(first - 1, first + self.bins - 1))  # exact: x * inv is not rounded
            if over:
                k += torch.gt(x, tab.last, out=step)  # over: x > e_n
            return k.add_(self._offsets(units, x.device, 2 - first))
        if tab.scale is None:  # too narrow a range for the guess in this dtype: binary search
            torch.bucketize(x, tab.bounds, right=True, out_int32=True, out=k)
            if not finite:
                k.masked_fill_(x.isnan(), top + 2)
            return k.add_(self._offsets(units, x.device, 0))
        g = torch.mul(x, tab.scale, out=self._scratch("guess", x, x.dtype))
        g.add_(tab.offset).floor_().clamp_(0, top)  # the bucket or the one below
        if not finite:
            g.nan_to_num_(nan=top + 2)  # NaN: bucket bins+4, which no comparison below moves
        k.copy_(g)
        upper = self._scratch("upper", x, x.dtype)  # upper boundary of the guessed bucket
        torch.index_select(tab.upper, 0, k.view(-1), out=upper.view(-1))
        k += torch.ge(x, upper, out=step)  # one up where x >= it: exact
        return k.add_(self._offsets(units, x.device, 0))

    def _update(self, st: _Stats, x: Tensor, keep: bool) -> None:
        a, units, b = x.shape
        n = a * b
        if n == 0:
            return
        cpu = x.device.type == "cpu"
        clean, largest = False, math.inf
        if cpu:  # a host sync is free here: skip every mask when all values are finite
            lo, hi = _per_unit(x, "amin"), _per_unit(x, "amax")  # NaN propagates
            largest = float(hi.max())
            clean = -_FLT_MAX <= float(lo.min()) and largest <= _FLT_MAX
        outside = None
        if not clean:
            outside = ~(x.abs() <= _FLT_MAX)  # NaN, +-inf and float64 beyond float32's range
            lo = _per_unit(torch.where(outside, math.inf, x), "amin")
            hi = _per_unit(torch.where(outside, -math.inf, x), "amax")
        st.min, st.max = torch.minimum(st.min, lo), torch.maximum(st.max, hi)  # promoted to float64

        k = self._buckets(x, finite=clean, over=not largest <= self._last_edge).view(-1)  # unit * (bins+5) + bucket
        if cpu:
            st.counts += torch.bincount(k, minlength=st.counts.numel())  # faster than index_add_ here
        else:  # bincount synchronizes on CUDA to size its output
            st.counts.index_add_(0, k, torch.ones(1, dtype=torch.int64, device=x.device).expand(k.numel()))

        p = self._scratch("powers", x, torch.float64, (4, a, units, b))  # (x - c)^1..4, 0 if not finite
        d = p[0].copy_(x)
        if outside is not None:
            d.masked_fill_(outside, 0.0)
        if not st.shifted or st.unset is not None:  # shift = the unit's mean in its first batch with a finite value
            finite = None if outside is None else _per_unit(~outside, "sum")
            mean = _per_unit(d, "sum") / (n if finite is None else finite.clamp_min(1))
            if not st.shifted:
                st.shift, st.shifted = mean, True
                st.unset = None if finite is None else finite == 0
            else:  # the sums of a unit without finite values are 0: its shift can change freely
                st.shift = torch.where(st.unset, mean, st.shift)
                st.unset = None if finite is None else st.unset & (finite == 0)
            if st.unset is not None and cpu and not bool(st.unset.any()):  # a free sync on the CPU
                st.unset = None
        d -= st.shift[:, None]
        if outside is not None:
            d.masked_fill_(outside, 0.0)
        torch.mul(d, d, out=p[1])
        torch.mul(p[1], d, out=p[2])
        torch.mul(p[1], p[1], out=p[3])
        st.sums += _per_unit(p, "sum")  # (4, U): S_1..S_4 in one reduction
        if keep:
            keys = torch.rand(n, generator=self._generator(x.device), device=x.device, dtype=torch.float64)
            if n > self.reservoir:
                keys, index = torch.topk(keys, self.reservoir, largest=False, sorted=False)
                rows = x[index // b, :, index % b]  # row r is (a, b) = divmod(r, B): (k, U)
            else:
                rows = x.transpose(1, 2).reshape(n, units)  # (A, U, B) -> (A*B, U)
            st.keep_smallest(keys, rows.float(), self.reservoir)

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    # -- results --------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, np.ndarray]:
        """The arrays :meth:`save` writes (schema in the module docstring), as numpy arrays."""
        if self.epoch is None:
            raise RuntimeError("no epoch to snapshot: call start_epoch(epoch) first")
        out: dict[str, np.ndarray] = {
            "format_version": np.int64(RECORDER_FORMAT),
            "epoch": np.int64(self.epoch),
            "edges": self.edges.numpy().copy(),
            "layers": np.array(self.layers, dtype=str),
            "reservoir_k": np.int64(self.reservoir),
            "count_fields": np.array(COUNT_FIELDS),
            "sum_fields": np.array(SUM_FIELDS),
        }
        for (split, label), st in sorted(self._stats.items(), key=lambda kv: self._order(kv[0])):
            out.update(st.arrays(f"{split}/{label}"))
        return out

    def _order(self, key: tuple[str, str]) -> tuple[int, int]:
        return SPLITS.index(key[0]), self.layers.index(key[1])

    def save(self, run_dir: RunDir | str | os.PathLike[str], epoch: int | None = None) -> Path:
        """Write ``RUN_DIR/activations/epoch_NNNN.npz`` atomically; ``epoch`` defaults to the current one."""
        if epoch is not None and epoch != self.epoch:
            raise ValueError(f"save(epoch={epoch}) but the recorded epoch is {self.epoch}")
        rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        arrays = self.snapshot()
        if not self._stats:
            warnings.warn(
                f"ActivationRecorder.save: no layer recorded anything in epoch {self.epoch}; the file holds no "
                "activations. Training passes are recorded only with the model in train mode; record evaluation "
                "passes inside `with recorder.eval_pass():`",
                UserWarning,
                stacklevel=2,
            )
        return rd.write_npz(rd.activation_path(int(arrays["epoch"])), arrays)

    def merge(self, other: ActivationRecorder) -> ActivationRecorder:
        """Add ``other``'s statistics of the same epoch into this recorder (e.g. another rank's)."""
        if not torch.equal(self.edges, other.edges) or self.reservoir != other.reservoir:
            raise ValueError("merge needs recorders with the same edges and reservoir size")
        if self.epoch != other.epoch:
            raise ValueError(f"cannot merge epoch {other.epoch} into epoch {self.epoch}")
        for key, st in other._stats.items():
            if key in self._stats:
                self._stats[key].merge_(st, self.reservoir)
            else:
                self._stats[key] = _Stats(st.units, st.bins, st.counts.device)
                self._stats[key].merge_(st, self.reservoir)
        return self

    __iadd__ = merge

    def reduce_across_ranks(self, splits: Sequence[str] = ("train",)) -> None:
        """Merge every data-parallel rank's statistics of ``splits`` into rank 0's (a collective: call on all ranks).

        Uses ``torch.distributed.all_gather_object`` on the CPU copies of the accumulators, once per
        epoch; a no-op without an initialized process group of more than one rank. Afterwards rank 0
        holds exactly the statistics one process would have recorded on all ranks' rows (counts,
        sums, min/max; the reservoir keeps the k smallest keys over all ranks, still uniform when
        each rank has its own ``seed``). Other ranks keep their own.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        mine = {key: st.to(torch.device("cpu")) for key, st in self._stats.items() if key[0] in splits}
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, mine)
        if dist.get_rank() != 0:
            return
        for rank_stats in gathered[1:]:
            for key, st in rank_stats.items():
                if key not in self._stats:
                    self._stats[key] = _Stats(st.units, st.bins, st.counts.device)
                self._stats[key].merge_(st, self.reservoir)

    # -- resume, removal ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Generator states (exact resume) and the seed; the statistics are per epoch and restart."""
        gens = {str(d): g.get_state() for d, g in self._generators.items()}
        return {"format_version": RECORDER_FORMAT, "seed": self.seed, "generators": gens}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the generator states saved by :meth:`state_dict` (of the devices this process has)."""
        for device, gen_state in state["generators"].items():
            if device_available(device):  # a run moved from a GPU to a CPU-only machine: fresh keys there
                self._generator(torch.device(device)).set_state(gen_state)

    def to_tensorboard(self, writer: Any, epoch: int | None = None) -> None:
        """Log one histogram per (split, layer), summed over units, with ``writer.add_histogram_raw``.

        ``writer`` is a ``torch.utils.tensorboard.SummaryWriter`` (or anything with that method);
        nothing is imported here. Values outside the range are left out of the buckets.
        """
        arrays = self.snapshot()
        step = self.epoch if epoch is None else epoch
        for split, label in sorted(self._stats, key=self._order):
            a = layer_stats(arrays, split, label)
            n = int(a["count"].sum())
            if n == 0:
                continue
            c = a["shift"]
            total = float((a["sum1"] + a["count"] * c).sum())  # sum x = S1 + n c
            squares = float((a["sum2"] + 2 * c * a["sum1"] + a["count"] * c * c).sum())
            writer.add_histogram_raw(
                f"activations/{split}/{label}",
                min=float(a["min"].min()),
                max=float(a["max"].max()),
                num=n,
                sum=total,
                sum_squares=squares,
                bucket_limits=self.edges[1:].tolist(),
                bucket_counts=a["hist"].sum(0).tolist(),
                global_step=step,
            )

    def remove(self) -> None:
        """Remove the hooks; later forwards are not observed."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._buffers.clear()

    def __enter__(self) -> ActivationRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return (
            f"ActivationRecorder(layers={self.layers}, bins={self.bins}, "
            f"range=({self.edges[0].item():g}, {self.edges[-1].item():g}), reservoir={self.reservoir})"
        )
