"""Keep glibc's malloc from handing a training step's memory back to the kernel between steps.

On Linux, PyTorch's CPU tensors come from glibc's ``malloc``. By default it maps blocks above an
adaptive threshold (128 KiB at first, raised to the size of each mapped block freed, at most
32 MiB) straight from the kernel and unmaps them when they are freed, and it returns the top of its
heap to the kernel (trims it) once more than twice that threshold lies free there. A training step
frees its activations at the end of backward and allocates them again in the next forward, so the
same memory can go back to the kernel and be faulted in again, page by page (zeroed by the
kernel), every step; which blocks do so depends on the order and sizes of allocations, so that a
regularizer keeping a few small tensors between forward and backward, or BN's statistics, can make
a model pay for it when the plain network does not.

:func:`tune_malloc` fixes both thresholds for the process: blocks up to :data:`MMAP_THRESHOLD`
come from the heap, and the heap is trimmed only when more than :data:`TRIM_THRESHOLD` lies free at
its top, so that what a step frees serves the next step (what PyTorch's caching allocator does on a
GPU). Larger blocks (a loaded dataset, an 11-layer CNN's 196 MB activations at batch 250) are still
mapped on their own and returned when freed, unless the free top of the heap (up to
:data:`TRIM_THRESHOLD`) can hold them: serving those from the heap too (``M_MMAP_MAX`` = 0)
made the CNN's step a third faster but left freed gigabytes pinned under live data (after a
CIFAR-10-sized load, 0.74 GB of live tensors, 2.9 GB stayed resident, against 0.93 GB untouched).
Measured in ``bench/RESULTS.md``, "Allocator" (``python -m bench.allocator``).

The training commands call it at start. ``PER_MALLOC=default`` leaves malloc alone
(``PER_MALLOC=tuned``, or unset, tunes it), and so does the user's own setting of the same things:
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``, ``MALLOC_MMAP_MAX_``,
those in ``GLIBC_TUNABLES``, or another malloc in ``LD_PRELOAD``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "malloc_setting", "tune_malloc"]

#: Blocks up to this size come from the heap (glibc's largest adaptive value on 64-bit systems).
MMAP_THRESHOLD = 32 * 1024 * 1024
#: The top of the heap is returned to the kernel only when more than this lies free there.
TRIM_THRESHOLD = 1024 * 1024 * 1024

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
#: glibc's names for the thresholds tune_malloc sets and two that change what they do: a user's setting wins
_OWN_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_OWN_TUNABLES = (
    "glibc.malloc.mmap_threshold",
    "glibc.malloc.trim_threshold",
    "glibc.malloc.top_pad",
    "glibc.malloc.mmap_max",
)
_setting = "default"


def _user_choice() -> str | None:
    """Why malloc is left alone by request (PER_MALLOC=default, or the user's own setting); None if it is not."""
    choice = os.environ.get("PER_MALLOC", "").strip()
    if choice not in ("", "default", "tuned"):
        raise ValueError(f"PER_MALLOC must be 'default' (glibc's malloc as it is) or 'tuned', got {choice!r}")
    if choice == "default":
        return "PER_MALLOC=default"
    own = [k for k in _OWN_ENV if k in os.environ]
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    own += [f"GLIBC_TUNABLES {t}" for t in _OWN_TUNABLES if t in tunables]
    if "malloc" in os.environ.get("LD_PRELOAD", ""):  # jemalloc, tcmalloc, mimalloc: glibc's malloc is not used
        own.append("LD_PRELOAD")
    return ", ".join(own) or None


def tune_malloc() -> str:
    """Fix glibc malloc's mmap and trim thresholds (:data:`MMAP_THRESHOLD`, :data:`TRIM_THRESHOLD`) for this process.

    Returns what was done, for the log and ``config.json``: ``'tuned'``, ``'default (why not)'`` (not
    glibc, or left alone at the user's request: see the module docstring), or ``'partly (...)'`` when
    glibc took the mmap threshold but refused the trim threshold (no glibc does). Call it before the
    model allocates its first tensors; once it has tuned, calling it again does nothing. A
    ``PER_MALLOC`` other than ``default`` or ``tuned`` is a ValueError.
    """
    global _setting
    if _setting != "tuned":
        _setting = _tune()
    return _setting


def malloc_setting() -> str:
    """What :func:`tune_malloc` did in this process (its answer); ``'default'`` if it was not called."""
    return _setting


def _tune() -> str:
    reason = _user_choice()
    if reason is not None:
        return f"default ({reason})"
    if not sys.platform.startswith("linux"):
        return f"default ({sys.platform}: not glibc)"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it: musl's mallopt does nothing)
    except (OSError, AttributeError):
        return "default (not glibc)"
    # glibc accepts both values (it refuses an mmap threshold above 32 MiB): checked all the same
    if libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        return "default (mallopt refused the mmap threshold)"
    if libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return "partly (mmap threshold fixed; mallopt refused the trim threshold)"
    return "tuned"
