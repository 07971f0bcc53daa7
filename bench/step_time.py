"""Goal 1: training-step time and peak memory of PER (s = 256) and BN, as ratios to the vanilla step.

Time: one SGD step (forward, cross-entropy, backward, optimizer step) of vanilla, BN (recurrent BN
for the LSTM, the Table 3 baseline), PER (s = 256; for the conv nets with the recommended
``locations=4`` per image) and, for the conv nets, PER on all spatial locations (``per_all``);
interleaved in one process, median of the paired ratios after a warm-up step.

Peak memory: the extra bytes one step needs on top of what stays resident (model, gradients,
optimizer state, data), measured by :mod:`bench.memory` (a fresh subprocess per variant whose RSS
follows live tensor bytes; ``torch.cuda.max_memory_allocated`` on CUDA): activations saved for
backward, what PER holds between forward and backward, and temporaries.
"""

from __future__ import annotations

from bench import memory
from bench.common import SHAPES, make_step, step_variants
from bench.timing import emit, interleaved, progress, quiet_wait, standalone_parser

__all__ = ["memory_setup", "run"]


def memory_setup(model: str, variant: str, quick: str = "", device: str = "cpu"):
    """The step whose peak memory :func:`bench.memory.measure` takes (string arguments: it runs in a child)."""
    return make_step(SHAPES[model], quick=quick == "quick", device=device, **step_variants(model)[variant])[0]


def run(quick: bool = False, device: str = "cpu", models: tuple[str, ...] = ("resnet56", "cnn11", "lstm")) -> list[str]:
    """Time (and memory) ratios for every model; returns the printed result lines."""
    lines = []
    repeats = {"resnet56": 21, "cnn11": 5, "lstm": 9}
    for model in models:
        shape = SHAPES[model]
        batch = shape.quick_batch if quick else shape.batch
        progress(f"step_time {model} batch {batch}: {', '.join(step_variants(model))}")
        fns = {}
        per_obj = None
        for name, kw in step_variants(model).items():
            fns[name], _, per = make_step(shape, quick=quick, device=device, **kw)
            if name == "per":
                per_obj = per
        t = interleaved(fns, repeats=2 if quick else repeats[model], warmup=1, quiet_wait=quiet_wait(quick, device))
        base_ms = 1e3 * t.median("vanilla")
        locs = per_obj.locations if per_obj is not None else None
        for name in fns:
            if name == "vanilla":
                continue
            lo, hi = t.spread(name, "vanilla")
            ctx = {"per": "vanilla", "batch": batch, "vanilla_ms": base_ms, "spread": f"{lo:.3f}-{hi:.3f}"}
            rounds = f"{t.quiet_rounds(name, 'vanilla')}/{len(t.seconds[name])}"
            ctx.update(cpu_ratio=t.cpu_ratio(name, "vanilla"), ext_load=t.external_load(), quiet_rounds=rounds)
            if name == "per":
                ctx.update(slices=per_obj.n_slices, locations=locs if locs is not None else "all")
            lines.append(emit(f"step_time/{model}/{name}", t.ratio(name, "vanilla"), device=device, **ctx))
        if "per" in fns and "bn" in fns:  # goal 1's "at or below BN": one paired ratio, not two medians compared
            lo, hi = t.spread("per", "bn")
            rounds = f"{t.quiet_rounds('per', 'bn')}/{len(t.seconds['per'])}"
            lines.append(emit(f"step_time/{model}/per_vs_bn", t.ratio("per", "bn"), device=device, per="bn",
                              batch=batch, spread=f"{lo:.3f}-{hi:.3f}", quiet_rounds=rounds))  # fmt: skip
        if not device.startswith("cuda") and not memory.available():
            progress("peak memory: /proc/self/clear_refs unavailable here; skipped")
            continue
        q = "quick" if quick else ""
        if quick and model != models[0]:
            continue  # the smoke run exercises the memory path once
        names = ["vanilla", "per"] if quick else list(fns)
        peaks = {
            name: memory.measure(
                "bench.step_time:memory_setup", model, name, q, device, device=device, in_process=quick
            )
            for name in names
        }
        if peaks.get("vanilla") is None:
            continue
        v = peaks["vanilla"]["peak_extra"]
        for name, p in peaks.items():
            if name == "vanilla" or p is None:
                continue
            lines.append(
                emit(
                    f"step_mem/{model}/{name}",
                    p["peak_extra"] / max(v, 4096.0),  # one page: an in-process smoke run can see 0
                    per="vanilla",
                    what="peak_extra_bytes_of_one_step",
                    vanilla_MiB=v / 2**20,
                    variant_MiB=p["peak_extra"] / 2**20,
                    total_ratio=(p["base"] + p["peak_extra"]) / (peaks["vanilla"]["base"] + v),
                    device=device,
                )
            )
    return lines


def main() -> None:
    p = standalone_parser(__doc__, device=True)
    p.add_argument("--models", default="resnet56,cnn11,lstm")
    args = p.parse_args()
    run(args.quick, args.device, tuple(args.models.split(",")))


if __name__ == "__main__":
    main()
