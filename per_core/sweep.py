"""Sweeps: methods x lambdas x seeds of one preset into a sweep directory, and the results table.

    python -m per_core.sweep --preset demo --methods vanilla,bn,per --seeds 0,1,2 --out runs/sweep-demo
    python -m per_core.sweep --preset demo --methods per --lams grid --seeds 0,1,2 --out runs/lam-demo
    python -m per_core.sweep --table runs/sweep-demo        # only print the table of an existing sweep

Layout: ``OUT/<method>/seed<S>/`` for methods without lambda and ``OUT/<method>-lam<L>/seed<S>/`` for
the regularizers (per, vcl, l1, l2). A finished run is skipped and an unfinished one resumed, so an
interrupted sweep continues where it stopped. The table reports, per method (and lambda), the
final-epoch validation metric as mean +- sample std over seeds, with the number of seeds, and
marks the lambda with the best mean, the way the paper's tables report the best of its grid.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from per_core.configs import LAMBDA_GRIDS, METHODS, PRESETS, TrainConfig, get_preset
from per_core.rundir import RunDir, RunDirError, atomic_write, find_runs
from per_core.train import TrainingError, train

__all__ = ["main", "results_table", "run_sweep"]

REGULARIZERS = ("per", "vcl", "l1", "l2")
#: Marker file of a run that stopped with a TrainingError (its message inside).
FAILED = "FAILED"


def _run_name(method: str, lam: float | None) -> str:
    return method if lam is None else f"{method}-lam{lam:g}"


def run_sweep(
    base: TrainConfig,
    out: Path,
    methods: Sequence[str],
    seeds: Sequence[int],
    lams: Sequence[float] | None = None,
    progress: bool = True,
) -> list[Path]:
    """Train every (method, lambda, seed) into ``out``; returns the run directories."""
    runs = []
    for method in methods:
        for lam in lams if (lams and method in REGULARIZERS) else [None]:
            for seed in seeds:
                cfg = base.replace(method=method, seed=seed, **({} if lam is None else {"lam": lam}))
                path = out / _run_name(method, lam) / f"seed{seed}"
                done = RunDir(path).read_metrics() if RunDir(path).is_run() else []
                if (path / FAILED).is_file():
                    print(f"== {path}: failed earlier, skipped (delete {path / FAILED} to retry)", flush=True)
                elif len(done) >= cfg.epochs:
                    print(f"== {path}: finished, skipped", flush=True)
                else:
                    print(f"== {path}: {'resuming' if done else 'training'}", flush=True)
                    try:
                        train(cfg, path, resume=bool(done), overwrite=not done, progress=progress)
                    except TrainingError as err:  # e.g. divergence: report it in the table, go on with the rest
                        print(f"== {path}: FAILED: {err}", flush=True)
                        atomic_write(path / FAILED, lambda f, e=err: f.write(f"{e}\n".encode()))
                runs.append(path)
    return runs


def _metric(rows: list[dict]) -> tuple[str, float]:
    last = rows[-1]
    for key in ("val_error", "val_ppl", "val_loss"):
        if key in last:
            return key, float(last[key])
    raise RunDirError("metrics.jsonl has no validation metric")


def results_table(sweep: str | Path) -> tuple[str, list[dict]]:
    """The table of a sweep directory: one row per (method, lambda) with mean +- std over seeds."""
    groups: dict[tuple[str, float | None], list[float]] = {}
    failed: dict[tuple[str, float | None], int] = {}
    metric = "val_error"
    for run in find_runs(sweep):
        cfg, rows = run.read_config(), run.read_metrics()
        lam = cfg["lam"] if cfg["method"] in REGULARIZERS else None
        if (run.root / FAILED).is_file():
            failed[cfg["method"], lam] = failed.get((cfg["method"], lam), 0) + 1
            groups.setdefault((cfg["method"], lam), [])
            continue
        if not rows or len(rows) < cfg["epochs"]:
            continue  # unfinished
        metric, value = _metric(rows)
        groups.setdefault((cfg["method"], lam), []).append(value)
    order = {m: i for i, m in enumerate(METHODS)}
    entries = []
    for (method, lam), values in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1] or 0)):
        std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
        mean = float(np.mean(values)) if values else math.nan
        n_failed = failed.get((method, lam), 0)
        entries.append({"method": method, "lam": lam, "mean": mean, "std": std, "n": len(values), "failed": n_failed})
    best = {}
    for e in entries:
        if e["lam"] is not None and e["n"] and (e["method"] not in best or e["mean"] < best[e["method"]]["mean"]):
            best[e["method"]] = e
    unit = "%" if metric == "val_error" else ""
    lines = [f"{'method':<8} {'lambda':>8} {metric + ' (mean +- std)':>26} {'seeds':>6}"]
    for e in entries:
        mark = " *" if best.get(e["method"]) is e and sum(x["method"] == e["method"] for x in entries) > 1 else ""
        lam = "-" if e["lam"] is None else f"{e['lam']:g}"
        spread = "n/a" if math.isnan(e["std"]) else f"{e['std']:.2f}"
        note = f"  ({e['failed']} diverged)" if e["failed"] else ""
        lines.append(f"{e['method']:<8} {lam:>8} {e['mean']:>17.2f}{unit} +- {spread:<5} {e['n']:>6}{mark}{note}")
    if best:
        lines.append("* best lambda of the grid (lowest mean), as the paper reports")
    return "\n".join(lines), entries


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m per_core.sweep", description="Run methods x lambdas x seeds.")
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    p.add_argument("--methods", default="vanilla,bn,per", help="comma-separated methods")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--lams", help="comma-separated lambdas for per/vcl/l1/l2, or 'grid' for the preset's grid")
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    p.add_argument("--data-dir", help="folder with the real data files")
    p.add_argument("--out", type=Path, help="sweep directory")
    p.add_argument("--table", type=Path, help="print the results table of an existing sweep and exit")
    p.add_argument("--smoke", action="store_true", help="synthetic data, a few steps per run")
    p.add_argument("--no-record", action="store_true", help="do not record activations (faster, smaller)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        if args.table is None:
            if args.out is None:
                raise ValueError("--out is required to run a sweep (or use --table SWEEP_DIR)")
            methods = [m.strip() for m in args.methods.split(",") if m.strip()]
            unknown = [m for m in methods if m not in METHODS]
            if unknown:
                raise ValueError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
            base = get_preset(args.preset)
            base = base.as_smoke() if args.smoke else base
            if args.epochs is not None:
                base = base.replace(epochs=args.epochs, milestones=[m for m in base.milestones if m < args.epochs])
            if args.data_dir is not None:
                base = base.replace(data_dir=args.data_dir)
            if args.no_record:
                base = base.replace(record=None)
            lams = LAMBDA_GRIDS[args.preset] if args.lams == "grid" else None
            if args.lams and args.lams != "grid":
                lams = [float(x) for x in args.lams.split(",")]
            seeds = [int(x) for x in args.seeds.split(",")]
            run_sweep(base, args.out, methods, seeds, lams, progress=not args.no_progress)
        text, _ = results_table(args.table or args.out)
    except (ValueError, OSError, TrainingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
