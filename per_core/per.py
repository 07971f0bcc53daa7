r"""PER: projected error function regularization (Joo, Kang & Kim, ICLR 2020).

Everything about the method's math lives in this file. How a layer's output becomes rows is in
:mod:`per_core.samples`; attaching Algorithm 1 to layers (hooks) is :class:`per_core.regularizer.PER`.

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

import math

import torch
from torch import Tensor

from per_core.checks import check_positive_int

__all__ = ["folded_normal_mean", "per_grad", "per_loss", "sample_slices"]

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
    return bool(torch.isfinite(t.sum(dtype=compute_dtype(t.dtype)))) or bool(torch.isfinite(t).all())


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


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
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
    v = torch.randn(n_slices, dim, generator=generator, device=gen_device, dtype=compute_dtype(dtype))
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
    Differentiable by autograd; float32/float64 (half precision is computed in float32). Under
    autograd every chunk's intermediates stay alive until backward, so memory grows with N x s
    (2.1 GB for N = 262,144, d = 16, s = 256): for large N take the gradient from :func:`per_grad`
    or :class:`per_core.PER`, which hold one chunk.

    Parameters
    ----------
    h : Tensor, shape (N, d)
        Rows are samples (see :func:`per_core.samples.as_samples`).
    n_slices : int
        Number of random directions s (ignored when ``theta`` is given).
    generator : torch.Generator, optional
        Randomness for the directions.
    theta : Tensor, shape (s, d), optional
        Use these directions instead of drawing new ones: finite, s >= 1, rows of unit norm
        (checked to 1e-5, or 8 machine epsilons of a half-precision ``theta``).
    chunk_elements : int
        The rows x slices projection is computed in chunks of at most ``max(chunk_elements, s)``
        elements (a chunk holds at least one row).

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
    x = h.to(compute_dtype(h.dtype))
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


def grad_and_loss(
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
    x = h.detach().to(compute_dtype(h.dtype))
    theta = _slices_for(x, n_slices, generator, theta)
    grad, _ = grad_and_loss(x, theta, False, chunk_elements)
    return grad.to(h.dtype)


def __getattr__(name: str) -> object:
    """``per_core.per.PER``, ``as_samples`` and ``from_samples``, which lived here before the split (lazily:
    :mod:`per_core.regularizer` imports this module)."""
    if name == "PER":
        from per_core.regularizer import PER

        return PER
    if name in ("as_samples", "from_samples"):
        from per_core import samples

        return getattr(samples, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
