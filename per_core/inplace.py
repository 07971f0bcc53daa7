"""May a gradient hook add into its argument in place? Reference counts, calibrated once per device.

PER adds its part into the incoming gradient of a layer's output. Returning a modified copy is what
PyTorch asks of a hook, and on a ResNet-56 step that copy was 272 MB of writes; adding in place is
safe exactly when nothing else can observe the change, which is the test autograd itself applies
before it sums two gradients of one tensor in place (:func:`owns`). The expected counts of a
gradient held by nothing but the engine are not hard-coded but measured (:func:`sole_owner_counts`).

Also :func:`in_backward`, the other question the hooks (PER's and the recorder's) ask autograd.
"""

from __future__ import annotations

import functools
import sys
import threading

import torch
from torch import Tensor

__all__ = ["in_backward", "owns", "ref_counts", "sole_owner_counts"]


def ref_counts(grad: Tensor) -> tuple[int, int, int]:
    """Who holds ``grad``: C++ references to its TensorImpl, to its storage, and Python references.

    The storage is reached by address: a Python storage object (``untyped_storage()``) would stay
    attached to it and hold a reference, which would stop autograd from summing into it in place.
    """
    storage_refs = torch._C._storage_Use_Count(torch._C._storage_address(grad))
    return grad._use_count(), storage_refs, sys.getrefcount(grad)


@functools.cache
def sole_owner_counts(device: str) -> tuple[int, int, int] | None:
    """:func:`ref_counts` of a gradient held by nothing but the autograd engine, seen from a tensor hook.

    Found once per process and device (``str(tensor.device)``, e.g. ``'cuda:3'``) by two probes on that
    device through :func:`owns` itself (the Python count depends on the frames in between): the
    gradient a ReLU's backward hands to its input (held by nobody else) and the one an addition hands
    to both of its inputs (shared). The device is named in full because a new thread's current CUDA
    device is 0: probing "cuda" would open a context on GPU 0 from every data-parallel rank. The
    probes run in a fresh thread with no tracer or profiler, so that whatever the caller's thread is
    doing (a checkpointed region, saved-tensor hooks, torch.func, a debugger reading frame locals)
    neither disturbs it nor inflates the counts. None (always copy) when this torch build lacks the
    counters or the probes do not tell the two cases apart.
    """
    seen: dict[str, tuple[int, int, int]] = {}

    def probe() -> None:
        sys.settrace(None)
        sys.setprofile(None)
        for key, shared in (("sole", False), ("shared", True)):
            x = torch.ones(2, 3, device=device, requires_grad=True)
            h = x * 1.0

            def hook(grad: Tensor, key: str = key) -> None:
                owns(grad, probe=(seen, key))

            h.register_hook(hook)
            (h + x if shared else h).relu().backward(torch.ones(2, 3, device=device))

    thread = threading.Thread(target=probe, name="per-probe", daemon=True)
    thread.start()
    thread.join()  # an exception in the probe leaves ``seen`` incomplete: None below
    sole, other = seen.get("sole"), seen.get("shared")
    return sole if sole is not None and other is not None and sole != other else None


def owns(grad: Tensor, probe: tuple[dict[str, tuple[int, int, int]], str] | None = None) -> bool:
    """Whether a tensor hook may add into its argument ``grad`` in place instead of into a copy.

    True only when nothing else can observe the change: no other reference to the tensor or its storage, C++
    or Python (an addition hands the same tensor to both of its inputs, a user may pass their own tensor
    to ``backward``, an earlier hook may have kept it), no graph through it (double backward), a plain
    tensor, contiguous in the default or a channels-last layout. Autograd applies the same test before
    it sums two gradients of one tensor in place. Call it directly from the hook, with the hook's
    argument: the Python count includes the frames in between. ``probe`` (for :func:`sole_owner_counts`)
    records the counts instead. Not visible to any count: memory that a custom backward shares with a
    numpy array or a DLPack capsule it keeps and hands out as a gradient.
    """
    if type(grad) is not Tensor or grad.layout != torch.strided or grad.is_nested or grad._is_zerotensor():
        return False  # subclasses, sparse, nested and immutable zero tensors: always a copy
    try:
        counts = ref_counts(grad)
    except (RuntimeError, TypeError, AttributeError):  # e.g. torch.func's wrappers have no storage
        return False
    if probe is not None:
        probe[0][probe[1]] = counts
        return False
    return not grad.requires_grad and _dense(grad) and counts == sole_owner_counts(str(grad.device))


def _dense(grad: Tensor) -> bool:
    """Contiguous in the default or a channels-last layout (a channels-last conv's gradient is laid out so)."""
    if grad.is_contiguous():
        return True
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    return grad.dim() in formats and grad.is_contiguous(memory_format=formats[grad.dim()])


def in_backward() -> bool:
    """Whether this code runs inside a backward pass, e.g. a gradient checkpoint's recomputed forward.

    Read from autograd's current graph task (-1 outside backward); the one place this private API is used.
    """
    return torch._C._current_graph_task_id() != -1
