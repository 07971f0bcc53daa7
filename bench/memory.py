"""Peak memory of one call, measured honestly on the CPU (and on CUDA).

CPU: tracemalloc does not see torch's allocations, and the resident set size of a long-lived process
keeps whatever glibc cached. So the call runs in a fresh subprocess with glibc's mmap threshold
pinned to 64 KiB (``MALLOC_MMAP_THRESHOLD_``; a fixed value also disables glibc's dynamic threshold):
every tensor above 64 KiB is its own mapping, unmapped when freed, and the resident set follows the
live tensor bytes. After ``warmup`` untimed calls the child resets the kernel's high-water mark
(``/proc/self/clear_refs``), makes one call and reports ``peak_extra = VmHWM - VmRSS before the
call``: what the call needs on top of what stays resident (its activations, temporaries and anything
held between forward and backward). CUDA: ``max_memory_allocated - memory_allocated`` in-process.

A target is ``"module:function"`` plus string arguments; the function returns the zero-argument
callable to measure.

    python -m bench.memory bench.step_time:memory_setup resnet56 per --quick
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from bench.timing import progress

__all__ = ["available", "measure", "peak_extra"]

ROOT = Path(__file__).resolve().parent.parent


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def available() -> bool:
    """Whether this kernel lets a process reset its peak RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _status_kib("VmHWM")
        return True
    except (OSError, RuntimeError):
        return False


def peak_extra(fn: Callable[[], object], warmup: int = 2, device: str = "cpu") -> dict[str, float]:
    """Bytes resident before one call of ``fn`` (``base``) and the peak extra bytes during it, in this process."""
    for _ in range(warmup):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return {"base": float(base), "peak_extra": float(torch.cuda.max_memory_allocated() - base)}
    gc.collect()
    base = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := current RSS
    fn()
    return {"base": base * 1024.0, "peak_extra": (_status_kib("VmHWM") - base) * 1024.0}


def _resolve(target: str) -> Callable[..., Callable[[], object]]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a benchmark's child process: this one's, with bench/ importable, plus ``extra``."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def measure(target: str, *args: str, device: str = "cpu", in_process: bool = False) -> dict[str, float] | None:
    """Peak memory of the callable that ``target(*args)`` builds: in a fresh subprocess on the CPU.

    ``in_process=True`` measures here instead (fast, but glibc's cache blurs it: for smoke runs).
    Returns None (after a progress line saying why) when the child fails.
    """
    if device.startswith("cuda") or in_process:
        return peak_extra(_resolve(target)(*args), device=device)
    env = child_env(MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, "-m", "bench.memory", target, *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, check=False)
    if res.returncode != 0:
        progress(f"memory child {target} {' '.join(args)} failed: {res.stderr.strip()[-300:]}")
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    target, *args = sys.argv[1:]
    print(json.dumps(peak_extra(_resolve(target)(*args))))


if __name__ == "__main__":
    main()
