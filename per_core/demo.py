"""The demo behind ``make demo``: vanilla, BN and PER on the embedded digits, then a summary table.

    python -m per_core.demo [--out runs/demo] [--epochs 30] [--seed 0]

Each method trains into OUT/<method>/ (a run directory, replaced if present); the table shows per
method the final validation error, and the true SW1 to N(0, I) next to the bound L_per.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

from per_core.allocator import tune_malloc
from per_core.cli import OneLineArgumentParser, nonempty_folder, run_command, say
from per_core.configs import get_preset
from per_core.rundir import RunDir, RunDirError, check_not_a_run
from per_core.train import TrainingError, train, validate_config

__all__ = ["main"]

DEMO_METHODS = ("vanilla", "bn", "per")


def _num(value: object) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def format_table(results: dict[str, dict[str, object]], rows: int | None = None) -> str:
    """A plain-text table: method, val error (%), val loss, SW1 and L_per (mean over layers), seconds per epoch.

    ``rows``: the reservoir rows SW1 and L_per were measured on (None: the columns are n/a).
    """
    lines = [f"{'method':<8} {'val error %':>11} {'val loss':>9} {'SW1':>6} {'L_per':>6} {'s/epoch':>8}"]
    for method, r in results.items():
        lines.append(
            f"{method:<8} {r['val_error']:>11.2f} {r['val_loss']:>9.4f} {_num(r.get('sw1')):>6} "
            f"{_num(r.get('lper')):>6} {r['seconds']:>8.2f}"
            + (f"  collapsed: {', '.join(r['collapsed'])}" if r.get("collapsed") else "")
        )
    from analysis.distances import GAUSSIAN_SAMPLE_W1  # a Gaussian sample's own SW1 is about this / sqrt(rows)

    if rows is None:
        measured = "     256 slices): n/a, no eval rows were kept at the last epoch."
    else:
        floor = GAUSSIAN_SAMPLE_W1 / math.sqrt(rows)
        measured = f"     256 slices) on the {rows} eval rows kept at the last epoch, mean over layers"
        measured += f" (N(0, I) scores ~{floor:.2f} on {rows} rows)."
    lines += [
        "SW1: the true sliced Wasserstein-1 distance to N(0, I) of each layer's activations (exact per slice,",
        measured,
        "L_per: the Minkowski bound PER minimizes, on the same rows and slices (>= SW1; floor 0.798 = a point",
        "     mass at 0, 1.128 at N(0, I)): a lower L_per is not a smaller SW1.",
        "collapsed: layers whose activations shrank (see analysis.bounds). Per layer, epoch: python -m analysis.plot",
    ]
    return "\n".join(lines)


def _distances(out: Path, epoch: int) -> tuple[dict[str, dict[str, object]], int | None]:
    """Per method, the means over layers of SW1 and L_per at ``epoch`` (eval split) and its collapsed
    layers; and the fewest reservoir rows they were measured on."""
    from analysis.io import load_run
    from analysis.plot import sw1_table

    table = sw1_table(load_run(out), "eval", epochs=[epoch])
    table = table[table["run"].isin(DEMO_METHODS)]  # other runs that --out may hold are not the demo's
    per_method = {
        str(method): {
            "sw1": float(rows["sw1"].mean()),
            "lper": float(rows["lper"].mean()),
            "collapsed": [str(layer) for layer in rows.loc[rows["collapsed"], "layer"]],
        }
        for method, rows in table.groupby("method")
    }
    return per_method, (int(table["rows"].min()) if len(table) else None)


def main(argv: Sequence[str] | None = None) -> int:
    p = OneLineArgumentParser(prog="python -m per_core.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=nonempty_folder, default=Path("runs/demo"), help="sweep directory (default runs/demo)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per method (default: the demo preset's)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    args = p.parse_args(argv)

    results = {}

    def body() -> int:
        tune_malloc()  # before the first tensors: see per_core.allocator
        if args.out.exists() and not args.out.is_dir():
            raise RunDirError(f"--out {args.out} is a file, not a folder: choose a folder for the demo's runs")
        check_not_a_run(args.out, "the demo writes its three runs")
        epochs = {} if args.epochs is None else {"epochs": args.epochs}
        configs = {m: get_preset("demo").replace(method=m, seed=args.seed, **epochs) for m in DEMO_METHODS}
        for cfg in configs.values():  # a bad --epochs or --seed before anything is said or trained
            validate_config(cfg)
        for method, cfg in configs.items():
            say(f"== training {method} into {args.out / method}")
            earlier = RunDir(args.out / method)
            if earlier.is_run():  # documented (the demo overwrites its folders), but said, as it replaces work
                try:
                    done = f"{len(earlier.read_metrics(on_bad=lambda err: None))} finished epoch(s)"
                except (OSError, ValueError):  # a damaged run is replaced all the same
                    done = "its metrics are unreadable"
                say(f"note: replacing the earlier run in {earlier.root} ({done})")
            metrics = train(cfg, args.out / method, overwrite=True, progress=not args.no_progress)
            results[method] = {**metrics[-1], "seconds": sum(m["seconds"] for m in metrics) / len(metrics)}
        distances, rows = _distances(args.out, cfg.epochs)
        for method, measured in distances.items():
            results[method].update(measured)
        table = format_table(results, rows)
        say(f"\n{table}\n\nrun directories: {', '.join(str(args.out / m) for m in DEMO_METHODS)}")
        return 0

    return run_command(
        body,
        debug=args.debug,
        errors=(ValueError, OSError, TrainingError),  # RunDirError is a ValueError
        interrupted=lambda: f"interrupted; finished methods are in {args.out} ({', '.join(results) or 'none yet'})",
    )


if __name__ == "__main__":
    sys.exit(main())
