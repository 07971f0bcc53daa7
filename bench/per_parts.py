"""Goal 1, the diagnosis: where PER's share of a conv-net step goes, timed inside real steps.

:mod:`bench.step_time` says how much PER costs, as a paired ratio whose run-to-run noise (3-5 % on
a 2-core machine) is as large as the differences between ways of doing PER's work. This module says
where the cost goes, with far less noise, by timing PER's own code inside the step: its forward
hooks (location draw, gather, hook registration), the batched computation at the first backward
hook, and the per-layer backward hooks (the scatter-add). Timing hooks run around PER's own, on the
same module and the same output tensor (registered before and after PER's), so PER's code is
untouched: its in-place test (:func:`per_core.inplace.owns`) counts references, which a wrapper
around its hook would change.

Result lines (``MODEL`` = resnet56, or resnet20 in ``--quick`` mode):

- ``per_parts/MODEL/step``: PER step (with the timing hooks) / vanilla step (without), the median
  of paired rounds as in step_time; ``timing_hooks`` says what the timing hooks alone cost.
- ``per_parts/MODEL/in_per``: (vanilla step + time inside PER's code) / vanilla step: the ratio PER
  would have if it slowed nothing else; the context gives the milliseconds of each part per step.
- ``per_parts/MODEL/timing_hooks``: vanilla step with the timing hooks (and nothing between them) /
  vanilla step.
- ``per_parts/MODEL/rest``: (PER step - time inside PER's code) / vanilla step with the timing hooks,
  the median over all rounds of the per-round ratio: whether the model's own work (convolutions, ...)
  runs slower next to PER (1 = not at all).
- ``per_parts/MODEL/compute_in_step``: the batched computation's time inside the step / the same
  computation on rows of the same shapes called back to back (warm caches).
- ``per_parts/MODEL/floor``: a vanilla step with the data movement of PER's sampled design and nothing else
  (no PER math, no bookkeeping): at each regularized layer's output draw m locations per image and gather
  their rows in forward, scatter-add them into the output's gradient in backward (``_floor_hooks``) /
  vanilla step; ``floor_vs_bn`` the same step over the BN step and ``per_vs_floor`` the PER step (with the
  timing hooks) over it, all paired per round. Where ``floor_vs_bn`` is already near 1, cheaper PER code
  alone cannot bring this design to BN's cost on that machine.
- ``per_parts/MODEL/first_op``: a location draw (one ``torch.randint``) at a layer's output inside a
  vanilla step / the same draw repeated at once: how much slower the first small op after the
  model's large kernels runs (the data and code it needs were evicted from the caches).
"""

from __future__ import annotations

import statistics
import time
import weakref
from collections.abc import Callable

import torch
from torch import Tensor, nn

from bench.common import RECOMMENDED_LOCATIONS, SHAPES, make_step
from bench.timing import emit, interleaved, progress, quiet_wait, standalone_parser
from per_core.inplace import owns
from per_core.regularizer import PER, _Sampled

__all__ = ["run"]

_PARTS = ("forward", "compute", "backward")


