"""Goal 5: ActivationRecorder overhead per training step (recorded / unrecorded), demo net and 11-layer CNN.

Variants, interleaved with the unrecorded step of the same model:

- ``every1``: the recorder as the trainer builds it (``ActivationRecorder(model, "all", seed=0)``,
  default ``train_every=1``), in a train epoch without reservoir: every step records every layer;
- ``skipped``: a recorder whose ``train_every`` skips the step (its hooks only count calls);
- ``every20`` (derived, not timed: 20 steps of a 3-second step do not fit the budget): the mean
  overhead of a step with ``train_every=20``, ``1 + (every1 - 1) / 20 + (skipped - 1) * 19 / 20``.

When a ratio is over the 5 % goal, one recorded and one unrecorded step are profiled
(``torch.profiler``) and the ops that the recorder adds are printed, largest first, so that the
recorder's owner sees where the time goes.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import nn

from bench.timing import emit, interleaved, progress
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


def _step(model_name: str, quick: bool, recorder: dict | None) -> tuple[Callable[[], None], object]:
    from analysis.recorder import ActivationRecorder

    name, kwargs, batch, qbatch, chw, qchw = MODELS[model_name]
    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    rec = None
    if recorder is not None:
        rec = ActivationRecorder(model, "all", seed=0, **recorder)
        rec.start_epoch(1)  # epoch 1: not a reservoir epoch (reservoir_every=20)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    b = qbatch if quick else batch
    x, y = torch.randn(b, *(qchw if quick and qchw else chw), generator=g), torch.randint(0, 10, (b,), generator=g)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step, rec


def _profile_diff(model_name: str, quick: bool, top: int = 8) -> list[str]:
    """Self CPU ms per op of a recorded step minus an unrecorded one, largest first."""
    from torch.profiler import ProfilerActivity, profile

    def table(recorder: dict | None) -> dict[str, float]:
        step, _ = _step(model_name, quick, recorder)
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        return {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}

    base, rec = table(None), table({})
    diff = sorted(((rec.get(k, 0.0) - base.get(k, 0.0), k) for k in rec), reverse=True)[:top]
    total = sum(rec.values()) - sum(base.values())
    out = [f"recorder profile {model_name}: recorded step +{total:.1f} ms self CPU over unrecorded; top ops:"]
    out += [f"  {k:<32s} +{ms:8.1f} ms" for ms, k in diff]
    return out


def run(quick: bool = False, device: str = "cpu") -> list[str]:
    """Overhead ratios for both models; returns the printed result lines."""
    lines = []
    for model_name in MODELS:
        batch = MODELS[model_name][3] if quick else MODELS[model_name][2]
        progress(f"recorder {model_name} batch {batch}")
        fns = {
            "unrecorded": _step(model_name, quick, None)[0],
            "every1": _step(model_name, quick, {})[0],
            "skipped": _step(model_name, quick, {"train_every": 10**9})[0],
        }
        reps = 2 if quick else (7 if model_name == "cnn11" else 15)
        t = interleaved(fns, repeats=reps, warmup=1, quiet_wait=0 if quick else 30)
        r1, rs = t.ratio("every1", "unrecorded"), t.ratio("skipped", "unrecorded")
        base_ms = 1e3 * t.median("unrecorded")
        ctx = {"per": "unrecorded", "batch": batch, "unrecorded_ms": base_ms, "goal": GOAL}
        ctx["ext_load"] = t.external_load()
        for name, r in (("every1", r1), ("skipped", rs)):
            lo, hi = t.spread(name, "unrecorded")
            lines.append(emit(f"recorder/{model_name}/{name}", r, spread=f"{lo:.3f}-{hi:.3f}", **ctx))
        lines.append(
            emit(f"recorder/{model_name}/every20", 1 + (r1 - 1) / 20 + (rs - 1) * 19 / 20, derived=True, **ctx)
        )
        if r1 > GOAL and not quick:
            for line in _profile_diff(model_name, quick):
                progress(line)
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    run(p.parse_args().quick)


if __name__ == "__main__":
    main()
