r"""Load run directories (or a sweep of them) into tidy pandas frames.

:func:`load_run` reads every run below a path (see :func:`per_core.rundir.find_runs`): its
``config.json``, ``metrics.jsonl`` and the per-unit statistics of every
``activations/epoch_NNNN.npz`` written by :class:`analysis.recorder.ActivationRecorder`. Moments are
derived from the stored shifted power sums with :func:`analysis.recorder.moments_from_sums`.
Histograms and reservoir rows are read on demand (:meth:`RunData.histogram`,
:meth:`RunData.reservoir`).

Example
-------
>>> import tempfile, torch
>>> from per_core.rundir import RunDir
>>> from analysis.recorder import ActivationRecorder
>>> rd = RunDir(tempfile.mkdtemp())
>>> _ = rd.write_config({"method": "per"})
>>> _ = rd.write_metrics([{"epoch": 1, "loss": 0.5}])
>>> lin = torch.nn.Linear(2, 3)
>>> rec = ActivationRecorder(lin, {"fc": lin})
>>> rec.start_epoch(1)
>>> _ = lin(torch.randn(8, 2, generator=torch.Generator().manual_seed(0)))
>>> _ = rec.save(rd, 1)
>>> data = load_run(rd.root)
>>> print(data.stats[["method", "epoch", "split", "layer", "unit", "count", "nan"]].to_string(index=False))
method  epoch split layer  unit  count  nan
   per      1 train    fc     0      8    0
   per      1 train    fc     1      8    0
   per      1 train    fc     2      8    0
>>> data.histogram(data.runs_list[0], "train", 1, "fc").counts.shape
(3, 40)
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from analysis.recorder import COUNT_FIELDS, RECORDER_FORMAT, SPLITS, SUM_FIELDS, layer_stats, moments_from_sums
from per_core.checks import is_integer
from per_core.rundir import NpyHeader, RunDir, RunDirError, find_runs, numbers_only

__all__ = ["SKIP_BAD_HINT", "STATS_COLUMNS", "Histogram", "RunData", "load_run", "suggest_skip_bad"]

#: How :func:`suggest_skip_bad` ends an error about a file that ``--skip-bad`` would leave out.
SKIP_BAD_HINT = "rerun with --skip-bad to leave out what cannot be read (a config.json: its whole run)"

STATS_COLUMNS = (
    "run", "method", "epoch", "split", "layer", "unit", "count", "mean", "var", "skew", "kurt",
    "min", "max", "nan", "posinf", "neginf", "under", "over",
)  # fmt: skip
_WIDTHS = {"counts": len(COUNT_FIELDS), "sums": len(SUM_FIELDS), "minmax": 2}  # columns; hist: bins


class Histogram(NamedTuple):
    """Histogram of every unit of one (run, split, epoch, layer)."""

    counts: np.ndarray  #: int64, shape (units, bins)
    edges: np.ndarray  #: float64, shape (bins + 1,)
    under: np.ndarray  #: int64, shape (units,): finite values below edges[0]
    over: np.ndarray  #: int64, shape (units,): finite values above edges[-1]


@dataclass
class RunData:
    """What :func:`load_run` found below ``root``; ``run`` labels are paths relative to ``root``.

    Attributes
    ----------
    stats : DataFrame
        One row per (run, epoch, split, layer, unit) with the columns :data:`STATS_COLUMNS`.
    metrics : DataFrame
        ``run``, ``method`` and the columns of ``metrics.jsonl``: its numbers (JSON null and NaN included);
        other values (strings, lists, booleans) are left out and listed in :attr:`ignored`.
    configs : dict of str -> dict
        ``config.json`` per run; :attr:`config` is the same as a flat frame.
    index : DataFrame
        One row per recorded (run, epoch, split, layer): ``units``, ``reservoir`` (rows kept, 0 if
        none) and ``path``.
    skipped : list of str
        With ``skip_bad=True``, one message per file or run left out, naming it.
    ignored : list of str
        One message per metrics.jsonl holding values that are not numbers, or lines whose epoch is not
        an integer (left out of ``metrics``: :func:`per_core.rundir.numbers_only`), naming the file.
    metrics_logged : DataFrame or None
        Booleans shaped like ``metrics`` (same index and columns): True where that line of
        ``metrics.jsonl`` holds the key. It tells a logged NaN (a diverged run) from a metric the run
        never logs (NaN where the frame joins runs that log other metrics). Rows and columns of
        ``metrics`` it lacks (a frame built or extended by hand) read as logged where not NaN.
    """

    root: Path
    runs: dict[str, RunDir]
    methods: dict[str, str]
    configs: dict[str, dict[str, Any]]
    stats: pd.DataFrame
    metrics: pd.DataFrame
    index: pd.DataFrame
    skipped: list[str] = field(default_factory=list)
    metrics_logged: pd.DataFrame | None = None
    ignored: list[str] = field(default_factory=list)
    _cache: tuple[Path, dict[str, np.ndarray]] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def runs_list(self) -> list[str]:
        """Run labels in order."""
        return list(self.runs)

    @property
    def config(self) -> pd.DataFrame:
        """One row per run: ``run``, ``method`` and the config keys (nested keys joined by dots)."""
        rows = [{**cfg, "run": run, "method": self.methods[run]} for run, cfg in self.configs.items()]
        frame = pd.json_normalize(rows) if rows else pd.DataFrame(columns=["run", "method"])
        return frame[["run", "method", *[c for c in frame.columns if c not in ("run", "method")]]]

    def logged(self) -> pd.DataFrame:
        """:attr:`metrics_logged` for the rows and columns ``metrics`` has now (it may have been filtered or
        built by hand): where it knows nothing, a value is logged when it is not NaN."""
        guess = self.metrics.notna()
        if self.metrics_logged is None:
            return guess
        known = self.metrics_logged.reindex(index=self.metrics.index, columns=self.metrics.columns)
        return known.astype("boolean").fillna(guess).astype(bool)

    def _arrays(self, run: str, epoch: int) -> tuple[Path, dict[str, np.ndarray]]:
        if run not in self.runs:
            raise KeyError(f"unknown run {run!r}; runs: {self.runs_list}")
        path = self.runs[run].activation_path(epoch)
        if self._cache is None or self._cache[0] != path:
            with skippable():
                self._cache = (path, self.runs[run].read_npz(path))
        return self._cache

    def _block(self, run: str, split: str, epoch: int, layer: str) -> tuple[Path, dict[str, np.ndarray]]:
        if split not in SPLITS or not is_integer(epoch):
            raise TypeError(
                f"arguments are (run, split, epoch, layer): split one of {', '.join(SPLITS)} and epoch an integer, "
                f"got split={split!r}, epoch={epoch!r}"
            )
        path, arrays = self._arrays(run, int(epoch))
        try:
            return path, {"edges": arrays["edges"], **layer_stats(arrays, split, layer)}
        except KeyError as err:
            raise KeyError(f"{path}: {err.args[0]}") from None

    def histogram(self, run: str, split: str, epoch: int, layer: str) -> Histogram:
        """Histogram counts (units x bins), the shared edges and the under/overflow counts."""
        _, f = self._block(run, split, epoch, layer)
        return Histogram(f["hist"], f["edges"], f["under"], f["over"])

    def reservoir(self, run: str, split: str, epoch: int, layer: str) -> np.ndarray:
        """Reservoir rows, float32 of shape (m, units): a uniform sample of the epoch's rows."""
        path, f = self._block(run, split, epoch, layer)
        if "reservoir" not in f:
            raise KeyError(f"{path} has no {split}/{layer}/reservoir: not a reservoir epoch or split")
        return f["reservoir"]


