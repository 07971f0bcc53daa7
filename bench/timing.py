"""Shared timing helpers: interleaved side-by-side measurements reported as ratios.

Absolute times on a shared 2-core machine drift with whatever else runs, so every benchmark
measures its variants *in one process, interleaved* (round r runs A, B, C, ... with the order
rotated by r), after warm-up calls, and reports the **median over rounds of the paired ratio**
``time(variant) / time(baseline)`` of the same round. Pairing cancels slow drifts; the median
ignores the rounds that another process disturbed.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from per_core.allocator import malloc_setting, tune_malloc

__all__ = [
    "Timings",
    "add_malloc_flag",
    "emit",
    "external_load",
    "interleaved",
    "machine",
    "progress",
    "quiet_wait",
    "setup_malloc",
    "show_machine",
    "sync",
    "wait_for_quiet",
]


#: A call during which other processes kept more cores busy than this counts as disturbed.
DISTURBED = 0.5
#: Clock ticks a call must last for its outside load to be measured: /proc/stat counts whole ticks (10 ms), so
#: a shorter call that crosses one tick reads as over half a core busy with nothing else running (a review
#: measured a filter that kept the rounds by the calls' own lengths, ratio 2.67 for a true 1.00).
MIN_TICKS = 20


@dataclass
class Timings:
    """Seconds per call of each variant, one entry per round (rounds are aligned across variants).

    Ratios use the *quiet* rounds only, those where other processes kept fewer than
    :data:`DISTURBED` cores busy during both calls of the pair (on a 2-core machine one busy
    neighbour can stall every 2-thread op for a scheduler time slice), when at least 3 rounds are
    quiet; otherwise all rounds. A call shorter than :data:`MIN_TICKS` clock ticks has no measured
    load (NaN) and counts as quiet: only the wait before the rounds guards it.
    """

    seconds: dict[str, list[float]] = field(default_factory=dict)
    cpu_seconds: dict[str, list[float]] = field(default_factory=dict)  # process CPU time, all threads
    external: dict[str, list[float]] = field(default_factory=dict)  # cores used by other processes per call

    def external_load(self) -> float:
        """Median over all calls of the cores other processes kept busy (NaN where /proc/stat is missing)."""
        values = [v for vs in self.external.values() for v in vs if not math.isnan(v)]
        return statistics.median(values) if values else float("nan")

    def _rounds(self, name: str, baseline: str) -> list[int]:
        n = len(self.seconds[name])
        ext_a, ext_b = self.external.get(name, []), self.external.get(baseline, [])
        if len(ext_a) != n or len(ext_b) != n:
            return list(range(n))
        quiet = [r for r in range(n) if not (ext_a[r] >= DISTURBED or ext_b[r] >= DISTURBED)]  # NaN: quiet
        return quiet if len(quiet) >= 3 else list(range(n))

    def quiet_rounds(self, name: str, baseline: str) -> int:
        """How many rounds :meth:`ratio` uses."""
        return len(self._rounds(name, baseline))

    def _pairs(self, data: dict[str, list[float]], name: str, baseline: str) -> list[float]:
        return [data[name][r] / data[baseline][r] for r in self._rounds(name, baseline)]

    def median(self, name: str) -> float:
        """Median seconds of one call of ``name`` (all rounds)."""
        return statistics.median(self.seconds[name])

    def ratio(self, name: str, baseline: str) -> float:
        """Median over (quiet) rounds of time(name) / time(baseline) measured in the same round."""
        return statistics.median(self._pairs(self.seconds, name, baseline))

    def cpu_ratio(self, name: str, baseline: str) -> float:
        """Like :meth:`ratio` for the process CPU time."""
        return statistics.median(self._pairs(self.cpu_seconds, name, baseline))

    def spread(self, name: str, baseline: str) -> tuple[float, float]:
        """(min, max) of the paired ratios used by :meth:`ratio`: how much the rounds disagreed."""
        pairs = self._pairs(self.seconds, name, baseline)
        return min(pairs), max(pairs)


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_jiffies() -> tuple[float, float] | None:
    """(busy, total) CPU jiffies of the whole machine from /proc/stat, or None where it does not exist."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def external_load(seconds: float = 0.5) -> float | None:
    """Cores kept busy by *other* processes during a short sleep (this process is idle meanwhile)."""
    a = _busy_jiffies()
    time.sleep(seconds)
    b = _busy_jiffies()
    if a is None or b is None or b[1] <= a[1]:
        return None
    return (os.cpu_count() or 1) * (b[0] - a[0]) / (b[1] - a[1])


def quiet_wait(quick: bool, device: str) -> float:
    """Seconds :func:`interleaved` waits for quiet cores: none in ``--quick`` runs, 5 on CUDA (a GPU run must end
    within ``bench/gpu.sh``'s time limit: 15 interleavings of 30 s would not), else 30."""
    return 0.0 if quick else 5.0 if device.startswith("cuda") else 30.0


