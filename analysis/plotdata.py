r"""What the figures of :mod:`analysis.plot` draw, as data: which runs, splits, layers, units and epochs
are recorded and chosen, a unit's quantiles and moments over epochs (:func:`unit_evolution`), and the
per-layer :math:`SW_1` against :math:`L_{per}` table (:func:`sw1_table`).

Activation files are read member by member (only the chosen layers' histograms, only the reservoirs of
reservoir epochs), so the cost grows linearly with epochs x layers. Nothing here draws.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import pandas as pd
import torch

from analysis.bounds import COLLAPSE_STD, LPER_AT_GAUSSIAN, per_bound_slices
from analysis.distances import _projections, sliced_w1_to_normal_slices
from analysis.io import RunData, no_activations, skippable
from analysis.quantiles import QUANTILES, bin_width, hist_quantiles
from analysis.recorder import layer_stats
from analysis.style import METHOD_COLORS
from per_core.checks import is_integer
from per_core.rundir import RunDirError

__all__ = ["PlotError", "default_layers", "sw1_table", "unit_evolution"]


class PlotError(ValueError):
    """A figure cannot be drawn from this data: nothing recorded, unknown layer, unit or split."""


class _NoCommonLayerError(PlotError):
    """No layer is recorded by every run (the default layers need one); ``layers_by_run`` says what each has."""

    def __init__(self, message: str, layers_by_run: dict[str, list[str]]) -> None:
        super().__init__(message)
        self.layers_by_run = layers_by_run


# --- what is recorded ---------------------------------------------------------------------------


def _nonfinite_epochs(
    data: RunData, split: str, layers: Sequence[str] | None = None, *, by_unit: bool = False
) -> dict[tuple[Any, ...], list[int]]:
    """Per (run, layer), or per (run, layer, unit) with ``by_unit``: the epochs of ``split`` where NaN or
    +-inf values were recorded (in any unit of the layer, or in that unit)."""
    keys = ["run", "layer", "unit"] if by_unit else ["run", "layer"]
    return {key: g["epoch"].tolist() for key, g in _nonfinite(data, split, layers, by_unit).groupby(keys, sort=False)}


def _nonfinite(data: RunData, split: str, layers: Sequence[str] | None = None, by_unit: bool = False) -> pd.DataFrame:
    """One row per (run, layer, epoch) of ``split`` with NaN or +-inf values recorded (per unit with
    ``by_unit``): ``nan``, ``posinf``, ``neginf`` summed over the layer's units (the recorder leaves
    them out of the histograms, moments and reservoirs)."""
    s = data.stats
    rows = s[(s["split"] == split) & ((s["nan"] + s["posinf"] + s["neginf"]) > 0)]
    if layers is not None:
        rows = rows[rows["layer"].isin(list(layers))]
    frame = pd.DataFrame(
        {
            "run": rows["run"].astype(str),
            "layer": rows["layer"].astype(str),
            **({"unit": rows["unit"].astype(int)} if by_unit else {}),
            "epoch": rows["epoch"].astype(int),
            **{c: rows[c].astype(np.int64) for c in ("nan", "posinf", "neginf")},
        }
    )
    return frame.groupby([*frame.columns[: 4 if by_unit else 3]], sort=True).sum().reset_index()


def _nonfinite_notes(data: RunData, split: str, layers: Sequence[str] | None = None) -> list[str]:
    """One line per run and set of epochs: the layers that recorded NaN/inf values then, with the counts."""
    bad = _nonfinite(data, split, layers)
    lines = []
    order = {layer: k for k, layer in enumerate(_layers_of(data, split))}
    for run, g in bad.groupby("run", sort=True):
        by_epochs: dict[tuple[int, ...], list[str]] = {}
        for layer, gl in g.groupby("layer", sort=False):
            by_epochs.setdefault(tuple(gl["epoch"]), []).append(str(layer))
        for epochs, names in by_epochs.items():
            names.sort(key=lambda n: order.get(n, len(order)))
            sel = g[g["layer"].isin(names)]
            counts = ", ".join(
                f"{int(sel[c].sum())} {word}"
                for c, word in (("nan", "NaN"), ("posinf", "+inf"), ("neginf", "-inf"))
                if sel[c].sum()
            )
            lines.append(
                f"run {run}, {'layer' if len(names) == 1 else 'layers'} {', '.join(names)}: NaN/inf values at "
                f"{_epoch_list(epochs)} in split {split} ({counts} values), left out of the histograms, "
                "moments and reservoirs: those epochs are marked on the x axis"
            )
    return lines


def _epoch_list(epochs: Sequence[int] | np.ndarray) -> str:
    """``epoch 3`` or ``epochs`` and the sorted epochs with runs of consecutive ones joined.

    Example
    -------
    >>> _epoch_list([1, 2, 3, 7, 9, 10]), _epoch_list([4])
    ('epochs 1-3, 7, 9-10', 'epoch 4')
    """
    out: list[str] = []
    for e in sorted({int(x) for x in epochs}):
        if out and out[-1].split("-")[-1] == str(e - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{e}"
        else:
            out.append(str(e))
    return ("epoch " if out == [out[0]] and "-" not in out[0] else "epochs ") + ", ".join(out)


def _recorded(data: RunData) -> pd.DataFrame:
    if data.index.empty:
        raise PlotError(no_activations(data.root, data.skipped))
    return data.index


def _resolve_split(data: RunData, split: str | None, *, reservoir: bool = False) -> str:
    """``split`` checked against what was recorded; default ``eval`` when recorded, else ``train``."""
    index = _recorded(data)
    if reservoir:
        index = index[index["reservoir"] > 0]
    there = [s for s in ("eval", "train") if (index["split"] == s).any()]
    if split is None:
        if not there:
            raise PlotError(
                f"no reservoir rows recorded in {data.root}: SW1 needs them (the recorder keeps them every "
                "reservoir_every-th epoch, 20 by default, and the last: pass reservoir_every=1 or "
                "start_epoch(epoch, reservoir=True))"
            )
        return there[0]
    if split not in there:
        what = "reservoir rows" if reservoir else "activations"
        raise PlotError(f"split {split!r} has no {what} in {data.root}; recorded: {', '.join(there) or 'none'}")
    return split


def _layers_of(data: RunData, split: str) -> list[str]:
    """Layers recorded in ``split``, in depth order: each run's own order (that of its activation
    files) merged by :func:`_merge_orders`, so that runs of different models never interleave."""
    return _merge_orders(list(_layers_by_run(data, split).values()))


def _merge_orders(orders: Sequence[Sequence[str]]) -> list[str]:
    """One order of all names that keeps the order of every sequence in ``orders`` (a topological
    sort); ties, and names whose sequences disagree, go by first appearance.

    Example
    -------
    >>> _merge_orders([["lstm1", "lstm2"], ["layer3"], ["layer1", "layer2", "layer3"]])
    ['lstm1', 'lstm2', 'layer1', 'layer2', 'layer3']
    """
    first = list(dict.fromkeys(name for order in orders for name in order))
    before: dict[str, set[str]] = {name: set() for name in first}  # name -> names that must come first
    for order in orders:
        for a, b in itertools.pairwise(order):
            if a != b:
                before[b].add(a)
    out: list[str] = []
    left = list(first)
    while left:
        ready = next((n for n in left if before[n] <= set(out)), left[0])  # left[0]: a cycle, broken
        out.append(ready)
        left.remove(ready)
    return out


def default_layers(layers: Sequence[str]) -> list[str]:
    """Figure 2's default layers: every third layer (3, 6, 9 as in the paper), at most three.

    Example
    -------
    >>> default_layers([f"layer{i}" for i in range(1, 7)])
    ['layer3', 'layer6']
    >>> default_layers([f"conv{i}" for i in range(10)]), default_layers(["fc1", "fc2"])
    (['conv2', 'conv5', 'conv8'], ['fc1', 'fc2'])
    """
    layers = list(layers)
    return layers[2::3][:3] or layers[:2]


def _layers_by_run(data: RunData, split: str) -> dict[str, list[str]]:
    """Per run that recorded ``split``: its layers in that split, in depth order."""
    index = data.index[data.index["split"] == split]
    return {
        run: list(dict.fromkeys(index.loc[index["run"] == run, "layer"].tolist()))
        for run in data.runs_list
        if (index["run"] == run).any()
    }


def _common_layers(data: RunData, split: str) -> list[str]:
    """Layers recorded in ``split`` by every run that recorded ``split``, in depth order."""
    by_run = _layers_by_run(data, split)
    return [layer for layer in _layers_of(data, split) if all(layer in have for have in by_run.values())]


def _each_runs_layers(by_run: dict[str, list[str]]) -> str:
    """``run: layer, layer; run: layer`` for error messages."""
    return "; ".join(f"{run}: {', '.join(have)}" for run, have in by_run.items())


def _resolve_layers(data: RunData, split: str, layers: str | Sequence[str] | None) -> list[str]:
    """``layers`` checked against the layers recorded by any run; default: :func:`default_layers` of
    the layers that every run recorded (a one-line error naming each run's layers when there are none)."""
    there = _layers_of(data, split)
    if layers is None:
        common = _common_layers(data, split)
        if not common:
            by_run = _layers_by_run(data, split)
            raise _NoCommonLayerError(
                f"the runs recorded no layer in common in split {split} ({_each_runs_layers(by_run)}): "
                "choose layers with --layers or plot the runs separately",
                by_run,
            )
        return default_layers(common)
    layers = [layers] if isinstance(layers, str) else list(layers)  # one layer's name is one layer
    unknown = [layer for layer in layers if layer not in there]
    if unknown or not layers:
        raise PlotError(f"unknown layer {', '.join(map(repr, unknown))} in split {split}; layers: {', '.join(there)}")
    return layers


def _resolve_units(data: RunData, split: str, layers: Sequence[str], units: int | Sequence[int] | None) -> list[int]:
    given = [0] if units is None else list(units) if isinstance(units, Sequence | np.ndarray) else [units]
    if not all(is_integer(u) for u in given):
        raise PlotError(f"units must be integers (unit indices), got {units!r}")
    units = [int(u) for u in given]
    index = data.index[data.index["split"] == split]
    for layer in layers:
        n = int(index.loc[index["layer"] == layer, "units"].min())
        bad = [u for u in units if not 0 <= u < n]
        if bad:
            raise PlotError(f"unit {bad[0]} does not exist in layer {layer}: it has units 0..{n - 1}")
    if not units:
        raise PlotError("no unit given")
    return units


def _method_key(method: str) -> tuple[int, str]:
    order = list(METHOD_COLORS)
    return (order.index(method) if method in order else len(order), method)


def _runs_by_method(data: RunData, runs: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Runs grouped by method (methods in the fixed colour order, runs sorted by label)."""
    runs = data.runs_list if runs is None else list(runs)
    out: dict[str, list[str]] = {}
    for method in sorted({data.methods[r] for r in runs}, key=_method_key):
        out[method] = sorted(r for r in runs if data.methods[r] == method)
    return out


def _runs_with(data: RunData, split: str, *, reservoir: bool = False, layers: Sequence[str] | None = None) -> list[str]:
    """Runs that recorded ``split`` (with reservoir rows; in one of ``layers``), in label order."""
    index = data.index[data.index["split"] == split]
    if layers is not None:
        index = index[index["layer"].isin(list(layers))]
    if reservoir:
        index = index[index["reservoir"] > 0]
    return [r for r in data.runs_list if (index["run"] == r).any()]


# --- reading single members of activation files -------------------------------------------------


class _NpzView:
    """An open npz seen through :func:`layer_stats`: members are decompressed when accessed, and
    the reservoir is hidden unless asked for (it is the largest member)."""

    def __init__(self, npz: Any, reservoir: bool) -> None:
        self.npz, self.reservoir = npz, reservoir

    def __contains__(self, key: str) -> bool:
        return (self.reservoir or "/reservoir" not in key) and key in self.npz.files

    def __getitem__(self, key: str) -> np.ndarray:
        return self.npz[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.npz.files)


def _read(
    data: RunData, run: str, epoch: int, split: str, layers: Sequence[str], *, reservoir: bool = False
) -> tuple[np.ndarray, dict[str, dict[str, np.ndarray]]]:
    """The edges and :func:`layer_stats` of ``layers`` in one activation file, reading only those."""
    rd = data.runs[run]
    path = rd.activation_path(epoch)
    with skippable(), rd.open_npz(path) as npz:  # a member damaged or missing: RunDirError naming the file
        view = _NpzView(npz, reservoir)
        try:
            return npz["edges"], {layer: layer_stats(view, split, layer) for layer in layers}
        except KeyError as err:  # a block gone since load_run read the file
            raise RunDirError(f"{path}: {err.args[0]}") from None


def _epochs(data: RunData, run: str, split: str, layers: Sequence[str], *, reservoir: bool = False) -> list[int]:
    index = data.index
    rows = index[(index["run"] == run) & (index["split"] == split) & index["layer"].isin(list(layers))]
    if reservoir:
        rows = rows[rows["reservoir"] > 0]
    return sorted(set(rows["epoch"].astype(int).tolist()))


def _unit_histograms(
    data: RunData, run: str, split: str, pairs: Sequence[tuple[str, int]], epochs: Sequence[int] | None = None
) -> dict[tuple[str, int], dict[str, np.ndarray]]:
    """Per (layer, unit): ``epoch`` (E,), ``counts`` (E, bins), ``edges`` (E, bins+1), ``under``,
    ``over``, ``min``, ``max``, ``mean``, ``var`` (E,), from the epochs where the layer was recorded (or ``epochs``)."""
    layers = list(dict.fromkeys(layer for layer, _ in pairs))
    index = data.index[(data.index["run"] == run) & (data.index["split"] == split)]
    per_epoch = index.groupby("epoch")["layer"].agg(set)
    rows: dict[tuple[str, int], list[tuple[int, np.ndarray, dict[str, np.ndarray]]]] = {p: [] for p in pairs}
    for epoch in sorted(per_epoch.index.astype(int)) if epochs is None else epochs:
        have = [layer for layer in layers if layer in per_epoch.get(epoch, set())]
        if not have:
            continue
        edges, fields = _read(data, run, epoch, split, have)
        for layer, unit in pairs:
            if layer in fields:
                rows[(layer, unit)].append((epoch, edges, fields[layer]))
    out = {}
    for (layer, unit), got in rows.items():
        if len(bins := {len(edges) - 1: epoch for epoch, edges, _ in reversed(got)}) > 1:  # the first epoch of each
            seen = ", ".join(f"{n} from epoch {epoch}" for n, epoch in sorted(bins.items(), key=lambda item: item[1]))
            raise PlotError(
                f"run {run} recorded histograms of {layer} with different numbers of bins ({seen}): the recorder's "
                "bins changed during the run, and its per-unit figures need one binning; plot the epochs of each "
                "binning from a run directory of their own, or record again with one bins setting"
            )
        out[(layer, unit)] = {
            "epoch": np.array([e for e, _, _ in got], dtype=np.int64),
            "counts": np.array([f["hist"][unit] for _, _, f in got], dtype=np.float64).reshape(len(got), -1),
            "edges": np.array([edges for _, edges, _ in got]).reshape(len(got), -1),
            **{
                k: np.array([f[k][unit] for _, _, f in got], dtype=np.float64)
                for k in ("under", "over", "min", "max", "mean", "var")
            },
        }
    return out


def _quantiles_of(h: dict[str, np.ndarray], q: Sequence[float] = QUANTILES) -> np.ndarray:
    if len(h["epoch"]) == 0:
        return np.zeros((0, len(q)))
    return hist_quantiles(
        h["counts"],
        h["edges"],
        q,
        under=h["under"],
        over=h["over"],
        data_min=h["min"],
        data_max=h["max"],
        mean=h["mean"],
        std=np.sqrt(np.maximum(h["var"], 0.0)),  # NaN (an empty unit) stays NaN: even spread
    )


def unit_evolution(
    data: RunData, run: str, layer: str, unit: int = 0, split: str | None = None, q: Sequence[float] = QUANTILES
) -> pd.DataFrame:
    """One unit over epochs: histogram quantiles (:func:`~analysis.quantiles.hist_quantiles`) and exact moments.

    Quantiles beyond the histogram range follow a normal tail with the epoch's exact mean and
    variance (see :func:`~analysis.quantiles.hist_quantiles`); ``outside`` says how much of the unit that concerns.

    Returns
    -------
    DataFrame
        One row per recorded epoch: ``epoch``, ``q0.05`` ... (one column per level of ``q``),
        ``resolution`` (bin width: the quantiles' error bound inside the histogram range),
        ``mean``, ``var``, ``min``, ``max``, ``count``, ``outside`` (fraction of values outside
        the histogram range).
    """
    split = _resolve_split(data, split)
    layer = _resolve_layers(data, split, [layer])[0]
    unit = _resolve_units(data, split, [layer], [unit])[0]
    if run not in data.runs:
        raise PlotError(f"unknown run {run!r}; runs: {', '.join(data.runs_list)}")
    if run not in _runs_with(data, split, layers=[layer]):
        raise PlotError(f"run {run} did not record layer {layer} in split {split}")
    h = _unit_histograms(data, run, split, [(layer, unit)])[(layer, unit)]
    frame = pd.DataFrame({"epoch": h["epoch"]})
    for level, col in zip(q, _quantiles_of(h, q).T, strict=True):
        frame[f"q{level:g}"] = col
    frame["resolution"] = [bin_width(e) for e in h["edges"]]
    moments = _unit_moments(data, split, [layer], [unit])
    moments = moments[moments["run"] == run].set_index("epoch")
    for col in ("mean", "var", "min", "max", "count"):
        frame[col] = moments[col].reindex(frame["epoch"]).to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        frame["outside"] = (h["under"] + h["over"]) / (h["counts"].sum(1) + h["under"] + h["over"])
    return frame


def _unit_moments(data: RunData, split: str, layers: Sequence[str], units: Sequence[int]) -> pd.DataFrame:
    s = data.stats
    rows = s[(s["split"] == split) & s["layer"].isin(list(layers)) & s["unit"].isin(list(units))]
    cols = ["run", "method", "epoch", "layer", "unit", "mean", "var", "min", "max", "count"]
    out = rows[cols].copy()
    for c in ("run", "method", "layer"):
        out[c] = out[c].astype(str)
    return out.sort_values(["run", "layer", "unit", "epoch"]).reset_index(drop=True)


def sw1_table(
    data: RunData,
    split: str | None = None,
    layers: Sequence[str] | None = None,
    *,
    n_projections: int = 256,
    seed: int = 0,
    epochs: Sequence[int] | None = None,
) -> pd.DataFrame:
    r""":math:`SW_1` to :math:`\mathcal{N}(0, I)` and :math:`L_{per}` per recorded (run, epoch, layer) with a reservoir.

    On the finite reservoir rows :math:`x_i` (a uniform sample of the epoch's rows), with the slices
    :math:`\theta_j` of :func:`analysis.distances.sliced_w1_to_normal` (``n_projections``, ``seed``)
    and :math:`a_{ij} = \langle x_i, \theta_j \rangle`:

    .. math::
        SW_1 = \frac{1}{s} \sum_j W_1\Big(\frac{1}{m} \sum_i \delta_{a_{ij}}, \mathcal{N}(0, 1)\Big)
        \;\le\; L_{per} = \frac{1}{s m} \sum_{j, i} \mathbb{E}|Z - a_{ij}|

    (the numbers of :func:`analysis.tables.layer_bounds`, without its exact-OT :math:`W_1` check,
    which costs about 0.5 s per layer and epoch). ``collapsed`` is the rule of
    :func:`analysis.bounds.check_bounds`: projected standard deviation
    :math:`\sqrt{\mathrm{mean}_j \mathrm{Var}_i\, a_{ij}} <` :data:`COLLAPSE_STD` and
    :math:`L_{per} < 2/\sqrt{\pi}`: the bound is small because the activations spread little.
    ``epochs`` limits the table to those epochs (default: every epoch with a reservoir).

    Returns
    -------
    DataFrame
        ``run``, ``method``, ``split``, ``epoch``, ``layer``, ``rows``, ``units``, ``slices``
        (``n_projections``), ``sw1``, ``lper``, ``projected_std``, ``collapsed``.
    """
    split = _resolve_split(data, split, reservoir=True)
    layers = _layers_of(data, split) if layers is None else _resolve_layers(data, split, layers)
    projections: dict[int, np.ndarray] = {}
    rows: list[dict[str, Any]] = []
    index = data.index
    kept = index[(index["split"] == split) & (index["reservoir"] > 0) & index["layer"].isin(layers)]
    if epochs is not None:
        kept = kept[kept["epoch"].isin([int(e) for e in epochs])]
    with _one_thread():
        for (run, epoch), block in kept.groupby([kept["run"].astype(str), kept["epoch"].astype(int)], sort=True):
            have = [layer for layer in layers if layer in set(block["layer"])]
            rows += _sw1_rows(data, str(run), int(epoch), split, have, projections, n_projections, seed)
    columns = ["run", "method", "split", "epoch", "layer", "rows", "units", "sw1", "lper", "projected_std", "collapsed"]
    frame = pd.DataFrame(rows, columns=columns)
    frame.insert(columns.index("units") + 1, "slices", n_projections)
    return frame


def _sw1_rows(
    data: RunData,
    run: str,
    epoch: int,
    split: str,
    layers: Sequence[str],
    projections: dict[int, np.ndarray],
    n_projections: int,
    seed: int,
) -> list[dict[str, Any]]:
    """The :func:`sw1_table` rows of one activation file; ``projections`` caches the slices per dimension."""
    _, fields = _read(data, run, epoch, split, layers, reservoir=True)
    rows = []
    for layer in layers:
        X = fields[layer]["reservoir"].astype(np.float64)
        X = X[np.isfinite(X).all(axis=1)]
        if len(X) == 0:
            continue
        d = X.shape[1]
        if d not in projections:
            projections[d] = _projections(d, n_projections, seed)
        P = projections[d]
        lper = float(per_bound_slices(X, projections=P).mean())
        proj_std = float(np.sqrt(np.mean(np.var(X @ P.T, axis=0))))  # (m, d) @ (d, s) -> (m, s)
        rows.append(
            {
                "run": run,
                "method": data.methods[run],
                "split": split,
                "epoch": epoch,
                "layer": layer,
                "rows": len(X),
                "units": d,
                "sw1": float(sliced_w1_to_normal_slices(X, projections=P).mean()),
                "lper": lper,
                "projected_std": proj_std,
                "collapsed": bool(proj_std < COLLAPSE_STD and lper < LPER_AT_GAUSSIAN),
            }
        )
    return rows


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run tiny linear algebra (256 reservoir rows) on one thread: thread pools only add overhead there,
    10 to 100 times the work itself when the cores are busy. The previous limits are restored."""
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:  # pragma: no cover
        threadpool_limits = None
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1) if threadpool_limits is not None else nullcontext():
            yield
    finally:
        torch.set_num_threads(before)
