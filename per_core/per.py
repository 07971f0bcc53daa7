r"""PER: projected error function regularization (Joo, Kang & Kim, ICLR 2020).

Everything about the method's math lives in this file.

Let :math:`h_1, \dots, h_N \in \mathbb{R}^d` be the rows of a layer's activations and
:math:`\theta` a direction drawn uniformly from the unit sphere. PER bounds the sliced
Wasserstein-1 distance between the empirical distribution :math:`\nu` of the rows and
:math:`\mu = \mathcal{N}(0, I_d)` with Minkowski's inequality:

.. math::
    SW_1(\mu, \nu) \le L_{per}(\nu) = \frac{1}{N} \sum_i \mathbb{E}_\theta\,
    \mathbb{E}_{Z \sim \mathcal{N}(0,1)} |Z - \langle h_i, \theta \rangle|,
    \qquad \mathbb{E}|Z - a| = a\,\mathrm{erf}(a/\sqrt{2}) + \sqrt{2/\pi}\, e^{-a^2/2},

whose gradient needs no sort and no interaction between samples (Algorithm 1):

.. math::
    \frac{\partial L_{per}}{\partial h_i} = \frac{1}{N}\,
    \mathbb{E}_\theta\big[\mathrm{erf}(\langle \theta, h_i \rangle / \sqrt{2})\, \theta\big].

The expectation over :math:`\theta` is estimated with ``n_slices`` directions
(normalized standard Gaussian vectors). Caution: :math:`L_{per}` is an *upper bound*; it is
minimized by a point mass at 0 (value :math:`\sqrt{2/\pi}`), not by :math:`\mathcal{N}(0, I)`
(value :math:`2/\sqrt{\pi}`), so it bounds the spread of the activations rather than matching
the Gaussian exactly. ``analysis`` measures the true distance.

References
----------
.. [1] Joo, T., Kang, D., Kim, B. "Regularizing activations in neural networks via
   distribution matching with the Wasserstein metric", ICLR 2020, arXiv:2002.05366.
.. [2] Bonneel, N., Rabin, J., Peyré, G., Pfister, H. "Sliced and Radon Wasserstein
   barycenters of measures", J. Math. Imaging Vis. 51 (2015).
"""

from __future__ import annotations

import functools
import math
import sys
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from per_core.checks import check_nonnegative, check_positive_int, check_seed, is_integer

__all__ = ["PER", "as_samples", "folded_normal_mean", "from_samples", "per_grad", "per_loss", "sample_slices"]

Layout = Literal["auto", "features_last", "channels_first"]

_SQRT2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
#: Elements of one (rows x slices) projection chunk: bounds the memory of the gradient path (4 MiB float32).
DEFAULT_CHUNK_ELEMENTS = 1 << 20
#: Rows of a given ``theta`` must have unit norm to this tolerance (more for half precision).
_UNIT_NORM_TOL = 1e-5


def _all_finite(t: Tensor) -> bool:
    """Whether every element of ``t`` is finite.

    A float sum is finite only if every term is (inf and NaN propagate), and one sum is ~20x faster
    than ``isfinite(t).all()``; the exact test runs only when the sum is not finite (finite values
    can overflow it). Half precision is summed in float32.
    """
    return bool(torch.isfinite(t.sum(dtype=_compute_dtype(t.dtype)))) or bool(torch.isfinite(t).all())


def _check_rows(h: Tensor, name: str = "h") -> None:
    if not isinstance(h, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, d), got {type(h).__name__}")
    if h.ndim != 2:
        raise ValueError(
            f"{name} must have shape (N, d) (rows are samples), got shape {tuple(h.shape)}; "
            "use per_core.as_samples(h) to turn a conv or LSTM output into rows"
        )
    if not h.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {h.dtype}")
    if h.shape[0] < 1 or h.shape[1] < 1:
        raise ValueError(f"{name} must have at least one row and one column, got shape {tuple(h.shape)}")
    if not _all_finite(h):
        bad = int((~torch.isfinite(h)).sum())
        raise ValueError(
            f"{name} must be finite, got {bad} NaN/inf value(s) of {h.numel()}; "
            "the activations diverged before PER saw them (lower the learning rate or lambda)"
        )


def _check_generator(generator: object) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}; "
            "pass torch.Generator().manual_seed(seed) to seed the slices"
        )


