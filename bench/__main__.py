"""``python -m bench [--quick] [--only NAMES] [--device cpu|cuda]``: run the benchmarks, print ratios."""

from __future__ import annotations

import argparse
import importlib
import sys
import time

import torch

from bench import BENCHMARKS, GPU_BENCHMARKS
from bench.timing import add_malloc_flag, progress, setup_malloc, show_machine


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny shapes and few repeats: a smoke run, not a result")
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    p.add_argument("--device", default="cpu", help=f"cpu or cuda (only {', '.join(GPU_BENCHMARKS)} use it)")
    add_malloc_flag(p)
    args = p.parse_args(argv)
    setup_malloc(args.malloc)
    names = list(BENCHMARKS) if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; available: {', '.join(BENCHMARKS)}")
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print("bench: --device cuda asked for, but CUDA is not available", file=sys.stderr)
            return 2
        skipped = [n for n in names if n not in GPU_BENCHMARKS]
        if skipped:
            progress(f"CPU-only benchmarks skipped on {args.device}: {', '.join(skipped)}")
        names = [n for n in names if n in GPU_BENCHMARKS]
    show_machine()
    progress(f"command: python -m bench {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    t_all = time.perf_counter()
    for i, name in enumerate(names, 1):
        progress(f"[{i}/{len(names)}] {name} ...")
        t0 = time.perf_counter()
        module = importlib.import_module(f"bench.{name}")
        module.run(quick=args.quick, device=args.device)
        progress(f"[{i}/{len(names)}] {name} done in {time.perf_counter() - t0:.0f} s")
    progress(f"all done in {time.perf_counter() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