#: The members of a block that :func:`load_run` checks by their headers alone: the stats frame does not use
#: them, and they are most of a file (reading them made loading twice as slow and kept hundreds of MB alive).
_ON_DEMAND = ("hist", "reservoir", "reservoir_keys")


def _read_stats(rd: RunDir, path: Path, verify: bool) -> dict[str, np.ndarray | NpyHeader]:
    """What :func:`_blocks` checks of one activation file: the arrays of the stats frame and the file's
    metadata; the headers of the histograms and reservoirs, whose data are read when a figure needs them
    (``verify``: read through here as well, kept nowhere)."""
    with rd.open_npz(path) as npz:
        out: dict[str, np.ndarray | NpyHeader] = {}
        for k in npz.files:
            head = npz.header(k, read_through=verify) if _on_demand(k) else None
            out[k] = npz[k] if head is None else head
        return out


def _on_demand(key: str) -> bool:
    """Whether ``key`` (``split/layer/field``) is a member that :func:`load_run` does not read."""
    return key.count("/") == 2 and key.rsplit("/", 1)[1] in _ON_DEMAND


class _Block(NamedTuple):
    """One recorded (run, epoch, split, layer) of an activation file."""

    run: str
    epoch: int
    split: str
    layer: str
    file: Path
    fields: dict[str, np.ndarray | NpyHeader]  # hist (its header), counts, sums, minmax
    reservoir_rows: int