def _check_theta(theta: object, dim: int) -> Tensor:
    """``theta`` as given to per_loss/per_grad: a finite floating (s, d) tensor with s >= 1 and unit rows."""
    if not isinstance(theta, Tensor):
        raise TypeError(
            f"theta must be a torch.Tensor of shape (n_slices, {dim}) with unit rows, got {type(theta).__name__}"
            + ("; convert it with torch.from_numpy(theta)" if hasattr(theta, "__array__") else "")
        )
    if theta.ndim != 2 or theta.shape[1] != dim or theta.shape[0] < 1:
        raise ValueError(f"theta must have shape (n_slices, {dim}) with n_slices >= 1, got {tuple(theta.shape)}")
    if not theta.is_floating_point():
        raise TypeError(f"theta must be a floating-point tensor, got dtype {theta.dtype}")
    if not _all_finite(theta):
        raise ValueError("theta must be finite, got NaN/inf values")
    norms = theta.detach().double().norm(dim=1)
    tol = max(_UNIT_NORM_TOL, 8 * torch.finfo(theta.dtype).eps)  # a unit vector rounded to bfloat16 is off by <= 2^-8
    if float((norms - 1).abs().max()) > tol:
        raise ValueError(
            f"theta must have rows of unit norm (within {tol:.1g}), got norms in "
            f"[{float(norms.min()):.6g}, {float(norms.max()):.6g}]; use sample_slices() or divide by the row norms"
        )
    return theta


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 are computed in float32 (erf/exp and long sums lose too much otherwise)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def sample_slices(
    n_slices: int,
    dim: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    r"""Directions :math:`\theta_1..\theta_s` uniform on the unit sphere :math:`S^{d-1}`.

    .. math::
        \theta_j = v_j / \lVert v_j \rVert, \qquad v_j \sim \mathcal{N}(0, I_d)

    Parameters
    ----------
    n_slices : int
        Number of directions s.
    dim : int
        Dimension d.
    generator : torch.Generator, optional
        Source of randomness; the global generator is used when None. The draw happens on the
        generator's device and is moved to ``device``.
    device, dtype : optional
        Where and how the result is stored.

    Returns
    -------
    theta : Tensor, shape (n_slices, dim)
        Unit-norm rows.

    Example
    -------
    >>> theta = sample_slices(4, 3, generator=torch.Generator().manual_seed(0))
    >>> theta.shape, bool(torch.allclose(theta.norm(dim=1), torch.ones(4)))
    (torch.Size([4, 3]), True)
    """
    check_positive_int(n_slices, "n_slices")
    check_positive_int(dim, "dim")
    _check_generator(generator)
    gen_device = generator.device if generator is not None else device
    v = torch.randn(n_slices, dim, generator=generator, device=gen_device, dtype=_compute_dtype(dtype))
    theta = v / v.norm(dim=1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
    return theta.to(device=device if device is not None else theta.device, dtype=dtype)


def folded_normal_mean(a: Tensor) -> Tensor:
    r"""Closed form of :math:`\mathbb{E}_{Z \sim \mathcal{N}(0,1)} |Z - a|`, elementwise.

    .. math::
        \mathbb{E}|Z - a| = a\,\mathrm{erf}(a/\sqrt{2}) + \sqrt{2/\pi}\, e^{-a^2/2}

    It equals :math:`W_1(\delta_a, \mathcal{N}(0,1))`, is minimal at :math:`a = 0`
    (value :math:`\sqrt{2/\pi}`) and grows like :math:`|a|` (a Pseudo-Huber shape).

    Example
    -------
    >>> round(float(folded_normal_mean(torch.tensor(0.0))), 6)  # sqrt(2/pi)
    0.797885
    """
    if not isinstance(a, Tensor) or not a.is_floating_point():
        got = f"dtype {a.dtype}" if isinstance(a, Tensor) else type(a).__name__
        raise TypeError(f"a must be a floating-point torch.Tensor, got {got}")
    return a * torch.erf(a / _SQRT2) + _SQRT_2_OVER_PI * torch.exp(-0.5 * a * a)


def _slices_for(h: Tensor, n_slices: int, generator: torch.Generator | None, theta: Tensor | None) -> Tensor:
    if theta is None:
        return sample_slices(n_slices, h.shape[1], generator=generator, device=h.device, dtype=h.dtype)
    return _check_theta(theta, h.shape[1]).to(device=h.device, dtype=h.dtype)


def _check_args(h: Tensor, n_slices: int, generator: object, chunk_elements: int) -> None:
    _check_rows(h)
    check_positive_int(n_slices, "n_slices")
    _check_generator(generator)
    check_positive_int(chunk_elements, "chunk_elements")


def _chunk_rows(n_slices: int, chunk_elements: int) -> int:
    return max(1, chunk_elements // n_slices)


def per_loss(
    h: Tensor,
    n_slices: int = 256,
    generator: torch.Generator | None = None,
    *,
    theta: Tensor | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> Tensor:
    r"""The PER loss: the Minkowski upper bound on :math:`SW_1(\nu, \mathcal{N}(0, I))`.

    .. math::
        L_{per} = \frac{1}{N s} \sum_{i=1}^{N} \sum_{j=1}^{s}
        \Big[a_{ij}\,\mathrm{erf}(a_{ij}/\sqrt{2}) + \sqrt{2/\pi}\, e^{-a_{ij}^2/2}\Big],
        \qquad a_{ij} = \langle h_i, \theta_j \rangle

    (paper [1]_, Eq. 6 with the expectation over :math:`\theta` estimated by s slices).
    Differentiable by autograd; float32/float64 (half precision is computed in float32).

    Parameters
    ----------
    h : Tensor, shape (N, d)
        Rows are samples (see :func:`as_samples`).
    n_slices : int
        Number of random directions s (ignored when ``theta`` is given).
    generator : torch.Generator, optional
        Randomness for the directions.
    theta : Tensor, shape (s, d), optional
        Use these directions instead of drawing new ones: finite, s >= 1, rows of unit norm
        (checked to 1e-5, or 8 machine epsilons of a half-precision ``theta``).
    chunk_elements : int
        The rows x slices projection is computed in chunks of at most this many elements (>= 1).

    Returns
    -------
    loss : Tensor, shape ()
        In the dtype of ``h`` (float32 for half inputs). A ValueError is raised instead of an
        infinite loss when the N x s terms overflow the compute dtype (float32 near its maximum).

    Example
    -------
    >>> h = torch.zeros(5, 3, dtype=torch.float64)  # a point mass at 0 attains the minimum sqrt(2/pi)
    >>> round(float(per_loss(h, 16, torch.Generator().manual_seed(0))), 6)
    0.797885
    """
    _check_args(h, n_slices, generator, chunk_elements)
    x = h.to(_compute_dtype(h.dtype))
    theta = _slices_for(x, n_slices, generator, theta)
    step = _chunk_rows(theta.shape[0], chunk_elements)
    total = sum(folded_normal_mean(x[i : i + step] @ theta.T).sum() for i in range(0, x.shape[0], step))
    loss = total / (x.shape[0] * theta.shape[0])
    if not bool(torch.isfinite(loss)):
        raise ValueError(
            f"per_loss overflowed in {x.dtype} (h holds values up to {float(x.abs().max()):.3g}; the sum of "
            f"{x.shape[0]} x {theta.shape[0]} terms exceeds the largest {x.dtype}); rescale h"
            + (" or use float64" if x.dtype != torch.float64 else "")
        )
    return loss


def _chunk_loss(u: Tensor, e: Tensor) -> Tensor:
    """Sum of E|Z - a| = sqrt2 u erf(u) + sqrt(2/pi) exp(-u^2) over each (rows, s) block, u = a / sqrt 2, e = erf(u).

    Sums over the last two dimensions: a scalar for one block, shape (G,) for a stack of G blocks.
    """
    return _SQRT2 * torch.sum(u * e, dim=(-2, -1)) + _SQRT_2_OVER_PI * torch.sum(torch.exp(-(u * u)), dim=(-2, -1))


def _grad_and_loss(
    x: Tensor, theta: Tensor, with_loss: bool, chunk_elements: int, scale: float = 1.0
) -> tuple[Tensor, Tensor | None]:
    """Algorithm 1 on rows x (N, d) with slices theta (s, d): ``scale`` x the gradient of L_per and, if asked, L_per.

    Also batched: x (G, N, d) and theta (G, s, d) are G independent problems (one per layer of
    equal shape) done by the same few batched ops; the loss then has shape (G,).
    Per chunk of rows: one matmul against ``theta / sqrt 2`` (so erf needs no extra scaling pass), erf in
    place, one matmul against ``theta * scale / (N s)`` (the mean and e.g. lambda folded in). erf is
    evaluated once and serves gradient and loss; memory beyond the output is one (G x chunk x s) block.
    """
    n, s = x.shape[-2], theta.shape[-2]
    batch = x.shape[:-2]
    t_in = theta.transpose(-2, -1) * (1.0 / _SQRT2)  # (..., d, s)
    t_out = theta * (scale / (n * s))  # (..., s, d)
    grad = torch.empty_like(x)
    loss = x.new_zeros(batch) if with_loss else None
    step = min(n, _chunk_rows(s * math.prod(batch), chunk_elements))
    # torch.func's wrappers have no storage for a batched matmul to write into: no out= there
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor(x)
    buf = None if wrapped else x.new_empty(*batch, step, s)  # one block, reused by every chunk
    for i in range(0, n, step):
        rows = x[..., i : i + step, :]
        u = torch.matmul(rows, t_in, out=None if buf is None else buf[..., : rows.shape[-2], :])  # u = a / sqrt 2
        if loss is None:
            e = u.erf_()
        else:
            e = torch.erf(u)
            loss += _chunk_loss(u, e)
        if wrapped:
            grad[..., i : i + step, :] = torch.matmul(e, t_out)
        else:
            torch.matmul(e, t_out, out=grad[..., i : i + step, :])  # (rows, s) @ (s, d) -> (rows, d)
    return grad, (loss / (n * s) if loss is not None else None)


def per_grad(
    h: Tensor,
    n_slices: int = 256,
    generator: torch.Generator | None = None,
    *,
    theta: Tensor | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> Tensor:
    r"""Closed-form gradient of :func:`per_loss` (Algorithm 1 of [1]_), without autograd.

    .. math::
        \frac{\partial L_{per}}{\partial h_i} = \frac{1}{N s} \sum_{j=1}^{s}
        \mathrm{erf}\big(\langle \theta_j, h_i \rangle / \sqrt{2}\big)\, \theta_j

    No sort and no interaction between rows given the slices. Memory beyond the output is one
    (chunk x s) block.

    Parameters
    ----------
    h : Tensor, shape (N, d)
    n_slices, generator, theta, chunk_elements
        As in :func:`per_loss`; the same generator state or ``theta`` gives the same slices.

    Returns
    -------
    grad : Tensor, shape (N, d)
        Detached, in the dtype of ``h``.

    Example
    -------
    >>> h = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    >>> theta = sample_slices(32, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    >>> per_loss(h, theta=theta).backward()
    >>> bool(torch.allclose(h.grad, per_grad(h, theta=theta)))
    True
    """
    _check_args(h, n_slices, generator, chunk_elements)
    x = h.detach().to(_compute_dtype(h.dtype))
    theta = _slices_for(x, n_slices, generator, theta)
    grad, _ = _grad_and_loss(x, theta, False, chunk_elements)
    return grad.to(h.dtype)


# --- how a layer's output becomes rows ---------------------------------------------------------


def _resolve_layout(shape: tuple[int, ...], layout: Layout) -> Layout:
    if layout not in ("auto", "features_last", "channels_first"):
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
    if _resolve_layout(tuple(h.shape), layout) == "channels_first":
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
    if _resolve_layout(shape, layout) == "channels_first":
        moved = (shape[0], *shape[2:], shape[1])
        return rows.reshape(moved).movedim(-1, 1)  # (N * prod(S), C) -> (N, C, *S)
    return rows.reshape(shape)


# --- Algorithm 1 attached to modules ----------------------------------------------------------

_CHANNELS_FIRST = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


def _layout_of(module: nn.Module) -> Layout:
    return "channels_first" if isinstance(module, _CHANNELS_FIRST) else "auto"


def _batched(module: nn.Module, h: Tensor) -> Tensor:
    """``h`` with a batch axis of 1 prepended when ``module`` ran on one unbatched sample.

    A Conv{1,2,3}d accepts (C, *S) as well as (N, C, *S), and a Linear a single (d,) vector; without
    the batch axis the first spatial axis would be read as the channels.
    """
    if isinstance(module, _CHANNELS_FIRST):
        spatial = len(module.kernel_size)  # type: ignore[arg-type]
        return h.unsqueeze(0) if h.ndim == spatial + 1 else h
    return h.unsqueeze(0) if h.ndim == 1 else h


def named_targets(
    modules: nn.Module | Iterable[nn.Module] | Mapping[str, nn.Module], owner: str
) -> dict[str, nn.Module]:
    """Normalize what a hook-based regularizer attaches to into ``{label: module}``.

    A single module is labelled by its class name, a sequence by ``"i:ClassName"``; a mapping keeps
    its labels. ``owner`` names the regularizer in error messages.
    """
    if isinstance(modules, nn.Module):
        named = {type(modules).__name__: modules}
    elif isinstance(modules, Mapping):
        named = dict(modules)
    else:
        named = {f"{i}:{type(m).__name__}": m for i, m in enumerate(modules)}
    if not named:
        raise ValueError(f"{owner} needs at least one module to attach to")
    for name, m in named.items():
        if not isinstance(m, nn.Module):
            raise TypeError(f"{owner} can attach only to nn.Module objects; {name!r} is a {type(m).__name__}")
    return named


def _available(device: str) -> bool:
    """Whether this process has ``device`` (a saved generator state of ``'cuda:0'`` on a CPU-only machine: no)."""
    d = torch.device(device)
    if d.type == "cpu":
        return True
    backend = getattr(torch, d.type, None)
    if backend is None or not backend.is_available():
        return False
    return d.index is None or d.index < backend.device_count()


def _ref_counts(grad: Tensor) -> tuple[int, int, int]:
    """Who holds ``grad``: C++ references to its TensorImpl, to its storage, and Python references.

    The storage is reached by address: a Python storage object (``untyped_storage()``) would stay
    attached to it and hold a reference, which would stop autograd from summing into it in place.
    """
    storage_refs = torch._C._storage_Use_Count(torch._C._storage_address(grad))
    return grad._use_count(), storage_refs, sys.getrefcount(grad)


@functools.cache
def _sole_owner_counts(device: str) -> tuple[int, int, int] | None:
    """:func:`_ref_counts` of a gradient held by nothing but the autograd engine, seen from a tensor hook.

    Found once per process and device (``str(tensor.device)``, e.g. ``'cuda:3'``) by two probes on that
    device through :func:`_owns` itself (the Python count depends on the frames in between): the
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
                _owns(grad, probe=(seen, key))

            h.register_hook(hook)
            (h + x if shared else h).relu().backward(torch.ones(2, 3, device=device))

    thread = threading.Thread(target=probe, name="per-probe", daemon=True)
    thread.start()
    thread.join()  # an exception in the probe leaves ``seen`` incomplete: None below
    sole, other = seen.get("sole"), seen.get("shared")
    return sole if sole is not None and other is not None and sole != other else None


def _owns(grad: Tensor, probe: tuple[dict[str, tuple[int, int, int]], str] | None = None) -> bool:
    """Whether a tensor hook may add into its argument ``grad`` in place instead of into a copy.

    True only when nothing else can observe the change: no other reference to the tensor or its
    storage, C++ or Python (an addition hands the same tensor to both of its inputs, a user may
    pass their own tensor to ``backward``, an earlier hook may have kept it), no graph through it
    (double backward), a plain contiguous tensor. Autograd applies the same test before it sums two
    gradients of one tensor in place. Call it directly from the hook, with the hook's argument:
    the Python count includes the frames in between. ``probe`` (for :func:`_sole_owner_counts`)
    records the counts instead. Not visible to any count: memory that a custom backward shares with
    a numpy array or a DLPack capsule it keeps and hands out as a gradient.
    """
    if type(grad) is not Tensor or grad.layout != torch.strided or grad.is_nested or grad._is_zerotensor():
        return False  # subclasses, sparse, nested and immutable zero tensors: always a copy
    try:
        counts = _ref_counts(grad)
    except (RuntimeError, TypeError, AttributeError):  # e.g. torch.func's wrappers have no storage
        return False
    if probe is not None:
        probe[0][probe[1]] = counts
        return False
    return not grad.requires_grad and grad.is_contiguous() and counts == _sole_owner_counts(str(grad.device))


class _Sampled:
    """One forward of a layer with ``locations=m``: its chosen rows, waiting for the (batched) backward."""

    __slots__ = ("__weakref__", "grad", "index", "name", "rows")

    def __init__(self, name: str, rows: Tensor, index: Tensor) -> None:
        self.name = name
        self.rows = rows  # (N, C, m): the chosen locations' channel vectors, as gathered
        self.index = index  # (N, C, m): the chosen positions per image, expanded over channels
        self.grad: Tensor | None = None  # scale x dL_per/d rows, (N, C, m) in the compute dtype, once computed


class PER:
    r"""Attach PER (Algorithm 1 of [1]_) to layers: in backward, add :math:`\lambda \nabla L_{per}`.

    For each attached module, a forward hook keeps a detached reference to the module's output
    (no copy) and draws fresh slices; a hook on that output's gradient then adds

    .. math::
        \lambda\, \frac{1}{N s} \sum_j \mathrm{erf}(\langle \theta_j, h_i \rangle / \sqrt{2})\, \theta_j

    to every row :math:`h_i` (rows as in :func:`as_samples`). The loss itself is never computed in
    forward, nothing is added to the model (no parameters, no buffers), and the result is exactly
    the gradient of ``task_loss + lam * sum_layers per_loss(layer)`` with the same slices. The
    addition goes into the incoming gradient itself when nothing else holds it (the test autograd
    applies before summing in place), into a copy otherwise: a gradient shared with another tensor,
    kept by an earlier hook or passed to ``backward`` by the caller is never changed (memory shared
    outside PyTorch's reference counts, such as a numpy array that a custom backward keeps and
    returns as a gradient, is beyond what this test can see).

    Which tensor is regularized is the choice of modules: pass the Linear/Conv/LSTM modules to
    regularize their outputs, which are the *pre-activations* of the next nonlinearity (the default
    of the models in :mod:`per_core.models`, the place where BN normalizes and where a Gaussian
    target is attainable), or pass the activation modules (e.g. ``nn.ELU``) to regularize
    post-activations. For ``nn.LSTM``/``nn.GRU``/``nn.RNN`` the hidden-state sequence (the first
    output) is regularized, each time step a sample. An empty output (a batch of N = 0) has no rows
    and is skipped: nothing is added, no penalty is tracked. An unbatched call (a conv on (C, *S), a
    Linear on (d,)) is a batch of one. Gradient checkpointing: with ``use_reentrant=True`` PER attaches
    during the recomputation (the first forward runs without grad) and matches an unchecked run
    exactly; with ``use_reentrant=False`` the recomputation draws slices (and locations) again that are
    never used, so the gradient is as valid but the random stream, hence the run, differs from an
    unchecked one.

    Parameters
    ----------
    modules : nn.Module, iterable of nn.Module, or mapping name -> nn.Module
        The layers whose outputs are regularized.
    lam : float
        Regularization strength :math:`\lambda \ge 0` (one value for all layers, as in the paper).
    n_slices : int
        Slices s drawn for every forward pass (paper: 256).
    seed : int
        Seed of PER's own generators (one per device), in [0, 2**64). Use the same seed on every
        data-parallel rank so that all ranks use the same slices.
    locations : int, optional
        For channels-first (conv) outputs, use m = ``locations`` random spatial locations per image
        instead of all L: an unbiased estimate of the same gradient (each location is chosen with
        probability exactly m / L; the m are distinct and spread over the image). Only the chosen
        rows are kept between forward and backward (N m C numbers instead of a reference to the
        whole output); their gradients are computed together at the first backward hook, layers
        of equal shape in one batched matmul-erf-matmul (fewer small ops; the same values as layer
        by layer). None (default) uses all locations, Algorithm 1 exactly. 4 is recommended
        for training conv nets: it keeps ~90 % of the gradient quality of all locations at a small
        fraction of the cost (numbers in :func:`as_samples`). With data parallelism each rank draws
        its own locations: unbiased, but not bit-identical to one process.
    track_penalty : bool
        When True, each backward also stores :math:`L_{per}` per layer (cheap: it reuses the
        projections and erf); read it with :meth:`penalty`. Can be switched at any time.
    chunk_elements : int
        Memory bound of one (rows x slices) projection block, reused by every chunk (default 2^20
        elements, 4 MiB in float32: on a 2-core CPU it ran 131,072 x 256 about 1.8x faster than
        2^22, which leaves cache, and as fast as 2^18 with 4x fewer ops, which matters on a busy
        machine where every multi-threaded op can wait for a core).

    Example
    -------
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ELU(), nn.Linear(8, 2))
    >>> with PER(net[0], lam=1e-3, track_penalty=True) as per:
    ...     net(torch.randn(16, 4)).pow(2).mean().backward()
    ...     per.penalty() > 0.79  # L_per is never below sqrt(2/pi)
    True
    """

    def __init__(
        self,
        modules: nn.Module | Iterable[nn.Module] | Mapping[str, nn.Module],
        lam: float,
        n_slices: int = 256,
        *,
        seed: int = 0,
        locations: int | None = None,
        track_penalty: bool = False,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    ) -> None:
        if locations is not None and (not is_integer(locations) or locations < 1):
            raise ValueError(f"locations must be None (all) or a positive integer, got {locations!r}")
        named = named_targets(modules, "PER")
        self.lam = check_nonnegative(lam, "lam")  # numpy scalars (a notebook's grid) are stored as float/int
        self.n_slices = check_positive_int(n_slices, "n_slices")
        self.seed = check_seed(seed)
        self.locations = None if locations is None else int(locations)
        self.track_penalty = track_penalty
        self.chunk_elements = check_positive_int(chunk_elements, "chunk_elements")
        self.modules = named
        self._generators: dict[torch.device, torch.Generator] = {}
        self._penalties: dict[str, Tensor] = {}
        self._penalty_task = -1  # the backward pass (autograd graph task) the penalties belong to
        self._strata_cache: dict[tuple[int, int, torch.device], tuple[Tensor, Tensor]] = {}
        self._pending: list[weakref.ref[_Sampled]] = []  # sampled-location forwards awaiting their backward
        self._handles = [m.register_forward_hook(self._make_forward_hook(n, m)) for n, m in named.items()]

    # -- randomness -----------------------------------------------------------------------------
    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def state_dict(self) -> dict[str, object]:
        """Generator states (for exact resume) and settings."""
        return {
            "lam": self.lam,
            "n_slices": self.n_slices,
            "seed": self.seed,
            "generators": {str(d): g.get_state() for d, g in self._generators.items()},
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore generator states saved by :meth:`state_dict`.

        States of devices this process does not have are left out: a run moved from a GPU to a
        CPU-only machine draws its slices afresh from ``seed`` on the new device.
        """
        gens = state["generators"]
        assert isinstance(gens, Mapping)
        for dev, st in gens.items():
            if _available(dev):
                self._generator(torch.device(dev)).set_state(st)

    # -- hooks ----------------------------------------------------------------------------------
    def _make_forward_hook(self, name: str, module: nn.Module):
        layout = _layout_of(module)

        def forward_hook(mod: nn.Module, args: tuple, out: object) -> None:
            h = out[0] if isinstance(out, tuple) else out
            if isinstance(h, PackedSequence):
                h = h.data  # (sum of lengths, H): already rows
            if not isinstance(h, Tensor) or not h.requires_grad or not h.is_floating_point():
                return
            if self.lam == 0.0 and not self.track_penalty:
                return
            if h.numel() == 0:  # an empty batch (or empty feature maps): no rows, nothing to regularize
                return
            v = _batched(mod, h.detach())  # what PER reads: the output, a batch axis added if it had none
            lay = _resolve_layout(tuple(v.shape), layout)
            d = v.shape[1] if lay == "channels_first" else v.shape[-1]
            dtype = _compute_dtype(h.dtype)
            gen = self._generator(h.device)
            _sole_owner_counts(str(h.device))  # settled in a forward pass, not inside the first backward
            if lay == "channels_first":
                flat = v.flatten(2)  # (N, C, *S) -> (N, C, L): a view for contiguous and channels-last
                index = self._pick_locations(flat, gen)
                if index is not None:  # keep only the chosen locations: (N, C, m), a small copy
                    index = index.unsqueeze(1).expand(-1, flat.shape[1], -1)
                    entry = _Sampled(name, flat.gather(2, index), index)
                    self._pending.append(weakref.ref(entry))
                    h.register_hook(self._make_sampled_grad_hook(entry))
                    return
            theta = sample_slices(self.n_slices, d, generator=gen, device=h.device, dtype=dtype)
            h.register_hook(self._make_grad_hook(name, v, h._version, theta, lay))

        return forward_hook

    def _pick_locations(self, flat: Tensor, generator: torch.Generator) -> Tensor | None:
        """``locations`` = m distinct random spatial positions per image, shape (N, m), or None for all.

        Stratified, in O(N m) (sorting N x L random keys, the textbook way, costs more than PER
        itself): the L positions in raster order are cut into m consecutive strata and one position
        is drawn uniformly in each. When m divides L the strata have L/m positions each; otherwise
        they have floor(L/m) or ceil(L/m) positions and start at a random offset (positions seen as
        a circle), which makes every position equally likely. Either way each position is chosen
        with probability exactly m / L (the estimate is unbiased), the m positions are distinct, and
        they are spread over the image (less variance than independent draws).
        """
        n, n_loc = flat.shape[0], flat.shape[2]
        m = self.locations
        if m is None or m >= n_loc:
            return None
        starts, sizes = self._strata(n_loc, m, flat.device)
        if n_loc % m == 0:  # equal strata: each position is in one stratum of L/m, no rotation needed
            return torch.randint(0, n_loc // m, (n, m), generator=generator, device=flat.device).add_(starts)
        # uniform in [0, size) per stratum: a 62-bit integer mod size (bias below 2^-55)
        within = torch.randint(0, 1 << 62, (n, m), generator=generator, device=flat.device).remainder_(sizes)
        offset = torch.randint(0, n_loc, (n, 1), generator=generator, device=flat.device)
        return within.add_(starts).add_(offset).remainder_(n_loc)  # (N, m)

    def _strata(self, n_loc: int, m: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Start and size of the m strata of L positions (cached per shape and device)."""
        key = (n_loc, m, device)
        if key not in self._strata_cache:
            edges = torch.arange(m + 1, device=device) * n_loc // m  # stratum k = [edges[k], edges[k+1])
            self._strata_cache[key] = (edges[:-1].clone(), edges[1:] - edges[:-1])
        return self._strata_cache[key]

    def _make_grad_hook(self, name: str, saved: Tensor, version: int, theta: Tensor, layout: Layout):
        def grad_hook(grad: Tensor) -> Tensor:
            if saved._version != version:
                raise RuntimeError(
                    f"PER: the output of layer {name!r} was modified in place after the forward pass; "
                    "use out-of-place operations (e.g. nn.ELU(inplace=False)) after regularized layers"
                )
            x = saved.to(theta.dtype)
            scale = self.lam if self.lam != 0.0 else 1.0
            g, loss = _grad_and_loss(as_samples(x, layout), theta, self.track_penalty, self.chunk_elements, scale)
            if loss is not None:
                self._track(name, loss)
            if self.lam == 0.0:
                return grad
            g = from_samples(g, x.shape, layout).to(grad.dtype).reshape(grad.shape)  # drops an added batch axis
            return grad.add_(g) if _owns(grad) else grad + g

        return grad_hook

    def _make_sampled_grad_hook(self, entry: _Sampled):
        """Backward for ``locations=m``: lambda x the gradient of the N*m chosen rows, added at their locations."""

        def grad_hook(grad: Tensor) -> Tensor:
            if entry.grad is None:
                self._compute_pending()
            assert entry.grad is not None
            if self.lam == 0.0:
                return grad
            # into grad itself when nothing else sees it; otherwise into a copy that owns its storage
            # (not a view: autograd sums the two gradients of a residual input in place only into such a tensor)
            out = grad if _owns(grad) else grad.clone(memory_format=torch.contiguous_format)
            n, c, _ = entry.index.shape
            out.view(n, c, -1).scatter_add_(2, entry.index, entry.grad.to(grad.dtype))
            return out

        return grad_hook

    def _compute_pending(self) -> None:
        """The PER gradients of every layer whose forward ran since the last call, layers of equal shape batched.

        The gradient at a layer's output depends only on its own rows and slices, never on the
        gradient flowing back, so all of them can be computed when the first one is needed: the
        layers with equal (N*m, C) (a ResNet stage) share one batched matmul-erf-matmul instead of
        ~10 small ops each, which on a small-layer net is most of PER's cost (``bench/``).
        Slices are drawn here, s fresh ones per layer, in forward order. Entries whose graph was
        dropped without a backward pass are gone (weak references) and cost nothing.
        """
        live = [e for ref in self._pending if (e := ref()) is not None and e.grad is None]
        self._pending.clear()
        groups: dict[tuple[torch.Size, torch.dtype, torch.device], list[_Sampled]] = {}
        for e in live:
            groups.setdefault((e.rows.shape, e.rows.dtype, e.rows.device), []).append(e)
        scale = self.lam if self.lam != 0.0 else 1.0
        s = self.n_slices
        for (shape, dtype, device), entries in groups.items():
            n_img, d, m = shape
            n = n_img * m
            dtype = _compute_dtype(dtype)
            gen = self._generator(device)
            theta = sample_slices(len(entries) * s, d, generator=gen, device=device, dtype=dtype).view(-1, s, d)
            per_block = max(1, self.chunk_elements // (n * s))  # layers per batched block
            for i in range(0, len(entries), per_block):
                part = entries[i : i + per_block]
                # rows (G, N, C, m) -> (G, N*m, C): one copy for the block, in the compute dtype
                x = torch.stack([e.rows for e in part]).to(dtype).transpose(-1, -2).reshape(len(part), n, d)
                g, loss = _grad_and_loss(x, theta[i : i + len(part)], self.track_penalty, self.chunk_elements, scale)
                for k, e in enumerate(part):
                    e.grad = g[k].view(n_img, m, d).transpose(1, 2)  # (N*m, C) -> (N, C, m)
                    if loss is not None:
                        self._track(e.name, loss[k])

    def _track(self, name: str, loss: Tensor) -> None:
        """Add one call's L_per to its layer's penalty of the running backward pass (a new pass starts over)."""
        task = torch._C._current_graph_task_id()
        if task != self._penalty_task:
            self._penalties, self._penalty_task = {}, task
        loss = loss.detach()
        self._penalties[name] = self._penalties[name] + loss if name in self._penalties else loss

    # -- logging and removal --------------------------------------------------------------------
    def penalty(self, per_layer: bool = False) -> float | dict[str, float]:
        r"""Last tracked :math:`\sum_{layers} L_{per}` (without :math:`\lambda`), or per layer.

        Values come from the most recent backward pass run with ``track_penalty=True`` (only the
        layers it reached); reading them synchronizes with the device, so call it when logging, not
        every step. A module called more than once in one forward (weight sharing) gets a gradient
        for every call, and its penalty is the sum over those calls, the objective whose gradient
        was added: :math:`\sum_{calls} L_{per}(h_{call})`.
        """
        if not self._penalties:
            raise RuntimeError(
                "PER.penalty(): no penalty was tracked yet; set track_penalty=True before a backward pass"
            )
        values = {k: float(v) for k, v in self._penalties.items()}
        return values if per_layer else sum(values.values())

    def remove(self) -> None:
        """Detach from all modules; later passes are exactly vanilla."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> PER:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"PER(lam={self.lam:g}, n_slices={self.n_slices}, layers={list(self.modules)})"
