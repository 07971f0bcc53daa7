"""Goal 6: does ``python -m analysis.plot RUN_DIR`` take time linear in epochs x layers?

Synthetic run directories are written with the real recorder (:class:`analysis.recorder.ActivationRecorder`
on ``nn.Identity`` layers fed random rows, widths of the 11-layer CNN cycled) and the real
:class:`per_core.rundir.RunDir`: config.json, metrics.jsonl and one activation file per epoch (train
and eval splits, a reservoir of 256 rows in both at every 20th and at the last epoch). Each is plotted by
``analysis.plot.main([RUN_DIR])``, the function behind ``python -m analysis.plot``, in this process
(after one warm-up plot, so imports and font caches are not counted; median of 3); one end-to-end
``python -m analysis.plot`` of the largest run is timed as context.

- ``plot_scaling/e<E>_l<L> RATIO``: plotting seconds / those of the smallest run (E=10, L=10);
- ``plot_scaling/linearity RATIO``: growth from 10 to 200 epochs over growth from 10 to 50 epochs,
  divided by the linear expectation (200-10)/(50-10): 1.0 is linear, above 1 super-linear;
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
from pathlib import Path

from bench.timing import emit, progress, standalone_parser

__all__ = ["available", "make_run", "run"]

ROOT = Path(__file__).resolve().parent.parent
WIDTHS = (192, 192, 240, 240, 260, 260, 280, 280, 300, 300)


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


def _plot_seconds(root: Path, repeats: int) -> float:
    from analysis.plot import main

    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            status = main([str(root)])
        ts.append(time.perf_counter() - t0)
        if status:
            raise RuntimeError(f"analysis.plot.main([{root}]) returned {status}")
    return statistics.median(ts)


def run(quick: bool = False, device: str = "cpu") -> list[str]:
    """Plot timings per run size; returns the printed result lines (or the SKIPPED line)."""
    if not available():
        line = "plot_scaling SKIPPED (analysis.plot not available)"
        print(line, flush=True)
        return [line]
    sizes = [(2, 2), (3, 2)] if quick else [(10, 10), (50, 10), (200, 10), (50, 5), (50, 20)]
    repeats = 1 if quick else 3
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        roots = {}
        for e, n_layers in sizes:
            progress(f"plot_scaling: writing {e} epochs x {n_layers} layers")
            roots[e, n_layers] = make_run(Path(tmp) / f"e{e}_l{n_layers}", e, n_layers, rows=64 if quick else 300)
        _plot_seconds(roots[sizes[0]], 1)  # warm-up: imports, fonts, style
        secs = {}
        for size, root in roots.items():
            progress(f"plot_scaling: plotting {size[0]} epochs x {size[1]} layers")
            secs[size] = _plot_seconds(root, repeats)
        end_to_end = None if quick else _subprocess_seconds(roots[200, 10])
        base = secs[sizes[0]]
        for (e, n_layers), sec in secs.items():
            ctx = {"per": f"e{sizes[0][0]}_l{sizes[0][1]}", "seconds": sec, "epochs_x_layers": e * n_layers}
            if (e, n_layers) == (200, 10) and end_to_end is not None:
                ctx["python_-m_analysis.plot_seconds"] = end_to_end
            lines.append(emit(f"plot_scaling/e{e}_l{n_layers}", sec / base, **ctx))
        if not quick:
            obs = (secs[200, 10] - secs[10, 10]) / (secs[50, 10] - secs[10, 10])
            lines.append(emit("plot_scaling/linearity", obs / ((200 - 10) / (50 - 10)), what="1.0_is_linear_in_epochs"))
            obs = (secs[50, 20] - secs[50, 5]) / (secs[50, 10] - secs[50, 5])
            lines.append(
                emit("plot_scaling/layers_linearity", obs / ((20 - 5) / (10 - 5)), what="1.0_is_linear_in_layers")
            )
    return lines


def main() -> None:
    run(standalone_parser(__doc__).parse_args().quick)


if __name__ == "__main__":
    main()
