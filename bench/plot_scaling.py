"""Goal 6: does ``python -m analysis.plot RUN_DIR`` take time linear in epochs x layers?

Synthetic run directories are written with the real recorder (:class:`analysis.recorder.ActivationRecorder`
on ``nn.Identity`` layers fed random rows, widths of the 11-layer CNN cycled) and the real
:class:`per_core.rundir.RunDir`: config.json, metrics.jsonl and one activation file per epoch (train
and eval splits, a reservoir of 256 rows in both at every 20th and at the last epoch): 10, 25, 50, 100
and 200 epochs of 10 layers, and 50 epochs of 5 and of 20 layers. Each is plotted by
``analysis.plot.main([RUN_DIR])``, the function behind ``python -m analysis.plot``, in this process,
after one warm-up plot (imports and font caches are not counted), all sizes interleaved
(:func:`bench.timing.interleaved`, 3 rounds); one end-to-end ``python -m analysis.plot`` of the
largest run is timed as context.

- ``plot_scaling/e<E>_l<L> RATIO``: plotting seconds / those of the smallest run (E=10, L=10), paired
  by round;
- ``plot_scaling/linearity RATIO``: growth from 10 to 200 epochs over growth from 10 to 50 epochs,
  divided by the linear expectation (200-10)/(50-10), median over rounds: 1.0 is linear, above 1
  super-linear; its context gives the least-squares line through the five run lengths' median
  times and the largest relative residual from it;
- ``plot_scaling/layers_linearity RATIO``: the same in layers (5 -> 20 vs 5 -> 10, at 50 epochs).

When ``analysis.plot`` does not exist yet, it prints ``plot_scaling SKIPPED (analysis.plot not available)``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.timing import Timings, emit, interleaved, progress, quiet_wait, standalone_parser

__all__ = ["available", "make_run", "run"]

ROOT = Path(__file__).resolve().parent.parent
WIDTHS = (192, 192, 240, 240, 260, 260, 280, 280, 300, 300)
#: Run lengths timed at 10 layers (the linearity in epochs); 5 and 20 layers are timed at 50 epochs.
EPOCHS = (10, 25, 50, 100, 200)


def available() -> bool:
    """Whether ``analysis.plot`` can be imported."""
    try:
        return importlib.util.find_spec("analysis.plot") is not None
    except ModuleNotFoundError:
        return False


def make_run(root: Path, epochs: int, layers: int, rows: int = 300, seed: int = 0) -> Path:
    """A synthetic run directory with ``epochs`` activation files of ``layers`` layers."""
    import torch
    from torch import nn

    from analysis.recorder import ActivationRecorder
    from per_core.rundir import RunDir

    rd = RunDir(root)
    rd.write_config({"preset": "synthetic", "method": "per", "epochs": epochs, "seed": seed})
    mods = {f"layer{i + 1}": nn.Identity() for i in range(layers)}
    widths = [WIDTHS[i % len(WIDTHS)] for i in range(layers)]
    rec = ActivationRecorder(nn.ModuleDict(mods), mods, seed=seed, reservoir_splits=("train", "eval"))
    g = torch.Generator().manual_seed(seed)
    for e in range(1, epochs + 1):
        rec.start_epoch(e, reservoir=e % 20 == 0 or e == epochs)
        for m, u in zip(mods.values(), widths, strict=True):
            m.train()
            m(torch.randn(rows, u, generator=g) * (1 + e / epochs))
        rec.end_epoch()
        with rec.eval_pass():
            for m, u in zip(mods.values(), widths, strict=True):
                m.eval()
                m(torch.randn(rows // 2, u, generator=g))
        rec.save(rd, e)
    metrics = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_error": 10 / e, "per_penalty": 1.0, "lr": 0.1}
        for e in range(1, epochs + 1)
    ]
    rd.write_metrics(metrics)
    return root


def _subprocess_seconds(root: Path) -> float:
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "analysis.plot", str(root)], env=env, cwd=ROOT, capture_output=True, text=True
    )
    if res.returncode != 0:
        raise RuntimeError(f"python -m analysis.plot {root} failed: {res.stderr.strip()[-500:]}")
    return time.perf_counter() - t0


def _plotter(root: Path) -> Callable[[], None]:
    """``analysis.plot.main([root])`` as a call without output; raises if it fails."""
    from analysis.plot import main

    def plot() -> None:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            status = main([str(root)])
        if status:
            raise RuntimeError(f"analysis.plot.main([{root}]) returned {status}")

    return plot


def _linearity(t: Timings, small: str, mid: str, large: str, expected: float) -> float:
    """Median over rounds of (large - small) / (mid - small) over ``expected``: 1.0 when time is linear in the size."""
    rounds = zip(t.seconds[small], t.seconds[mid], t.seconds[large], strict=True)
    return statistics.median((c - a) / (b - a) / expected for a, b, c in rounds)


def _line_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least-squares ``y = a + b x``: (a, b, largest |residual| / y)."""
    b, a = np.polyfit(xs, ys, 1)
    return float(a), float(b), max(abs(y - (a + b * x)) / y for x, y in zip(xs, ys, strict=True))


def run(quick: bool = False, device: str = "cpu") -> list[str]:
    """Plot timings per run size; returns the printed result lines (or the SKIPPED line)."""
    if not available():
        line = "plot_scaling SKIPPED (analysis.plot not available)"
        print(line, flush=True)
        return [line]
    sizes = [(2, 2), (3, 2)] if quick else [(e, 10) for e in EPOCHS] + [(50, 5), (50, 20)]
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        plots = {}
        for e, n_layers in sizes:
            progress(f"plot_scaling: writing {e} epochs x {n_layers} layers")
            root = make_run(Path(tmp) / f"e{e}_l{n_layers}", e, n_layers, rows=64 if quick else 300)
            plots[f"e{e}_l{n_layers}"] = _plotter(root)
        base = next(iter(plots))
        plots[base]()  # warm-up: imports, fonts, style
        progress(f"plot_scaling: plotting {len(plots)} run sizes interleaved")
        t = interleaved(plots, repeats=1 if quick else 3, warmup=0, quiet_wait=quiet_wait(quick, device), collect=True)
        end_to_end = None if quick else _subprocess_seconds(Path(tmp) / "e200_l10")
        for (e, n_layers), name in zip(sizes, plots, strict=True):
            ctx = {"per": base, "seconds": t.median(name), "epochs_x_layers": e * n_layers}
            if name == "e200_l10" and end_to_end is not None:
                ctx["python_-m_analysis.plot_seconds"] = end_to_end
            lines.append(emit(f"plot_scaling/{name}", t.ratio(name, base), **ctx))
        if not quick:
            a, b, resid = _line_fit([float(e) for e in EPOCHS], [t.median(f"e{e}_l10") for e in EPOCHS])
            lines.append(
                emit(
                    "plot_scaling/linearity",
                    _linearity(t, "e10_l10", "e50_l10", "e200_l10", (200 - 10) / (50 - 10)),
                    what="1.0_is_linear_in_epochs",
                    fit_seconds=f"{a:.3g}+{1e3 * b:.3g}ms*epochs",
                    fit_max_rel_residual=resid,
                    epochs=",".join(map(str, EPOCHS)),
                )
            )
            lines.append(
                emit(
                    "plot_scaling/layers_linearity",
                    _linearity(t, "e50_l5", "e50_l10", "e50_l20", (20 - 5) / (10 - 5)),
                    what="1.0_is_linear_in_layers",
                )
            )
    return lines


def main() -> None:
    run(standalone_parser(__doc__).parse_args().quick)


if __name__ == "__main__":
    main()
