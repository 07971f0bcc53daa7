"""Goal 5: ActivationRecorder overhead per training step (recorded / unrecorded), demo net and 11-layer CNN.

The recorder is built the way the trainer builds it (``per_core.train.build``), from the defaults of
:class:`per_core.configs.TrainConfig`: ``train_every=record_train_every`` (50),
``reservoir_every=record_reservoir_every``, ``reservoir_splits=("train", "eval")``, layers ``"all"``,
in recorded epoch 1 (a reservoir epoch when ``1 % record_reservoir_every == 0``; printed as
``reservoir=``). Variants, interleaved with the unrecorded run of the same model:

- ``every50``: the trainer's setting, timed directly: one call is ``record_train_every`` consecutive
  training steps (exactly one recorded, the others only count calls in the hooks) against as many
  unrecorded steps; the ratio is the mean overhead per step of a recorded epoch (41 rounds for the
  demo, 3 for the 11-layer CNN: one round is 100 steps of ~1.2 s);
- ``every1`` (context): the same recorder with ``train_every=1``, one step against one step: what a
  recorded step costs by itself.

When a ratio is over the 5 % goal, one recorded and one unrecorded step are profiled
(``torch.profiler``) and the ops that the recorder adds are printed, largest first.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from bench.timing import emit, interleaved, progress, standalone_parser, sync
from per_core.configs import TrainConfig
from per_core.models import build_model

__all__ = ["run"]

GOAL = 1.05
#: name -> (model, kwargs, batch, quick batch, input shape (C, H, W), quick input shape)
MODELS = {
    "demo": (
        "small_cnn",
        {"width": 32, "depth": 6, "activation": "elu", "in_channels": 1},
        64,
        4,
        (1, 8, 8),
        (1, 8, 8),
    ),
    "cnn11": ("cnn11", {"activation": "elu"}, 250, 2, (3, 32, 32), (3, 8, 8)),
}


def recorder_args(train_every: int | None = None) -> dict:
    """The ActivationRecorder arguments of ``per_core.train.build`` for a default TrainConfig."""
    cfg = TrainConfig()
    return {
        "train_every": cfg.record_train_every if train_every is None else train_every,
        "reservoir_every": cfg.record_reservoir_every,
        "reservoir_splits": ("train", "eval"),
    }


def _step(
    model_name: str, quick: bool, recorder: dict | None, device: str = "cpu", steps: int = 1
) -> tuple[Callable[..., None], object]:
    """A call runs ``steps`` training steps of ``model_name`` on fixed random data, recorded by ``recorder``."""
    from analysis.recorder import ActivationRecorder

    name, kwargs, batch, qbatch, chw, qchw = MODELS[model_name]
    torch.manual_seed(0)
    model = build_model(name, **kwargs).to(device)
    rec = None
    if recorder is not None:
        rec = ActivationRecorder(model, "all", seed=0, **recorder)
        rec.start_epoch(1)  # a recorded epoch (reservoir: see recorder_args)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    b = qbatch if quick else batch
    x, y = torch.randn(b, *(qchw if quick else chw), generator=g), torch.randint(0, 10, (b,), generator=g)
    x, y = x.to(device), y.to(device)

    def step(n: int = steps) -> None:
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        sync(device)

    return step, rec


def _profile_diff(model_name: str, quick: bool, top: int = 10) -> list[str]:
    """Self CPU ms per op of a recorded step minus an unrecorded one, largest first."""
    from torch.profiler import ProfilerActivity, profile

    def table(recorder: dict | None) -> dict[str, float]:
        step, _ = _step(model_name, quick, recorder)
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        return {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}

    base, rec = table(None), table(recorder_args(train_every=1))
    diff = sorted(((rec.get(k, 0.0) - base.get(k, 0.0), k) for k in rec), reverse=True)[:top]
    total = sum(rec.values()) - sum(base.values())
    out = [f"recorder profile {model_name}: recorded step +{total:.1f} ms self CPU over unrecorded; top ops:"]
    out += [f"  {k:<32s} +{ms:8.1f} ms" for ms, k in diff]
    return out


def run(quick: bool = False, device: str = "cpu") -> list[str]:
    """Overhead ratios for both models; returns the printed result lines."""
    lines = []
    trainer_args, args1 = recorder_args(), recorder_args(train_every=1)
    period = trainer_args["train_every"]
    reservoir = 1 % trainer_args["reservoir_every"] == 0
    for model_name in MODELS:
        batch = MODELS[model_name][3] if quick else MODELS[model_name][2]
        progress(f"recorder {model_name} batch {batch}: every1")
        single = {
            "unrecorded": _step(model_name, quick, None, device)[0],
            "every1": _step(model_name, quick, args1, device)[0],
        }
        reps = 2 if quick else (7 if model_name == "cnn11" else 21)
        t1 = interleaved(single, repeats=reps, warmup=1, quiet_wait=0 if quick else 30)
        progress(f"recorder {model_name}: every{period} ({period}-step calls)")
        blocks = {
            "unrecorded": _step(model_name, quick, None, device, steps=period)[0],
            f"every{period}": _step(model_name, quick, trainer_args, device, steps=period)[0],
        }
        for block in blocks.values():  # warm-up: one step each (a call still holds one recorded step)
            block(1)
        reps = 2 if quick else (3 if model_name == "cnn11" else 41)
        t20 = interleaved(blocks, repeats=reps, warmup=0, quiet_wait=0 if quick else 30)
        base_ms = 1e3 * t1.median("unrecorded")
        ctx = {"per": "unrecorded", "batch": batch, "unrecorded_ms": base_ms, "reservoir": reservoir, "goal": GOAL}
        worst = 0.0
        for name, t in ((f"every{period}", t20), ("every1", t1)):
            r, (lo, hi) = t.ratio(name, "unrecorded"), t.spread(name, "unrecorded")
            worst = max(worst, r) if name != "every1" else worst
            extra = {"cpu_ratio": t.cpu_ratio(name, "unrecorded"), "quiet_rounds": t.quiet_rounds(name, "unrecorded")}
            extra["ext_load"] = t.external_load()
            lines.append(emit(f"recorder/{model_name}/{name}", r, spread=f"{lo:.3f}-{hi:.3f}", **ctx, **extra))
        if worst > GOAL and not quick and device == "cpu":
            for line in _profile_diff(model_name, quick):
                progress(line)
    return lines


def main() -> None:
    p = standalone_parser(__doc__, device=True)
    a = p.parse_args()
    run(a.quick, a.device)


if __name__ == "__main__":
    main()
