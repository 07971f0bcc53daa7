"""Keep glibc's malloc from handing a training step's memory back to the kernel between steps.

On Linux, PyTorch's CPU tensors come from glibc's ``malloc``. By default it maps large blocks
(above an adaptive threshold, at most 32 MiB) straight from the kernel and unmaps them when they are
freed, and it returns the top of its heap to the kernel (trims it) once enough lies free there. A
training step frees its activations at the end of backward and allocates them again in the next
forward, so the same memory goes back to the kernel and is faulted in again, page by page (zeroed
by the kernel), every step; which blocks do so depends on the order of allocations, so that a
regularizer keeping a few small tensors between forward and backward, or BN's statistics, can make
a model pay for it when the plain network does not.

:func:`tune_malloc` turns both off for the process: no block is mapped on its own (``M_MMAP_MAX``
= 0: large blocks come from the heap like the others) and the heap is trimmed only beyond
:data:`TRIM_THRESHOLD` of free memory at its top, so that what a step frees serves the next step
(what PyTorch's caching allocator does on a GPU). The price is memory: freed blocks stay with the
process, and the heap fragments more than separate mappings (measured in ``bench/RESULTS.md``,
"Allocator", with ``python -m bench.allocator``). The training commands call it at start; setting
``PER_MALLOC=default`` in the environment, or the user's own choice (any ``MALLOC_*`` variable,
malloc settings in ``GLIBC_TUNABLES``, another malloc in ``LD_PRELOAD``) leaves malloc alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["TRIM_THRESHOLD", "malloc_setting", "tune_malloc"]

#: Free memory at the top of the heap is returned to the kernel only beyond this much.
TRIM_THRESHOLD = 1024 * 1024 * 1024

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters, from glibc's malloc.h
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
    """Serve every block from glibc malloc's heap and trim it only beyond :data:`TRIM_THRESHOLD`, for this process.

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
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not all(libc.mallopt(param, value) == 1 for param, value in settings):
        return "default (mallopt refused)"
    return "tuned"
