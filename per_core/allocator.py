"""Keep glibc's malloc from handing a training step's memory back to the kernel between steps.

On Linux, PyTorch's CPU tensors come from glibc's ``malloc``. Its defaults adapt: once a large block
has been freed, blocks up to that size come from the heap, and the top of the heap is returned to
the kernel (trimmed) whenever more than twice that size lies free there. A training step frees its
activations at the end of backward and allocates them again in the next forward, so any change in
the order of allocations (a regularizer keeping a few small tensors between forward and backward,
BN's statistics) can leave the freed memory at the top, be trimmed, and fault in again, page by
page, in the next step. Measured on a 2-core Xeon with ResNet-56 at batch 128, a process per run
(``python -m bench.allocator``): about 40,000 page faults per step for PER and for BN, a few hundred for
the plain network; tuned, under 1,000 for each, and PER's and BN's steps 4 % and 8 % faster.

:func:`tune_malloc` fixes both thresholds, so that the heap keeps what a step frees for the next one
(what PyTorch's CUDA caching allocator does on a GPU). The training commands call it at start;
setting ``PER_MALLOC=default`` in the environment, or the user's own choice (any ``MALLOC_*``
variable, malloc settings in ``GLIBC_TUNABLES``, another malloc in ``LD_PRELOAD``) leaves malloc alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "malloc_setting", "tune_malloc"]

#: Blocks below this size come from the heap (glibc's largest adaptive value, 32 MiB on 64-bit systems).
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Free memory at the top of the heap is returned to the kernel only beyond this much.
TRIM_THRESHOLD = 1024 * 1024 * 1024

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
_setting = "default"


def _user_choice() -> str | None:
    """Why malloc is left alone by request: PER_MALLOC=default, or the user's own glibc settings; None if not."""
    if os.environ.get("PER_MALLOC", "").strip().lower() == "default":
        return "PER_MALLOC=default"
    own = sorted(k for k in os.environ if k.startswith("MALLOC_"))
    if "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        own.append("GLIBC_TUNABLES")
    if "malloc" in os.environ.get("LD_PRELOAD", ""):  # jemalloc, tcmalloc, mimalloc: glibc's malloc is not used
        own.append("LD_PRELOAD")
    return ", ".join(own) or None


def tune_malloc() -> str:
    """Fix glibc malloc's mmap and trim thresholds (:data:`MMAP_THRESHOLD`, :data:`TRIM_THRESHOLD`) for this process.

    Returns what was done, for the log: ``'tuned'``, or why not (not glibc, or left alone at the
    user's request: see the module docstring). Call it before the model allocates its first tensors;
    calling it again changes nothing more. The process keeps up to :data:`TRIM_THRESHOLD` of freed
    heap memory for later steps instead of returning it to the kernel.
    """
    global _setting
    if _setting == "tuned":
        return _setting
    _setting = _tune()
    return _setting


def malloc_setting() -> str:
    """What :func:`tune_malloc` did in this process: ``'tuned'``, or ``'default (why not)'``; ``'default'`` if
    it was not called."""
    return _setting


def _tune() -> str:
    if not sys.platform.startswith("linux"):
        return f"default ({sys.platform}: not glibc)"
    reason = _user_choice()
    if reason is not None:
        return f"default ({reason})"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it: musl's mallopt does nothing)
    except (OSError, AttributeError):
        return "default (not glibc)"
    if libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return "default (mallopt refused)"
    return "tuned"
