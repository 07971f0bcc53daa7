"""Goal 1 in separate processes: step time with glibc malloc's defaults and with :func:`per_core.allocator.tune_malloc`.

:mod:`bench.step_time` interleaves its variants in one process, which shares one heap between them:
memory one model frees serves the next, so that the page faults a model causes on its own (malloc
trimming the heap between steps, see :mod:`per_core.allocator`) land on whichever variant comes
next, or on none. Training runs one model per process. Here every (variant, malloc) pair runs in
a fresh process (``python -m bench.allocator --child``) that times ``steps`` steps after a warm-up and
counts the page faults and the peak resident memory; the pairs run in rotated order over the rounds.
Each child sets malloc up itself (``--malloc`` of the parent changes nothing here); the user's own
malloc variables reach every child, and a "tuned" child they keep untuned marks the lines
``tuned=no``. A child that fails (killed when memory runs out, say) is reported on a progress line and
its model gets no lines.

Result lines (``MODEL`` = resnet56, or resnet20 in ``--quick`` mode):

- ``allocator/MODEL/VARIANT``: step time with malloc tuned / with glibc's defaults, same variant;
  context: minor page faults per step and peak resident MiB of each.
- ``allocator/MODEL/VARIANT_vs_vanilla_MALLOC``: the variant's step / the vanilla step, both under the
  same malloc setting (medians of per-round ratios).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from bench.common import RECOMMENDED_LOCATIONS, SHAPES, make_step
from bench.memory import ROOT, child_env
from bench.timing import emit, progress, standalone_parser
from per_core.allocator import tune_malloc

__all__ = ["run"]

_VARIANTS = {"vanilla": {}, "bn": {}, "per": {"locations": RECOMMENDED_LOCATIONS}}
_MALLOC = ("default", "tuned")


def _child(model: str, variant: str, malloc: str, steps: int, quick: bool) -> dict[str, float]:
    """In a fresh process: median seconds, mean minor page faults per step and peak RSS of one variant."""
    done = tune_malloc() if malloc == "tuned" else "default"
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    step = make_step(SHAPES[model], variant, quick=quick, **_VARIANTS[variant])[0]
    for _ in range(2):
        step()
    seconds, faults = [], []
    for _ in range(steps):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
    return {"seconds": statistics.median(seconds), "faults": statistics.mean(faults), "malloc": done, "rss": peak}


def _spawn(model: str, variant: str, malloc: str, steps: int, quick: bool) -> dict[str, float]:
    cmd = [sys.executable, "-m", "bench.allocator", "--child", model, variant, malloc, str(steps)]
    env = child_env(BENCH_THREADS=str(torch.get_num_threads()))
    env.pop("PER_MALLOC", None)  # the child decides by its arguments
    out = subprocess.run(cmd + (["--quick"] if quick else []), capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        how = f"killed by signal {-out.returncode}" if out.returncode < 0 else f"exit status {out.returncode}"
        tail = out.stderr.strip()[-300:] or "no output (out of memory?)"
        raise _ChildFailed(f"bench.allocator child {model} {variant}/{malloc}: {how}: {tail}")
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise _ChildFailed(f"bench.allocator child {model} {variant}/{malloc}: no result line") from None


class _ChildFailed(RuntimeError):
    pass


def run(
    quick: bool = False, device: str = "cpu", models: tuple[str, ...] = ("resnet56",), rounds: int = 3
) -> list[str]:
    """Tuned / default step time per variant, and each variant over vanilla under both settings."""
    lines = []
    for model in models:
        try:
            lines += _one_model(model, quick, rounds)
        except _ChildFailed as err:
            progress(f"{err}; no result for {model}")
    return lines


def _one_model(model: str, quick: bool, rounds: int) -> list[str]:
    rounds, steps = (1, 2) if quick else (rounds, 8)
    shape = SHAPES[model]
    label = shape.quick_model if quick and shape.quick_model else model
    pairs = [(v, m) for v in _VARIANTS for m in _MALLOC]
    progress(f"allocator {label}: {len(pairs)} processes x {rounds} rounds, {steps} steps each")
    res: dict[tuple[str, str], list[dict[str, float]]] = {p: [] for p in pairs}
    for r in range(rounds):
        k = r % len(pairs)
        for pair in pairs[k:] + pairs[:k]:
            res[pair].append(_spawn(model, *pair, steps, quick))
    untuned = sorted({x["malloc"] for (v, m), xs in res.items() if m == "tuned" for x in xs} - {"tuned"})
    if untuned:
        progress(f"malloc was not tuned in the 'tuned' children: {'; '.join(untuned)}")
    tuned = "no" if untuned else "yes"

    def ratio(a: tuple[str, str], b: tuple[str, str]) -> float:  # median of the per-round ratios
        return statistics.median(x["seconds"] / y["seconds"] for x, y in zip(res[a], res[b], strict=True))

    lines = []
    for v in _VARIANTS:
        ctx = {f"faults_{m}": statistics.mean(x["faults"] for x in res[(v, m)]) for m in _MALLOC}
        ctx.update({f"rss_MiB_{m}": statistics.median(x["rss"] for x in res[(v, m)]) for m in _MALLOC})
        ms = {f"ms_{m}": 1e3 * statistics.median(x["seconds"] for x in res[(v, m)]) for m in _MALLOC}
        r = ratio((v, "tuned"), (v, "default"))
        lines.append(emit(f"allocator/{label}/{v}", r, per="default", **ms, **ctx, processes=rounds, tuned=tuned))
    for v in ("bn", "per"):
        for m in _MALLOC:
            r = ratio((v, m), ("vanilla", m))
            lines.append(emit(f"allocator/{label}/{v}_vs_vanilla_{m}", r, per="vanilla", processes=rounds, tuned=tuned))
    return lines


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        model, variant, malloc, steps = sys.argv[2:6]
        print(json.dumps(_child(model, variant, malloc, int(steps), "--quick" in sys.argv)))
        return 0
    p = standalone_parser(__doc__)
    p.add_argument("--models", default="resnet56", help="comma-separated: resnet56, cnn11, lstm")
    p.add_argument("--rounds", type=int, default=3, help="processes per (variant, malloc) pair (default 3)")
    args = p.parse_args()
    return 0 if run(args.quick, "cpu", tuple(args.models.split(",")), args.rounds) else 1  # no result: failed


if __name__ == "__main__":
    sys.exit(main())