def _blocks(run: str, epoch: int, path: Path, arrays: Mapping[str, np.ndarray | NpyHeader]) -> list[_Block]:
    """The blocks of one activation file, checked against the schema of :mod:`analysis.recorder`
    (arrays or, for the members read on demand, their headers)."""
    version = arrays.get("format_version")
    if version is None or int(version) != RECORDER_FORMAT:
        raise RunDirError(f"{path}: activation format version {version}, this toolkit reads {RECORDER_FORMAT}")
    if "epoch" not in arrays or int(arrays["epoch"]) != epoch:
        raise RunDirError(f"{path}: holds epoch {arrays.get('epoch')}, its name says {epoch}")
    if "edges" not in arrays:
        raise RunDirError(f"{path}: no histogram edges")
    edges = arrays["edges"]
    if not (
        isinstance(edges, np.ndarray)
        and edges.ndim == 1
        and len(edges) >= 2
        and np.issubdtype(edges.dtype, np.floating)
        and np.isfinite(edges).all()
        and (np.diff(edges) > 0).all()
    ):
        raise RunDirError(f"{path}: histogram edges that are not finite and increasing (a damaged file)")
    bins = len(edges) - 1
    order = {name: i for i, name in enumerate(arrays["layers"].tolist())} if "layers" in arrays else {}
    found = {tuple(k.split("/")[:2]) for k in arrays if k.count("/") == 2 and k.split("/")[0] in SPLITS}
    out = []
    for split, layer in sorted(found, key=lambda sl: (SPLITS.index(sl[0]), order.get(sl[1], len(order)), sl[1])):
        fields = {f: arrays.get(f"{split}/{layer}/{f}") for f in ("hist", *_WIDTHS)}
        missing = [f for f, v in fields.items() if v is None]
        widths = {"hist": bins, **_WIDTHS}
        units = -1 if fields["counts"] is None else len(fields["counts"])
        if missing:
            raise RunDirError(f"{path}: {split}/{layer} is incomplete (no {', '.join(missing)})")
        if wrong := [f"{f} {v.shape}" for f, v in fields.items() if v.shape != (units, widths[f])]:
            expected = ", ".join(f"{f} {(units, widths[f])}" for f in fields)
            raise RunDirError(f"{path}: {split}/{layer} is inconsistent: {', '.join(wrong)}; expected {expected}")
        if not all(np.issubdtype(fields[f].dtype, np.integer) for f in ("hist", "counts")):
            raise RunDirError(f"{path}: {split}/{layer} holds counts that are not integers (a damaged file)")
        reservoir = arrays.get(f"{split}/{layer}/reservoir")
        keys = arrays.get(f"{split}/{layer}/reservoir_keys")
        if reservoir is not None and (reservoir.ndim != 2 or reservoir.shape[1] != units):
            raise RunDirError(
                f"{path}: {split}/{layer}/reservoir has shape {reservoir.shape}, not (rows, {units}) for {units} units"
            )
        if (keys is None) != (reservoir is None) or (keys is not None and keys.shape != reservoir.shape[:1]):
            raise RunDirError(f"{path}: {split}/{layer}: reservoir and reservoir_keys do not match (a damaged file)")
        rows = 0 if reservoir is None else reservoir.shape[0]
        out.append(_Block(run, epoch, split, layer, path, fields, rows))
    return out


