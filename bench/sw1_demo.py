"""Goal 1, last criterion: does subsampling conv locations change what PER does to the layers' SW1?

Trains the demo preset (digits, 6-block ELU CNN, 30 epochs, lambda 1e-2) three times with seed 0:
vanilla, PER on all locations (``per_locations=None``) and PER with the subsampled default
(``per_locations=M``); then measures, on the 359 held-out validation images in eval mode, every
layer's sliced W1 to N(0, I_C) (:func:`analysis.distances.sliced_w1_to_normal`, 256 slices, exact
per slice) over all rows ``as_samples`` gives (every location of every image a row of C channels).

Lines: ``sw1_demo/<layer> RATIO`` = SW1(PER, m locations) / SW1(PER, all locations), with both SW1
values and vanilla's in the context, plus the validation errors. One seed each (3 seeds is too slow
here): differences of a few percent are within seed noise.
The demo maps are small (8x8, 4x4, 2x2 locations), so M = 4 subsamples layers 1-4 (64 and 16 locations).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import torch

from bench.timing import emit, progress, standalone_parser

__all__ = ["DEMO_LOCATIONS", "layer_sw1", "run"]

#: the subsampled setting compared with all locations (the recommended conv default)
DEMO_LOCATIONS = 4


def layer_sw1(run_dir: Path, x: torch.Tensor) -> dict[str, float]:
    """Per-layer sliced W1 to N(0, I) of the trained model in ``run_dir`` on images ``x``."""
    from analysis.distances import sliced_w1_to_normal
    from per_core.configs import TrainConfig
    from per_core.models import build_model
    from per_core.rundir import RunDir
    from per_core.samples import as_samples

    rd = RunDir(run_dir)
    cfg = TrainConfig.from_dict(rd.read_config())
    model = build_model(cfg.model, num_classes=10, in_channels=1, norm="none", **cfg.model_args)
    model.load_state_dict(rd.load_checkpoint()["model"])
    model.eval()
    rows: dict[str, torch.Tensor] = {}
    handles = [
        m.register_forward_hook(lambda mod, a, out, n=n: rows.__setitem__(n, as_samples(out)))  # (N*H*W, C)
        for n, m in model.pre_activations().items()
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return {n: sliced_w1_to_normal(r.double().numpy(), n_projections=256, seed=0) for n, r in rows.items()}


def run(quick: bool = False, device: str = "cpu") -> list[str]:
    """Train the three demo runs and compare the layers' SW1; returns the printed result lines."""
    from per_core.configs import get_preset
    from per_core.data import load_digits
    from per_core.train import train

    base = get_preset("demo").replace(record=None, device="cpu", seed=0)
    if quick:
        base = base.as_smoke().replace(epochs=1)
    runs = {
        "vanilla": base.replace(method="vanilla"),
        "per_all": base.replace(method="per", per_locations=None),
        f"per_m{DEMO_LOCATIONS}": base.replace(method="per", per_locations=DEMO_LOCATIONS),
    }
    x = load_digits().val_x if not quick else torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sw1, err = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in runs.items():
            progress(f"sw1_demo: training {name} ({cfg.epochs} epochs)")
            with contextlib.redirect_stdout(io.StringIO()):  # its epoch lines: only result lines go to stdout
                metrics = train(cfg, Path(tmp) / name, progress=False)
            err[name] = metrics[-1].get("val_error", float("nan"))
            sw1[name] = layer_sw1(Path(tmp) / name, x)
    sub = f"per_m{DEMO_LOCATIONS}"
    lines = []
    for layer in sw1["per_all"]:
        lines.append(
            emit(
                f"sw1_demo/{layer}",
                sw1[sub][layer] / sw1["per_all"][layer],
                per="per_all",
                sw1_per_m=sw1[sub][layer],
                sw1_per_all=sw1["per_all"][layer],
                sw1_vanilla=sw1["vanilla"][layer],
            )
        )
    mean = {k: sum(v.values()) / len(v) for k, v in sw1.items()}
    lines.append(
        emit(
            "sw1_demo/mean_over_layers",
            mean[sub] / mean["per_all"],
            per="per_all",
            **{f"sw1_{k}": v for k, v in mean.items()},
            **{f"val_error_{k}": v for k, v in err.items()},
        )
    )
    return lines


def main() -> None:
    run(standalone_parser(__doc__).parse_args().quick)


if __name__ == "__main__":
    main()