def wait_for_quiet(max_wait: float = 30.0, threshold: float = 0.3) -> float | None:
    """Wait (up to ``max_wait`` s) until other processes use fewer than ``threshold`` cores; returns the last load."""
    deadline = time.monotonic() + max_wait
    load = external_load()
    while load is not None and load > threshold and time.monotonic() < deadline:
        load = external_load(1.0)
    return load


def interleaved(
    fns: Mapping[str, Callable[[], object]],
    repeats: int = 5,
    warmup: int = 1,
    quiet_wait: float = 30.0,
    collect: bool = False,
) -> Timings:
    """Time every callable ``repeats`` times, interleaved, after ``warmup`` untimed rounds.

    Round r calls the variants in the order of ``fns`` rotated by r (A B C, B C A, ...), so that no
    variant always runs first (cold caches) or right after the heaviest one. First it waits up to
    ``quiet_wait`` seconds for other processes to leave the cores (:func:`wait_for_quiet`). The
    garbage collector is off during the rounds (a collection inside a timed call would land on one
    variant only); ``collect=True`` runs it, untimed, before every call, for calls that leave
    reference cycles behind (matplotlib figures), which would otherwise pile up over the rounds.
    """
    names = list(fns)
    if quiet_wait > 0:
        wait_for_quiet(quiet_wait)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    out = Timings({n: [] for n in names}, {n: [] for n in names}, {n: [] for n in names})
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                if collect:
                    gc.collect()
                j0 = _busy_jiffies()
                c0, t0 = time.process_time(), time.perf_counter()
                fns[name]()
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                j1 = _busy_jiffies()
                out.seconds[name].append(wall)
                out.cpu_seconds[name].append(cpu)
                if j0 is not None and j1 is not None:  # machine busy time minus ours, in cores
                    load = max(0.0, ((j1[0] - j0[0]) / _CLK_TCK - cpu) / wall)
                    out.external[name].append(load if wall * _CLK_TCK >= MIN_TICKS else math.nan)
    finally:
        if enabled:
            gc.enable()
    return out


def emit(name: str, ratio: float, **context: object) -> str:
    """Print and return one result line: ``NAME RATIO key=value ...`` (values formatted compactly)."""

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v).replace(" ", "_")  # one token per key=value

    line = f"{name} {ratio:.3f}" + "".join(f" {k}={fmt(v)}" for k, v in context.items())
    print(line, flush=True)
    return line


_T0 = time.monotonic()


def progress(message: str) -> None:
    """A progress line, prefixed with '#' (result lines stay easy to grep) and the seconds since start."""
    print(f"# [{time.monotonic() - _T0:6.0f} s] {message}", flush=True)


def machine() -> dict[str, str]:
    """The context every RESULTS.md entry needs: CPU model, threads, torch version, device."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_avg_1min": f"{os.getloadavg()[0]:.2f}",
        "malloc": malloc_setting(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def show_machine() -> None:
    """The progress line that heads every benchmark run: :func:`machine`, as ``key=value`` pairs."""
    progress("machine: " + " ".join(f"{k}={v}" for k, v in machine().items()))


def sync(device: str | torch.device) -> None:
    """Wait for queued device work (CUDA kernels are asynchronous); a no-op on the CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def add_malloc_flag(p: argparse.ArgumentParser) -> None:
    """``--malloc tuned|default``: glibc malloc as the training commands set it (the default), or glibc's own."""
    p.add_argument(
        "--malloc",
        choices=("tuned", "default"),
        default="tuned",
        help="tuned (default): as the training commands set it (per_core.allocator); default: glibc's own",
    )


def setup_malloc(choice: str) -> None:
    """Apply ``--malloc`` before the benchmark's first tensors (:func:`per_core.allocator.tune_malloc`)."""
    if choice == "tuned":
        try:
            tune_malloc()
        except ValueError as err:  # PER_MALLOC misspelt: one line, as the training commands say it
            raise SystemExit(f"bench: error: {err}") from None


class _StandaloneParser(argparse.ArgumentParser):
    def parse_args(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        ns = super().parse_args(*args, **kwargs)
        setup_malloc(ns.malloc)
        show_machine()
        return ns


def standalone_parser(doc: str | None, *, device: bool = False) -> argparse.ArgumentParser:
    """The parser of one benchmark run on its own (``python -m bench.NAME``): ``--quick``, ``--malloc``
    (applied when the arguments are parsed), and ``--device`` for the benchmarks that also run on CUDA;
    the module adds its own flags."""
    p = _StandaloneParser(description=doc.splitlines()[0] if doc else None)
    p.add_argument("--quick", action="store_true", help="tiny shapes and few repeats: a smoke run, not a result")
    add_malloc_flag(p)
    if device:
        p.add_argument("--device", default="cpu", help="cpu or cuda")
    return p