class _Clock:
    """Seconds spent inside PER's hooks and its batched computation, summed over the steps since ``reset``."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(_PARTS, 0.0)
        self.steps = 0
        self.row_shapes: list[torch.Size] = []  # the sampled rows of the last computation: its shapes, for replay
        self._start: float | None = None

    def reset(self) -> None:
        self.seconds = dict.fromkeys(_PARTS, 0.0)
        self.steps = 0

    def per_step_ms(self) -> dict[str, float]:
        return {k: 1e3 * v / max(1, self.steps) for k, v in self.seconds.items()}

    def start(self) -> None:
        self._start = time.perf_counter()

    def stop(self, part: str) -> None:
        assert self._start is not None
        self.seconds[part] += time.perf_counter() - self._start
        self._start = None


def _instrument(modules: dict[str, nn.Module], clock: _Clock, per: PER | None) -> None:
    """Time ``per``'s forward hooks, backward hooks and batched computation with hooks of our own around them
    (on ``modules`` with no PER: the cost of the timing hooks themselves)."""

    def start_backward(grad: Tensor) -> None:
        clock.start()

    def stop_backward(grad: Tensor) -> None:
        clock.stop("backward")

    def start_forward(mod: nn.Module, args: tuple, out: Tensor) -> None:
        if out.requires_grad:
            out.register_hook(start_backward)  # runs before the tensor hook PER registers next
        clock.start()

    def stop_forward(mod: nn.Module, args: tuple, out: Tensor) -> None:
        clock.stop("forward")
        if out.requires_grad:
            out.register_hook(stop_backward)  # after PER's

    for module in modules.values():
        module.register_forward_hook(start_forward, prepend=True)
        module.register_forward_hook(stop_forward)
    if per is None:
        return
    compute = per._compute_pending

    def timed_compute() -> None:
        clock.row_shapes = [e.rows.shape for ref in per._pending if (e := ref()) is not None]
        t0 = time.perf_counter()
        compute()
        elapsed = time.perf_counter() - t0
        # the computation runs inside the first backward hook: count it once, as compute only
        clock.seconds["compute"] += elapsed
        clock.seconds["backward"] -= elapsed

    per._compute_pending = timed_compute  # type: ignore[method-assign]


def _compute_alone(per: PER, shapes: list[torch.Size], repeats: int) -> float:
    """Median seconds of PER's batched computation on random rows of ``shapes``, called back to back."""
    entries = [_Sampled("replay", torch.randn(shape), torch.empty(0, dtype=torch.long)) for shape in shapes]

    def once() -> None:
        for e in entries:
            e.grad = None
        per._pending = [weakref.ref(e) for e in entries]
        per._compute_pending()

    once()
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds)


def _first_op_ratio(step: Callable[[], None], model: nn.Module, batch: int) -> float:
    """Median over layers and steps of (first randint at a layer's output) / (the same randint again)."""
    gen = torch.Generator().manual_seed(0)
    ratios: list[float] = []

    def probe(mod: nn.Module, args: tuple, out: Tensor) -> None:
        t0 = time.perf_counter()
        torch.randint(0, 256, (batch, RECOMMENDED_LOCATIONS), generator=gen)
        t1 = time.perf_counter()
        torch.randint(0, 256, (batch, RECOMMENDED_LOCATIONS), generator=gen)
        ratios.append((t1 - t0) / max(time.perf_counter() - t1, 1e-9))

    handles = [m.register_forward_hook(probe) for m in model.pre_activations().values()]
    step()
    ratios.clear()  # the first step warms up
    for _ in range(2):
        step()
    for h in handles:
        h.remove()
    return statistics.median(ratios)