def no_activations(path: str | os.PathLike[str], skipped: Sequence[str] = ()) -> str:
    """What the analysis commands say when ``path`` has no activations to show, and what to do; ``skipped``:
    what ``skip_bad`` left out (:attr:`RunData.skipped`): its files (activation files, a config.json: they may
    have held them) are counted, its lines of metrics.jsonl are not."""
    if files := sum(_METRICS_LINE.search(item) is None for item in skipped):
        return (
            f"no readable activations in {path}: --skip-bad left out {files} unreadable file(s) "
            "(without it, the first is named); restore them, or train with --record if none was recorded"
        )
    return f"no activations recorded in {path}: train with --record all (or a list of layers, e.g. --record layer3)"


#: How :meth:`RunDir.read_metrics` names a bad line of metrics.jsonl (which holds no activations).
_METRICS_LINE = re.compile(r"metrics\.jsonl, line \d+: ")


def _run_label(rd: RunDir, root: Path) -> str:
    rel = rd.root.relative_to(root).as_posix()
    return rd.root.name if rel == "." else rel


def load_run(path: str | os.PathLike[str], *, skip_bad: bool = False, metrics: bool = True) -> RunData:
    """Load a run directory or every run of a sweep directory.

    Parameters
    ----------
    path : str or path
        A run directory (has ``config.json``) or a folder with run directories below it; a file
        raises :class:`RunDirError` naming its folder.
    skip_bad : bool
        False: an unreadable or inconsistent file raises :class:`RunDirError` naming it. True: the
        file (or the whole run, for a bad ``config.json``; the line, for a bad line of
        ``metrics.jsonl``) is left out and listed in ``skipped``. Without ``skip_bad`` histograms and
        reservoirs are checked by their headers (shape, type) here and read when asked for
        (:meth:`RunData.histogram`), so damaged bytes inside one are reported then; with it, their
        data are also read through here (kept nowhere), so that a file damaged anywhere is left out.
    metrics : bool
        False: ``metrics.jsonl`` is not read (``metrics`` is empty), for analyses of the
        activations alone, which a damaged metrics file then does not stop.

    Returns
    -------
    RunData
        ``stats``, ``metrics``, ``configs``/``config``, ``index`` and on-demand raw arrays.
    """
    root = Path(path)
    runs: dict[str, RunDir] = {}
    methods: dict[str, str] = {}
    configs: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    ignored: list[str] = []
    metric_frames: list[pd.DataFrame] = []
    logged_frames: list[pd.DataFrame] = []  # True where a line of metrics.jsonl holds the key
    blocks: list[_Block] = []

    def bad(err: RunDirError) -> None:
        if not skip_bad:
            raise _Skippable(str(err)) from err
        skipped.append(str(err))

    if root.is_file():  # find_runs would say that no config.json is below it
        run = next((p for p in list(root.parents)[:2] if RunDir(p).is_run()), None)  # e.g. its config.json, an npz
        fix = f"give the run directory it belongs to, {run}" if run else "give a run directory or a sweep of them"
        raise RunDirError(f"{root} is a file, not a run directory: {fix}")
    for rd in find_runs(root):
        label = _run_label(rd, root)
        try:
            config = rd.read_config()
        except RunDirError as err:
            bad(err)
            continue
        runs[label], configs[label] = rd, config
        methods[label] = str(config.get("method") or rd.root.name)
        if metrics:
            rows, dropped = numbers_only(rd.read_metrics(on_bad=bad))
            if dropped:
                ignored.append(f"{rd.metrics_path}: {dropped}")
            metric_frames.append(pd.DataFrame(rows).assign(run=label, method=methods[label]))
            logged_frames.append(pd.DataFrame([dict.fromkeys(row, True) for row in rows]))
        for epoch in rd.activation_epochs():
            file = rd.activation_path(epoch)
            try:
                blocks += _blocks(label, epoch, file, _read_stats(rd, file, verify=skip_bad))
            except RunDirError as err:
                bad(err)

    metrics_frame = _front(pd.concat(metric_frames, ignore_index=True) if metric_frames else pd.DataFrame())
    return RunData(
        root=root,
        runs=runs,
        methods=methods,
        configs=configs,
        stats=_stats_frame(blocks, methods),
        metrics=metrics_frame,
        metrics_logged=logged_mask(logged_frames, metrics_frame),
        index=_front(
            pd.DataFrame(
                [
                    (b.run, b.epoch, b.split, b.layer, len(b.fields["counts"]), b.reservoir_rows, str(b.file))
                    for b in blocks
                ],
                columns=["run", "epoch", "split", "layer", "units", "reservoir", "path"],
            ).assign(method=lambda f: f["run"].map(methods))
        ),
        skipped=skipped,
        ignored=ignored,
    )


