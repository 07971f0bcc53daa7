"""Argument checks shared by per_core and analysis: one definition of each rule, one wording of each error
(and whether this process has a device a saved state names).

Numbers from a notebook are often numpy scalars (``np.int64`` from ``np.arange``, ``np.float64`` from
``np.logspace``); every check accepts them and returns a plain Python number. A ``bool`` is never a
number here (``True`` as a slice count is a mistake, not 1).
"""

from __future__ import annotations

import math
import numbers

import torch

__all__ = [
    "SEED_LIMIT",
    "check_nonnegative",
    "check_optional_positive_int",
    "check_positive_int",
    "check_seed",
    "device_available",
    "is_integer",
]

#: Seeds accepted by ``torch.Generator.manual_seed`` without wrapping around: [0, 2**64).
SEED_LIMIT = 1 << 64


def is_integer(value: object) -> bool:
    """An integer of any kind (``int``, a numpy integer from a notebook's grid), but not a ``bool``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(value: object, name: str) -> int:
    """``value`` as an ``int`` when it is an integer >= 1; else a ValueError naming ``name``."""
    if not is_integer(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_optional_positive_int(value: object, name: str, none: str) -> int | None:
    """``value`` as an ``int`` when it is an integer >= 1, None when it is None (``none`` says what that means)."""
    if value is None:
        return None
    if not is_integer(value) or value < 1:
        raise ValueError(f"{name} must be None ({none}) or a positive integer, got {value!r}")
    return int(value)


def check_seed(seed: object) -> int:
    """``seed`` as an ``int`` when it is an integer in [0, 2**64); else a ValueError."""
    if not is_integer(seed) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return int(seed)


def check_nonnegative(value: object, name: str) -> float:
    """``value`` as a ``float`` when it is a finite real number >= 0 (a weight such as ``lam``); else a ValueError."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def device_available(device: str) -> bool:
    """Whether this process has ``device`` (a saved generator state of ``'cuda:0'`` on a CPU-only machine: no)."""
    d = torch.device(device)
    if d.type == "cpu":
        return True
    backend = getattr(torch, d.type, None)
    if backend is None or not backend.is_available():
        return False
    return d.index is None or d.index < backend.device_count()