def _floor_hooks(model: nn.Module, m: int) -> None:
    """Attach the data movement of a location-sampled regularizer and nothing else to ``model.pre_activations()``.

    As PER's CPU path (equal strata: one random position in each of m strata per image, gathered from the
    (N, C, L) view; in backward, added into the gradient in place when nothing else holds it), without
    slices, matmuls, erf or PER's Python bookkeeping. The gathered rows themselves are added (any values
    cost the same). Layers whose L is not a multiple of m, or not above it, are left alone.
    """
    starts: dict[int, Tensor] = {}

    def forward_hook(mod: nn.Module, args: tuple, out: Tensor) -> None:
        flat = out.detach().flatten(2)
        n, c, n_loc = flat.shape
        if not out.requires_grad or n_loc <= m or n_loc % m:
            return
        if n_loc not in starts:
            starts[n_loc] = torch.arange(m, device=out.device) * (n_loc // m)
        index = torch.randint(0, n_loc // m, (n, m), device=out.device).add_(starts[n_loc])
        index = index.unsqueeze(1).expand(-1, c, -1)
        rows = flat.gather(-1, index)

        def grad_hook(grad: Tensor) -> Tensor:
            out_grad = grad if owns(grad) else grad.clone(memory_format=torch.contiguous_format)
            out_grad.view(n, c, n_loc).scatter_add_(-1, index, rows)
            return out_grad

        out.register_hook(grad_hook)

    for module in model.pre_activations().values():
        module.register_forward_hook(forward_hook)


def run(quick: bool = False, device: str = "cpu", models: tuple[str, ...] = ("resnet56",)) -> list[str]:
    """The result lines for every model (the conv nets, where PER samples locations)."""
    return [line for model in models for line in _one_model(model, quick, device)]


def _one_model(model_name: str, quick: bool, device: str) -> list[str]:
    shape = SHAPES[model_name]
    batch = shape.quick_batch if quick else shape.batch
    label = shape.quick_model if quick and shape.quick_model else model_name
    progress(f"per_parts {label} batch {batch}: vanilla and PER steps, PER's parts timed inside")
    vanilla, _, _ = make_step(shape, "vanilla", quick=quick, device=device)
    timed_vanilla, model, _ = make_step(shape, "vanilla", quick=quick, device=device)
    _instrument(model.pre_activations(), _Clock(), None)
    per_step, _, per = make_step(shape, "per", quick=quick, device=device, locations=RECOMMENDED_LOCATIONS)
    assert per is not None
    clock = _Clock()
    _instrument(per.modules, clock, per)
    inside_calls: list[float] = []  # seconds inside PER's code, per call of timed_per, in order

    def timed_per() -> None:
        before = sum(clock.seconds.values())
        per_step()
        clock.steps += 1
        inside_calls.append(sum(clock.seconds.values()) - before)

    floor, floor_model, _ = make_step(shape, "vanilla", quick=quick, device=device)
    _floor_hooks(floor_model, RECOMMENDED_LOCATIONS)
    bn, _, _ = make_step(shape, "bn", quick=quick, device=device)
    for warm in (vanilla, timed_vanilla, per_step, floor, bn):  # one warm-up step each, PER's outside the clock
        warm()
    clock.reset()
    fns = {"vanilla": vanilla, "timing_hooks": timed_vanilla, "per": timed_per, "floor": floor, "bn": bn}
    t = interleaved(fns, repeats=2 if quick else 15, warmup=0, quiet_wait=quiet_wait(quick, device))
    base, per_s = t.median("vanilla"), t.median("per")
    parts = clock.per_step_ms()
    inside = sum(parts.values()) / 1e3
    ctx = {"batch": batch, "vanilla_ms": 1e3 * base, "per_ms": 1e3 * per_s}
    lines = [emit(f"per_parts/{label}/step", t.ratio("per", "vanilla"), per="vanilla", **ctx)]
    ms = {f"{k}_ms": v for k, v in parts.items()}
    lines.append(emit(f"per_parts/{label}/in_per", (base + inside) / base, per="vanilla", **ms, **ctx))
    lines.append(emit(f"per_parts/{label}/timing_hooks", t.ratio("timing_hooks", "vanilla"), per="vanilla"))
    # paired per round (all rounds: the quiet-round filter of the other ratios needs Timings' own pairs)
    rest = statistics.median(
        (p - i) / h for p, i, h in zip(t.seconds["per"], inside_calls, t.seconds["timing_hooks"], strict=True)
    )
    lines.append(emit(f"per_parts/{label}/rest", rest, per="timing_hooks", inside_ms=1e3 * inside, **ctx))
    alone = _compute_alone(per, clock.row_shapes, repeats=3 if quick else 20)
    ratio = parts["compute"] / (1e3 * alone)
    layers = len(clock.row_shapes)
    lines.append(emit(f"per_parts/{label}/compute_in_step", ratio, per="alone", alone_ms=1e3 * alone, layers=layers))
    for name, variant, base_name in (
        ("floor", "floor", "vanilla"),
        ("floor_vs_bn", "floor", "bn"),
        ("per_vs_floor", "per", "floor"),
    ):
        spread = "{:.3f}-{:.3f}".format(*t.spread(variant, base_name))
        lines.append(emit(f"per_parts/{label}/{name}", t.ratio(variant, base_name), per=base_name, spread=spread))
    probe_step, probe_model, _ = make_step(shape, "vanilla", quick=quick, device=device)
    lines.append(emit(f"per_parts/{label}/first_op", _first_op_ratio(probe_step, probe_model, batch), per="again"))
    return lines


def main() -> None:
    p = standalone_parser(__doc__)
    p.add_argument("--models", default="resnet56", help="comma-separated: resnet56, cnn11")
    args = p.parse_args()
    run(args.quick, "cpu", tuple(args.models.split(",")))


if __name__ == "__main__":
    main()