def logged_mask(parts: list[pd.DataFrame], metrics: pd.DataFrame) -> pd.DataFrame:
    """:attr:`RunData.metrics_logged` for ``metrics`` from its parts in order (True where a key was logged;
    a part lacks the columns its runs never logged)."""
    mask = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    mask = mask.reindex(index=metrics.index, columns=metrics.columns)
    return mask.astype("boolean").fillna(False).astype(bool)


def _front(frame: pd.DataFrame) -> pd.DataFrame:
    """``run`` and ``method`` first (added empty when missing)."""
    for c in ("run", "method"):
        if c not in frame:
            frame[c] = pd.Series(dtype=object)
    return frame[["run", "method", *[c for c in frame.columns if c not in ("run", "method")]]]


def _codes(categories: list[str], per_block: list[str], units: np.ndarray) -> pd.Categorical:
    lookup = {c: i for i, c in enumerate(categories)}
    codes = np.repeat(np.array([lookup[v] for v in per_block], dtype=np.int64), units)
    return pd.Categorical.from_codes(codes, categories)


def _stats_frame(blocks: list[_Block], methods: dict[str, str]) -> pd.DataFrame:
    """Concatenate the blocks column by column (fast for millions of rows)."""
    units = np.array([len(b.fields["counts"]) for b in blocks], dtype=np.int64)
    packed = {
        f: np.concatenate([b.fields[f] for b in blocks]) if blocks else np.zeros((0, w)) for f, w in _WIDTHS.items()
    }
    col = dict(zip(COUNT_FIELDS, packed["counts"].astype(np.int64).T, strict=True))
    col.update(zip(SUM_FIELDS, packed["sums"].T, strict=True))
    col["min"], col["max"] = packed["minmax"].T
    moments = moments_from_sums(*(col[f] for f in ("count", *SUM_FIELDS)))
    frame = {
        "run": _codes(list(methods), [b.run for b in blocks], units),
        "method": _codes(sorted(set(methods.values())), [methods[b.run] for b in blocks], units),
        "epoch": np.repeat(np.array([b.epoch for b in blocks], dtype=np.int64), units),
        "split": _codes(list(SPLITS), [b.split for b in blocks], units),
        "layer": _codes(list(dict.fromkeys(b.layer for b in blocks)), [b.layer for b in blocks], units),
        "unit": np.concatenate([np.arange(u) for u in units]) if blocks else np.zeros(0, dtype=np.int64),
        **moments,
        **{f: col[f] for f in (*COUNT_FIELDS, "min", "max")},
    }
    return pd.DataFrame(frame)[list(STATS_COLUMNS)]


class _Skippable(RunDirError):
    """What ``load_run(skip_bad=True)`` leaves out: an unreadable config, metrics line or activation file."""


@contextlib.contextmanager
def skippable() -> Iterator[None]:
    """Read a recorded file that :func:`load_run` checked by its headers: damage found inside it (which
    ``skip_bad`` would have found and left out) is raised as such, for :func:`suggest_skip_bad`."""
    try:
        yield
    except _Skippable:
        raise
    except RunDirError as err:
        raise _Skippable(str(err)) from err


def suggest_skip_bad(body: Callable[[], int], skip_bad: bool) -> Callable[[], int]:
    """A command's ``body`` whose error for what ``--skip-bad`` leaves out also says so.

    Without ``--skip-bad`` damage inside a histogram surfaces when a figure or table reads it, after the
    load succeeded (:func:`load_run`); the command then stops with that file's name, and this adds the way on.
    Other errors (a missing path, a folder holding no run) are left as they are.
    """

    def wrapped() -> int:
        try:
            return body()
        except _Skippable as err:
            if skip_bad:
                raise
            raise RunDirError(f"{err}; {SKIP_BAD_HINT}") from err

    return wrapped
