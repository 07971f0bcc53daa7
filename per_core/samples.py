r"""How a layer's output becomes the rows PER regularizes and the recorder records.

A Linear output ``(N, d)`` is N rows of d features; a conv output ``(N, C, *spatial)`` is one row of
the C channels per spatial location of every image; a recurrent output ``(T, N, H)`` one row of the
H hidden units per time step of every sequence (:func:`as_samples`, and its inverse
:func:`from_samples`). The PER math itself is in :mod:`per_core.per`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Literal, get_args

import torch
from torch import Tensor, nn

__all__ = [
    "CHANNELS_FIRST",
    "CHANNEL_NORMS",
    "FEATURES_LAST",
    "LAST_AXIS_NORMS",
    "Layout",
    "as_samples",
    "check_layout",
    "choose_layout",
    "from_samples",
    "layout_of",
    "resolve_layout",
    "with_batch_axis",
]

Layout = Literal["auto", "features_last", "channels_first"]
#: The values of :data:`Layout`.
_LAYOUTS: tuple[str, ...] = get_args(Layout)


def resolve_layout(shape: tuple[int, ...], layout: Layout) -> Layout:
    """``layout`` checked against ``shape``; ``'auto'`` resolved (channels first for 4-D and 5-D tensors)."""
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be 'auto', 'features_last' or 'channels_first', got {layout!r}")
    if layout == "auto":
        return "channels_first" if len(shape) >= 4 else "features_last"
    if layout == "channels_first" and len(shape) < 3:
        raise ValueError(f"layout 'channels_first' needs a (N, C, *spatial) tensor, got shape {shape}")
    return layout


def as_samples(h: Tensor, layout: Layout = "auto") -> Tensor:
    r"""View a layer's output as rows of samples, shape (N', d), the way PER and the recorder see it.

    - Linear ``(N, d)`` -> ``(N, d)``; any ``(..., d)`` with features last -> ``(prod(...), d)``.
    - Conv ``(N, C, *spatial)`` (``layout='channels_first'``) -> ``(N * prod(spatial), C)``: every
      spatial location of every image is one sample of the C channels. This matches what BN
      normalizes (per channel over batch and locations) and keeps the target :math:`\mathcal{N}(0, I_C)`
      meaningful. Flattening C x H x W per image into one sample would instead ask for
      :math:`\mathcal{N}(0, I_{CHW})`: every number of a feature map i.i.d. N(0, 1), spatial
      correlations included, from only N samples in a CHW-dimensional space; that is another method.
    - Cost, and the recommended setting for training (issue 7, ``bench/RESULTS.md``): with all
      locations every location is a row, so a 16-channel 32x32 map at batch 128 is 131,072 rows x
      256 slices (one erf and two thin matmul terms each), 3.7x the conv's own forward+backward on
      a 2-core CPU, and a ResNet-56 step with PER on all 55 layers takes 3.4-4.1x the vanilla step.
      :class:`PER` with ``locations=m`` uses m random locations per image (stratified, each chosen
      with probability exactly m/L, so the gradient is unbiased). What SGD uses is the weight
      gradient, which sums over all locations and images: location noise averages out there, while
      slice noise, shared by all rows, does not. Relative MSE of the PER part of the producing
      conv's weight gradient against a 4096-slice all-location reference (ResNet-56, batch 128,
      median over layers): all locations 0.13 (s = 256), 0.43 (s = 64), 1.8 (s = 16); with s = 256,
      m = 16: 0.13, m = 8: 0.13, m = 4: 0.14-0.15, m = 2: 0.17, m = 1: 0.17-0.20. Step time over
      vanilla (layers batched, see :class:`PER`): m = 4: 1.095-1.12, BN: 1.08-1.13. Hence keep s = 256 and subsample
      locations: ``locations=4`` keeps about 90 % of the all-location quality at a cost that does
      not grow with the map size (the trained demo's per-layer SW1 is within 3 % of all locations).
      ``PER`` itself defaults to all locations (Algorithm 1 exactly, and identical under data
      parallelism); the trainer's ``per_locations`` chooses.
    - LSTM output ``(T, N, H)`` (or ``(N, T, H)``) -> ``(T * N, H)``: every time step of every
      sequence is one sample of the H hidden units.

    ``layout='auto'`` means channels first for 4-D and 5-D tensors and features last otherwise;
    a Conv1d output ``(N, C, L)`` therefore needs ``layout='channels_first'``
    (:class:`PER` picks it from the module type).

    Parameters
    ----------
    h : Tensor, shape (N, d), (N, C, *spatial) or (T, N, H)
    layout : {'auto', 'features_last', 'channels_first'}

    Returns
    -------
    rows : Tensor, shape (N', d)

    Example
    -------
    >>> as_samples(torch.zeros(8, 16, 5, 5)).shape  # (N, C, H, W) -> (N*H*W, C)
    torch.Size([200, 16])
    >>> as_samples(torch.zeros(35, 20, 650)).shape  # (T, N, H) -> (T*N, H)
    torch.Size([700, 650])
    """
    if not isinstance(h, Tensor):
        raise TypeError(f"h must be a torch.Tensor, got {type(h).__name__}")
    if h.ndim < 2:
        raise ValueError(f"h must have at least 2 dimensions (samples, features), got shape {tuple(h.shape)}")
    if resolve_layout(tuple(h.shape), layout) == "channels_first":
        return h.movedim(1, -1).reshape(-1, h.shape[1])  # (N, C, *S) -> (N * prod(S), C)
    return h.reshape(-1, h.shape[-1])  # (..., d) -> (prod(...), d)


def from_samples(rows: Tensor, shape: torch.Size | tuple[int, ...], layout: Layout = "auto") -> Tensor:
    """Inverse of :func:`as_samples`: rows (N', d) back to a tensor of ``shape``."""
    if not isinstance(rows, Tensor) or rows.ndim != 2:
        got = f"shape {tuple(rows.shape)}" if isinstance(rows, Tensor) else type(rows).__name__
        raise ValueError(f"rows must be a torch.Tensor of shape (N', d), got {got}")
    shape = tuple(shape)
    if math.prod(shape) != rows.numel():
        raise ValueError(f"rows of shape {tuple(rows.shape)} cannot fill shape {shape} ({math.prod(shape)} elements)")
    if resolve_layout(shape, layout) == "channels_first":
        moved = (shape[0], *shape[2:], shape[1])
        return rows.reshape(moved).movedim(-1, 1)  # (N * prod(S), C) -> (N, C, *S)
    return rows.reshape(shape)


#: Modules whose outputs are channels first, (N, C, *spatial).
CHANNELS_FIRST = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


#: Modules whose outputs hold their features on the last axis, (..., d), whatever their rank: a Linear on
#: channels-last maps (N, H, W, C) gives rows of its C features, an RNN (T, N, H) rows of H hidden units.
FEATURES_LAST = (nn.Linear, nn.Bilinear, nn.RNNBase, nn.Embedding, nn.EmbeddingBag)

#: Normalizations over trailing axes: features last when they normalize the last axis alone (exactly these
#: classes: a subclass such as ConvNeXt's LayerNorm2d may permute a channels-first map).
LAST_AXIS_NORMS = (nn.LayerNorm, nn.RMSNorm)

#: Normalizations of axis 1: (N, C, *spatial) is channels first, (N, C) one row per sample.
CHANNEL_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm)


def layout_of(module: nn.Module, ndim: int | None = None) -> Layout:
    """The layout of ``module``'s output (of ``ndim`` dimensions, batch axis included, when known).

    Channels first for convolutions; features last for Linear, RNN and embedding outputs of any
    rank, and for LayerNorm and RMSNorm over the last axis alone (not their subclasses); for
    BatchNorm/InstanceNorm/GroupNorm, channels first from 3 dimensions on (a BatchNorm1d after a
    Conv1d normalizes channels). Any other module (an activation, Identity, a LayerNorm subclass)
    says nothing about its layout: ``'auto'`` (channels first for 4-D and 5-D outputs);
    :class:`per_core.PER` and the recorder take a ``layout`` argument for those.
    """
    if isinstance(module, CHANNELS_FIRST):
        return "channels_first"
    if isinstance(module, FEATURES_LAST):
        return "features_last"
    if type(module) in LAST_AXIS_NORMS and len(module.normalized_shape) == 1:  # type: ignore[arg-type]
        return "features_last"
    if isinstance(module, CHANNEL_NORMS):
        return "features_last" if ndim is not None and ndim < 3 else "channels_first"
    return "auto"


def check_layout(layout: object, labels: Iterable[str]) -> Layout | dict[str, Layout] | None:
    """``layout`` as a regularizer or recorder takes it, for the modules labelled ``labels``.

    None; one of :data:`Layout`, for the modules whose type says nothing (:func:`layout_of` is
    ``'auto'``); or a mapping label -> layout, which decides for those labels whatever their type.
    """
    if isinstance(layout, Mapping):
        unknown = sorted(set(layout) - set(labels), key=str)
        if unknown:
            raise ValueError(f"layout names unknown layers {unknown}; the layers are {', '.join(labels)}")
        bad = {k: v for k, v in layout.items() if v not in _LAYOUTS}
        if bad:
            raise ValueError(f"layout values must be 'auto', 'features_last' or 'channels_first', got {bad}")
        return dict(layout)
    if layout is not None and layout not in _LAYOUTS:
        raise ValueError(
            "layout must be None, 'auto', 'features_last', 'channels_first' or a mapping layer -> one of "
            f"those, got {layout!r}"
        )
    return layout  # type: ignore[return-value]


def choose_layout(module: nn.Module, ndim: int, label: str, layout: Layout | Mapping[str, Layout] | None) -> Layout:
    """The layout of ``module``'s output (``ndim`` dimensions) under a ``layout`` checked by :func:`check_layout`."""
    if isinstance(layout, Mapping) and label in layout:
        return layout[label]
    own = layout_of(module, ndim)
    return layout if own == "auto" and isinstance(layout, str) else own


def with_batch_axis(module: nn.Module, h: Tensor) -> Tensor:
    """``h`` with a batch axis of 1 prepended when ``module`` ran on one unbatched sample.

    A Conv{1,2,3}d or InstanceNorm{1,2,3}d accepts (C, *S) as well as (N, C, *S), and a Linear a
    single (d,) vector; without the batch axis the first spatial axis would be read as the channels.
    """
    if isinstance(module, CHANNELS_FIRST):
        spatial = len(module.kernel_size)  # type: ignore[arg-type]
        return h.unsqueeze(0) if h.ndim == spatial + 1 else h
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):  # (C, *S) unbatched, like a conv
        return h.unsqueeze(0) if h.ndim == module._get_no_batch_dim() else h
    return h.unsqueeze(0) if h.ndim == 1 else h
