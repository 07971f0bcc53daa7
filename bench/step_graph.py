"""Goal 1 on a GPU, without the host: the training step captured in a CUDA graph, PER and BN over vanilla.

On a GPU the eager ResNet-56 and CNN-11 steps are launch-bound (bench/RESULTS.md, section GPU):
PER's hooks add host work and launches per layer, not much device time. A CUDA graph replays the
whole step (forward, backward with PER's hooks, SGD update) without Python or launch overhead, so
the ratio of graphed steps is PER's device-time cost alone, which is what a training loop that
captures its step would pay. Each variant is warmed up on a side stream (3 eager steps), captured
once, then replayed; PER's generators are registered with the graph so that every replay draws new
locations and slices. Lines: ``step_graph/<model>/<variant> RATIO`` (graphed variant / graphed
vanilla) with ``eager_ratio`` (the same variant's eager step / eager vanilla, this run) and
``graph_speedup`` (eager / graphed, the variant's own), all from one interleaving of the eager and
the graphed steps (paired by round). A variant whose capture fails prints why and is left out.
Needs CUDA: on a CPU it prints one SKIPPED line.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bench.common import RECOMMENDED_LOCATIONS, SHAPES, make_step
from bench.timing import emit, interleaved, progress, standalone_parser
from per_core.regularizer import PER

__all__ = ["graphed", "run"]

MODELS = ("resnet56", "cnn11")
VARIANTS: dict[str, dict[str, object]] = {
    "vanilla": {"method": "vanilla"},
    "bn": {"method": "bn"},
    "per": {"method": "per", "locations": RECOMMENDED_LOCATIONS},
}


def graphed(step: Callable[[], None], per: PER | None, device: str) -> Callable[[], None]:
    """``step`` (no synchronization inside) captured in a CUDA graph; the returned call replays it and syncs.

    PER's CUDA generators (slices and locations, made by its first forward, in the warm-up) are
    registered with the graph so that replays advance them. The returned call holds ``step`` and
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
    gens = [*per._generators.items(), *per._location_generators.items()] if per is not None else []
    for dev, gen in gens:  # the slices' and, with a locations_seed, the locations' own
        if dev.type == "cuda":
            graph.register_generator_state(gen)
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
        progress(f"step_graph {model}: capturing {', '.join(VARIANTS)}")
        eager, graphs = {}, {}
        for name, kw in VARIANTS.items():
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
    return lines


def main() -> None:
    args = standalone_parser(__doc__, device=True).parse_args()
    run(quick=args.quick, device=args.device)


if __name__ == "__main__":
    main()
