r"""The figures in ``figures/`` (what the README shows), regenerated deterministically by ``make figures``.

    python -m analysis.figures --out figures [--runs runs/demo]

- ``figure1.png``: :func:`analysis.figure1.figure1` (no training);
- ``point_mass_trap.png``: :func:`point_mass_trap`, the bound against the true distance as the
  activations shrink (no training);
- with ``--runs`` (a demo sweep made by ``python -m per_core.demo``): ``figure2.png``,
  ``sw1_curves.png``, ``metrics.png`` and ``ridgeline.png`` (unit 0 of ``--ridgeline``, default
  ``layer3``, over epochs, one panel per method) from :mod:`analysis.plot`.

The arguments are checked and every figure is drawn before the first file is written: an error
(one ``error:`` line, exit status 2) leaves ``--out`` as it was.

The files are byte-for-byte reproducible on one install: Agg output, fixed seeds, and no ``Software``
entry (the matplotlib version) in the PNG metadata.

This module never trains (analysis does not import the trainer): ``make figures`` runs the demo
first when ``runs/demo`` is missing.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis.bounds import per_bound
from analysis.distances import sliced_w1_to_normal
from analysis.style import method_color, use_style
from per_core.cli import OneLineArgumentParser, nonempty_folder, run_command

__all__ = ["main", "point_mass_trap"]

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _write_png(fig, f) -> None:
    # no "Software" entry (the matplotlib version) in the PNG metadata: the bytes depend only on what is drawn
    fig.savefig(f, format="png", dpi=90, metadata={"Software": None})


def point_mass_trap(n: int = 2000, dim: int = 4, n_projections: int = 128, seed: int = 0, steps: int = 16) -> Figure:
    r"""The bound PER minimizes against the true distance, for :math:`s \cdot \mathcal{N}(0, I)`, s in [0, 1.5].

    :math:`SW_1` (exact per slice) is minimal at s = 1, the Gaussian itself; :math:`L_{per}` (same
    slices) decreases all the way to its floor :math:`\sqrt{2/\pi}` at s = 0, a point mass, where
    the true distance is back up to :math:`\sqrt{2/\pi}`. Returns a matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    use_style()
    X = np.random.default_rng(seed).normal(size=(n, dim))
    scales = np.linspace(0.0, 1.5, steps)
    sw = [sliced_w1_to_normal(s * X, n_projections, seed) for s in scales]
    lp = [per_bound(s * X, n_projections, seed) for s in scales]
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    ax.plot(scales, sw, "o-", color="k", label="SW1 to N(0, I) (true distance, exact per slice)")
    ax.plot(scales, lp, "s--", color=method_color("per"), label="L_per (the bound PER minimizes)")
    ax.axhline(math.sqrt(2 / math.pi), color="gray", lw=0.8, ls=":")
    ax.axhline(2 / math.sqrt(math.pi), color="gray", lw=0.8, ls="-.")
    ax.annotate("0.798: point mass", (1.5, math.sqrt(2 / math.pi)), fontsize=7, ha="right", va="bottom")
    ax.annotate("1.128: L_per at N(0, I)", (1.5, 2 / math.sqrt(math.pi)), fontsize=7, ha="right", va="bottom")
    ax.set(
        xlabel=f"scale s of the activations (s * N(0, I), d = {dim})",
        ylabel="value",
        title="Minimizing the bound rewards shrinking the activations",
    )
    ax.legend(loc="upper center", fontsize=7)
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from analysis.figure1 import figure1
    from analysis.io import load_run
    from analysis.plot import figure2, metrics_curves, ridgeline, sw1_curves
    from analysis.plotdata import (
        PlotError,
        _each_runs_layers,
        _NoCommonLayerError,
        _resolve_layers,
        _resolve_split,
        _resolve_units,
    )
    from per_core.rundir import RunDirError, atomic_write

    p = OneLineArgumentParser(prog="python -m analysis.figures", description="Regenerate the README figures.")
    p.add_argument("--out", type=nonempty_folder, default=Path("figures"), help="output folder (default figures/)")
    p.add_argument("--runs", type=nonempty_folder, help="a demo sweep directory (runs/demo) for the run-based figures")
    p.add_argument("--ridgeline", default="layer3", metavar="LAYER", help="layer of ridgeline.png (default layer3)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out} is a file: give a folder (it is created if missing)")

    def body() -> int:
        figures: dict[str, Callable[[], Any]] = {}  # name -> draw(); the run-based ones first (they can fail)
        if args.runs is not None:
            data = load_run(args.runs)
            split = _resolve_split(data, None)  # what ridgeline(data, args.ridgeline, unit=0) draws
            try:
                _resolve_layers(data, split, None)  # figure2(data)'s default layers, checked before drawing
            except _NoCommonLayerError as err:  # its advice, --layers, is analysis.plot's option, not ours
                raise PlotError(
                    f"the runs in {args.runs} recorded no layer in common in split {split} "
                    f"({_each_runs_layers(err.layers_by_run)}): analysis.figures draws the README figures of a "
                    "demo sweep (python -m per_core.demo); plot these runs with python -m analysis.plot and its "
                    "--layers, or each run separately"
                ) from None
            _resolve_units(data, split, _resolve_layers(data, split, [args.ridgeline]), [0])  # checked before drawing
            figures.update(
                figure2=lambda: figure2(data),
                sw1_curves=lambda: sw1_curves(data),
                metrics=lambda: metrics_curves(data),
                ridgeline=lambda: ridgeline(data, args.ridgeline, unit=0),
            )
        figures.update(figure1=figure1, point_mass_trap=point_mass_trap)
        if args.runs is None:
            print(
                "note: without --runs only figure1 and point_mass_trap are drawn (the other four need trained runs, "
                "e.g. --runs runs/demo from make demo)",
                file=sys.stderr,
            )
        import matplotlib.pyplot as plt

        drawn: dict[str, Any] = {}  # every figure is drawn before the first is written: no partial set on error
        try:
            for name, make in figures.items():
                drawn[name] = make()
            for name, fig in drawn.items():
                print(atomic_write(args.out / f"{name}.png", partial(_write_png, fig)))
        finally:
            for fig in drawn.values():
                plt.close(fig)
        return 0

    return run_command(body, debug=args.debug, errors=(RunDirError, PlotError, OSError))


if __name__ == "__main__":
    sys.exit(main())
