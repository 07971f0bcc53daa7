r"""Distances and bound checks for every recorded layer and epoch of a run (or sweep) directory.

Two tables, written by ``python -m analysis.bounds RUN_DIR`` to ``RUN_DIR/analysis/``:

- ``bounds.csv``, one row per (run, split, epoch, layer) that kept a reservoir of joint rows:
  :math:`SW_1` to :math:`\mathcal{N}(0, I)` (exact per slice), the bound :math:`L_{per}` on the same
  slices, their gap, the slice-by-slice check :math:`SW_1 \le L_{per}`, the check
  :math:`SW_1 \le W_1` (:func:`analysis.bounds.check_bounds`), the projected spread and the
  ``collapsed`` flag (bound small because the activations spread little, not because they are
  Gaussian; the true distance says how far they are).
- ``distances.csv``, one row per (run, split, epoch, layer, unit): the exact 1-D :math:`W_1` of the
  unit to :math:`\mathcal{N}(0,1)` from its histogram, with the rigorous binning error bound
  (:func:`analysis.distances.w1_to_normal_hist`, using the recorded min/max to place under- and
  overflow), and from the reservoir column when one was kept (exact for those rows).

The reservoir is a uniform sample of the epoch's rows (k = 256 by default), so :math:`SW_1` here is
the distance of that sample: it carries the finite-sample bias of an m-point empirical measure
(about :math:`1.29/\sqrt{m}` per slice for a Gaussian sample, 0.08 at m = 256:
:data:`analysis.distances.GAUSSIAN_SAMPLE_W1`). Compare epochs and methods at equal m.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.bounds import check_bounds
from analysis.distances import w1_to_normal, w1_to_normal_hist
from analysis.io import RunData, load_run, no_activations
from per_core.cli import bar_shown
from per_core.progress import tqdm
from per_core.rundir import RunDirError

__all__ = ["BOUNDS_COLUMNS", "layer_bounds", "unit_distances", "write_tables"]

BOUNDS_COLUMNS = [
    "run",
    "method",
    "split",
    "epoch",
    "layer",
    "rows",
    "nonfinite_rows",
    "units",
    "sw1",
    "lper",
    "gap",
    "per_slice_ok",
    "per_slice_max_violation",
    "w1",
    "w1_slack",
    "w1_ok",
    "projected_std",
    "collapsed",
    "passed",
]
_CHECKED = BOUNDS_COLUMNS[BOUNDS_COLUMNS.index("sw1") :]  # what a reservoir without a finite row leaves unknown
_FLAGS = ("per_slice_ok", "w1_ok", "collapsed", "passed")  # False there: nothing was checked


def _bar(items: Iterable[Any], total: int, desc: str, progress: bool) -> Iterator[Any]:
    """``items`` with a transient progress bar on stderr, like the trainer's: with ``progress``, in a terminal or a
    notebook (a log file or a pipe gets none)."""
    shown = bar_shown(progress)
    return iter(tqdm(items, total=total, desc=desc, unit="layer-epoch", leave=False, disable=not shown))


def layer_bounds(data: RunData, *, n_projections: int = 256, seed: int = 0, progress: bool = False) -> pd.DataFrame:
    """One row per recorded (run, split, epoch, layer) with a reservoir: distances and bound checks.

    Reservoir rows holding a NaN or inf are left out of every number and counted in ``nonfinite_rows``;
    a reservoir without a finite row keeps its row, with ``rows`` 0, NaN numbers and False flags
    (nothing was checked). ``progress``: a progress bar on stderr over those (run, split, epoch, layer).
    """
    rows: list[dict[str, Any]] = []
    kept = data.index[data.index["reservoir"] > 0]
    for r in _bar(kept.itertuples(index=False), len(kept), "bounds", progress):
        X = data.reservoir(r.run, r.split, int(r.epoch), r.layer).astype(np.float64)
        finite = np.isfinite(X).all(axis=1)
        where = {"run": r.run, "method": r.method, "split": r.split, "epoch": int(r.epoch), "layer": r.layer}
        counts = {"rows": int(finite.sum()), "nonfinite_rows": int((~finite).sum()), "units": X.shape[1]}
        if not finite.any():
            rows.append({**where, **counts, **{c: False if c in _FLAGS else math.nan for c in _CHECKED}})
            continue
        X = X[finite]
        rep = check_bounds(X, n_projections, seed)
        rows.append(
            {
                **where,
                **counts,
                "sw1": rep.sw1,
                "lper": rep.lper,
                "gap": rep.gap,
                "per_slice_ok": rep.per_slice_ok,
                "per_slice_max_violation": rep.per_slice_max_violation,
                "w1": rep.w1,
                "w1_slack": rep.w1_slack,
                "w1_ok": rep.w1_ok,
                "projected_std": rep.projected_std,
                "collapsed": rep.collapsed,
                "passed": rep.passed,
            }
        )
    return pd.DataFrame(rows, columns=BOUNDS_COLUMNS)


def unit_distances(data: RunData, *, progress: bool = False) -> pd.DataFrame:
    """One row per (run, split, epoch, layer, unit): exact 1-D W1 to N(0, 1) from histogram and reservoir.

    ``progress``: a progress bar on stderr over the recorded (run, split, epoch, layer).
    """
    frames = []
    stats = data.stats.set_index(["run", "split", "epoch", "layer"]).sort_index()
    for r in _bar(data.index.itertuples(index=False), len(data.index), "unit distances", progress):
        hist = data.histogram(r.run, r.split, int(r.epoch), r.layer)
        s = stats.loc[(r.run, r.split, r.epoch, r.layer)]
        mins, maxs = s["min"].to_numpy(), s["max"].to_numpy()
        values = np.full(len(s), np.nan)
        errors = np.full(len(s), np.nan)
        for u in range(len(s)):
            if hist.counts[u].sum() + hist.under[u] + hist.over[u] == 0:
                continue  # no finite value recorded for this unit
            values[u], errors[u] = w1_to_normal_hist(
                hist.counts[u],
                hist.edges,
                underflow=float(hist.under[u]),
                overflow=float(hist.over[u]),
                data_min=float(mins[u]),
                data_max=float(maxs[u]),
            )
        exact = np.full(len(s), np.nan)
        if r.reservoir > 0:
            X = data.reservoir(r.run, r.split, int(r.epoch), r.layer).astype(np.float64)
            for u in range(X.shape[1]):
                col = X[:, u][np.isfinite(X[:, u])]
                if len(col):
                    exact[u] = w1_to_normal(col)
        frames.append(
            pd.DataFrame(
                {
                    "run": r.run,
                    "method": r.method,
                    "split": r.split,
                    "epoch": int(r.epoch),
                    "layer": r.layer,
                    "unit": np.arange(len(s)),
                    "nonfinite": (s["nan"] + s["posinf"] + s["neginf"]).to_numpy(np.int64),
                    "w1_hist": values,
                    "w1_hist_error": errors,
                    "w1_reservoir": exact,
                }
            )
        )
    columns = ["run", "method", "split", "epoch", "layer", "unit", "nonfinite"]
    columns += ["w1_hist", "w1_hist_error", "w1_reservoir"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def _check_writable(folder: Path) -> None:
    """A one-line error when the tables could not be written into ``folder``; nothing is created (a missing
    folder is probed through the run directory that will hold it)."""
    try:
        if folder.exists() and not folder.is_dir():
            raise FileExistsError(17, "a file is in the way")
        with tempfile.TemporaryFile(dir=folder if folder.is_dir() else folder.parent):
            pass
    except OSError as err:
        raise RunDirError(
            f"cannot write the tables into {folder} ({err.strerror or err}): the run directory must be writable; "
            "copy the run somewhere writable and analyse the copy"
        ) from None


def write_tables(
    path: str, *, n_projections: int = 256, seed: int = 0, skip_bad: bool = False, progress: bool = False
) -> tuple[list[str], pd.DataFrame, list[str]]:
    """Compute both tables for every run below ``path`` and write them into each run's analysis/ folder.

    Returns the written paths, the bounds table of all runs, and what was skipped: files and runs
    left out with ``skip_bad``, and runs that recorded no activations (no tables are written for
    them). When no run recorded activations, :class:`RunDirError` is raised and nothing is written.
    ``progress``: progress bars on stderr.
    """
    data = load_run(path, skip_bad=skip_bad, metrics=False)  # activations only: a damaged metrics.jsonl is not ours
    if data.index.empty:
        raise RunDirError(no_activations(path, data.skipped))
    recorded = set(data.index["run"].astype(str))
    skipped = data.skipped + [
        f"run {label}: no activations recorded (trained with --record none?); no tables written for it"
        for label in data.runs
        if label not in recorded
    ]
    for label, run in data.runs.items():  # before minutes of computing: a read-only run would lose them at the end
        if label in recorded:
            _check_writable(run.analysis_dir)
    bounds = layer_bounds(data, n_projections=n_projections, seed=seed, progress=progress)
    units = unit_distances(data, progress=progress)
    written = []
    for label, run in data.runs.items():
        if label not in recorded:
            continue
        written.append(str(run.write_csv("bounds.csv", bounds[bounds["run"] == label])))
        written.append(str(run.write_csv("distances.csv", units[units["run"] == label])))
    return written, bounds, skipped
