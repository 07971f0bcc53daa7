"""Goal 1 on a GPU, without the host: the training step captured in a CUDA graph, PER and BN over vanilla.

On a GPU the eager ResNet-56 and CNN-11 steps are launch-bound (bench/RESULTS.md, section GPU):
PER's hooks add host work and launches per layer, not much device time. A CUDA graph replays the
whole step (forward, backward with PER's hooks, SGD update) without Python or launch overhead, so
the ratio of graphed steps is PER's device-time cost alone, which is what a training loop that
captures its step would pay. The variants are goal 1's (``bench.common.step_variants``: vanilla, BN
or recurrent BN, PER with m = 4 locations per image and on all locations for the conv nets). Each
variant is warmed up on a side stream (3 eager steps), captured once, then replayed; PER's
generators are registered with the graph so that every replay draws new locations and slices. Lines:
``step_graph/<model>/<variant> RATIO`` (graphed variant / graphed vanilla) with ``eager_ratio`` (the
same variant's eager step / eager vanilla, this run) and ``graph_speedup`` (eager / graphed, the
variant's own), all from one interleaving of the eager and the graphed steps (paired by round), and
``step_graph/<model>/per_vs_bn`` (graphed PER / graphed BN, paired). A variant whose capture fails
prints why and is left out.
Needs CUDA: on a CPU it prints one SKIPPED line.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bench.common import SHAPES, make_step, step_variants
from bench.timing import emit, interleaved, progress, standalone_parser
from per_core.regularizer import PER

__all__ = ["graphed", "run"]

MODELS = ("resnet56", "cnn11", "lstm")


def graphed(step: Callable[[], None], per: PER | None, device: str) -> Callable[[], None]:
    """``step`` (no synchronization inside) captured in a CUDA graph; the returned call replays it and syncs.

    PER's generators (slices and locations) are registered with the graph
    (:meth:`per_core.PER.register_with_graph`) so that replays advance them. The returned call holds ``step`` and
    ``per``: a graph holds raw addresses, not tensors, so without them the model, its optimizer
    state and the inputs would be freed and every replay would write into whatever reuses their
    memory (the first run on a GPU, H200 run G3, failed so: a target tensor overwritten, an
    out-of-range class index).
    """
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    if per is not None:
        per.register_with_graph(graph, device)
    with torch.cuda.graph(graph):
        step()

    def replay() -> None:
        graph.replay()
        torch.cuda.synchronize(device)

    replay.keep_alive = (step, per)  # type: ignore[attr-defined]
    return replay


def run(quick: bool = False, device: str = "cpu", models: tuple[str, ...] = MODELS) -> list[str]:
    """Ratios of graphed steps for each model; one SKIPPED line without CUDA."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        line = "step_graph/all SKIPPED (needs CUDA: graph capture)"
        print(line, flush=True)
        return [line]
    lines = []
    for model in models:
        shape = SHAPES[model]
        variants = step_variants(model)
        progress(f"step_graph {model}: capturing {', '.join(variants)}")
        eager, graphs = {}, {}
        for name, kw in variants.items():
            eager[name], _, _ = make_step(shape, quick=quick, device=device, **kw)
            step, _, per = make_step(shape, quick=quick, device=device, sync=False, **kw)
            try:
                graphs[name] = graphed(step, per, device)
            except Exception as exc:  # any capture failure: report it and go on
                progress(f"step_graph/{model}/{name}: capture failed: {type(exc).__name__}: {exc}"[:400])
        if "vanilla" not in graphs:
            continue
        # eager and graphed steps in one interleaving: every ratio below is paired by round
        fns = {**graphs, **{f"eager_{name}": eager[name] for name in graphs}}
        t = interleaved(fns, repeats=3 if quick else 21, warmup=1, quiet_wait=0)
        for name in graphs:
            if name == "vanilla":
                continue
            lo, hi = t.spread(name, "vanilla")
            lines.append(
                emit(
                    f"step_graph/{model}/{name}",
                    t.ratio(name, "vanilla"),
                    device=device,
                    vanilla_graph_ms=1e3 * t.median("vanilla"),
                    vanilla_eager_ms=1e3 * t.median("eager_vanilla"),
                    eager_ratio=t.ratio(f"eager_{name}", "eager_vanilla"),
                    graph_speedup=t.ratio(f"eager_{name}", name),
                    spread=f"{lo:.3f}-{hi:.3f}",
                )
            )
        if "per" in graphs and "bn" in graphs:  # "at or below BN" as one paired ratio, as in step_time
            lo, hi = t.spread("per", "bn")
            lines.append(emit(f"step_graph/{model}/per_vs_bn", t.ratio("per", "bn"), device=device, per="bn",
                              spread=f"{lo:.3f}-{hi:.3f}"))  # fmt: skip
    return lines


def main() -> None:
    args = standalone_parser(__doc__, device=True).parse_args()
    run(quick=args.quick, device=args.device)


if __name__ == "__main__":
    main()
