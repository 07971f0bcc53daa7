r"""The baselines PER is compared with: activation penalties, VCL, decorrelated BN and recurrent BN.

Loss-based baselines attach to modules the way :class:`per_core.PER` does (forward hooks, removable,
context manager) but, unlike PER, they produce a loss term: call :meth:`loss` once per step and add
it to the task loss.

- :class:`L1Penalty`, :class:`L2Penalty`: activation regularization (AR) of Merity et al. [3]_.
- :class:`VCL`: the variance constancy loss of Littwin & Wolf [2]_.
- :class:`DecorrelatedBatchNorm2d`: ZCA whitening of groups of channels (Huang et al. [4]_);
  :func:`make_norm` builds it (or BN, or nothing) where a model places its normalization.
- :class:`RecurrentBatchNormLSTM`: an LSTM layer with batch normalization inside the recurrence and
  separate statistics per time step (Cooijmans et al. [5]_).

References
----------
.. [1] Joo, T., Kang, D., Kim, B. "Regularizing activations in neural networks via distribution
   matching with the Wasserstein metric", ICLR 2020, arXiv:2002.05366.
.. [2] Littwin, E., Wolf, L. "Regularizing by the variance of the activations' sample-variances",
   NeurIPS 2018, arXiv:1811.08764. Reference code: github.com/avirambh/vcl_pytorch (models/VCL.py).
.. [3] Merity, S., McCann, B., Socher, R. "Revisiting activation regularization for language RNNs",
   arXiv:1708.01009 (2017); Merity, S., Keskar, N. S., Socher, R. "Regularizing and optimizing LSTM
   language models", arXiv:1708.02182 (2017).
.. [4] Huang, L., Yang, D., Lang, B., Deng, J. "Decorrelated batch normalization", CVPR 2018,
   arXiv:1804.08450.
.. [5] Cooijmans, T., Ballas, N., Laurent, C., Gülçehre, Ç., Courville, A. "Recurrent batch
   normalization", ICLR 2017, arXiv:1603.09025.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Literal, Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from per_core.checks import check_nonnegative, check_positive_int, is_integer
from per_core.regularizer import named_targets

__all__ = [
    "VCL",
    "DecorrelatedBatchNorm2d",
    "L1Penalty",
    "L2Penalty",
    "RecurrentBatchNormLSTM",
    "StepwiseBatchNorm1d",
    "inverse_sqrt_spd",
    "make_norm",
]

NormName = Literal["none", "bn", "dbn"]


# --- loss-based baselines: one base class for hooks, collection and removal -------------------


class _OutputPenalty:
    """Forward hooks that turn each attached module's output into a penalty term (with its graph).

    Subclasses define :meth:`_term` (the unweighted penalty of one output). A term is computed on every
    forward pass that records a graph (grad enabled and the output requires grad); evaluation passes
    under ``torch.no_grad()`` add nothing. :meth:`loss` returns ``lam`` times the sum of the terms since
    its last call and starts a new sum.
    """

    def __init__(self, modules: nn.Module | Iterable[nn.Module] | Mapping[str, nn.Module], lam: float) -> None:
        self.lam = check_nonnegative(lam, "lam")
        self.modules = named_targets(modules, type(self).__name__)
        self._terms: list[tuple[str, Tensor]] = []
        self._last: dict[str, Tensor] | None = None  # None until loss() was called
        self._handles = [m.register_forward_hook(self._make_hook(n, m)) for n, m in self.modules.items()]

    def _make_hook(self, name: str, module: nn.Module):
        def forward_hook(mod: nn.Module, args: tuple, out: object) -> None:
            h = out[0] if isinstance(out, tuple) else out
            if isinstance(h, PackedSequence):
                h = h.data  # (sum of lengths, H): already rows
            if not isinstance(h, Tensor) or not h.is_floating_point():
                return
            if not (torch.is_grad_enabled() and h.requires_grad):
                return
            term = self._term(name, module, h)
            if term is not None:
                self._terms.append((name, term))

        return forward_hook

    def _term(self, name: str, module: nn.Module, h: Tensor) -> Tensor | None:
        raise NotImplementedError

    def loss(self) -> Tensor:
        """``lam`` times the summed penalty of all outputs seen since the last call (a scalar with graph).

        Returns a zero scalar when nothing was recorded (e.g. only ``no_grad`` passes ran); :meth:`penalty`
        then says 0 too.
        """
        if not self._terms:
            self._last = {}
            return torch.zeros(())
        per_layer: dict[str, Tensor] = {}
        for name, term in self._terms:
            per_layer[name] = per_layer[name] + term if name in per_layer else term
        self._terms = []
        self._last = {k: v.detach() for k, v in per_layer.items()}
        return self.lam * sum(per_layer.values())

    def penalty(self, per_layer: bool = False) -> float | dict[str, float]:
        """The unweighted penalty (without ``lam``) returned by the last :meth:`loss`, summed or per layer."""
        if self._last is None:
            raise RuntimeError(f"{type(self).__name__}.penalty(): loss() has not been called yet")
        values = {k: float(v) for k, v in self._last.items()}
        return values if per_layer else sum(values.values())

    def remove(self) -> None:
        """Detach from all modules and drop terms not yet collected; later passes are exactly vanilla."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._terms = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lam={self.lam:g}, layers={list(self.modules)})"


class L1Penalty(_OutputPenalty):
    r"""L1 activation penalty: :math:`\lambda` times the mean absolute activation of each attached layer.

    .. math::
        \mathcal{L}_{L1} = \lambda \sum_{\text{layers}} \frac{1}{N d} \sum_{i=1}^{N} \sum_{j=1}^{d} |h_{ij}|

    over all entries of the layer's output (rows as in :func:`per_core.as_samples`; the mean does not
    depend on how the output is cut into rows). This is the L1 counterpart of the activation
    regularization (AR) of Merity et al. [3]_, used as a baseline in [1]_ (Table 3).

    Parameters
    ----------
    modules : nn.Module, iterable of nn.Module, or mapping name -> nn.Module
        Layers whose outputs are penalized (e.g. ``model.pre_activations()``).
    lam : float
        Strength :math:`\lambda \ge 0`.

    Example
    -------
    >>> lin = nn.Linear(2, 2)
    >>> with L1Penalty(lin, lam=0.5) as pen:
    ...     _ = lin(torch.ones(4, 2))
    ...     bool(torch.isclose(pen.loss(), 0.5 * lin(torch.ones(4, 2)).abs().mean()))
    True
    """

    def _term(self, name: str, module: nn.Module, h: Tensor) -> Tensor:
        return h.abs().mean()


class L2Penalty(_OutputPenalty):
    r"""L2 activation penalty (AR of Merity et al. [3]_): :math:`\lambda` times the mean squared activation.

    .. math::
        \mathcal{L}_{L2} = \lambda \sum_{\text{layers}} \frac{1}{N d} \sum_{i=1}^{N} \sum_{j=1}^{d} h_{ij}^2

    Merity et al. apply it to the (dropped-out) output of the last LSTM layer; here it applies to the
    outputs of the attached modules.

    Parameters
    ----------
    modules, lam
        As in :class:`L1Penalty`.
    """

    def _term(self, name: str, module: nn.Module, h: Tensor) -> Tensor:
        return h.square().mean()


class VCL(_OutputPenalty):
    r"""Variance constancy loss (Littwin & Wolf [2]_): penalize the variance of the sample variances.

    For each attached layer, two disjoint subsets A and B of ``n`` samples are taken from the batch (the
    first ``n`` and the next ``n``, as in the reference code; a shuffled batch makes them random), and
    every unit u gets its unbiased sample variances :math:`s^2_{A,u}`, :math:`s^2_{B,u}`:

    .. math::
        \ell_{VCL} = \frac{1}{U} \sum_{u=1}^{U} \Big(1 - \frac{s^2_{A,u}}{s^2_{B,u} + \beta_u}\Big)^2,
        \qquad \mathcal{L}_{VCL} = \lambda \sum_{\text{layers}} \ell_{VCL}.

    What is checked against the paper and its reference implementation (github.com/avirambh/vcl_pytorch,
    ``models/VCL.py``): the form above with :math:`\beta` a learnable per-unit parameter initialized to 1 (kept
    >= 1e-3 here, a safeguard the reference code does not have), ``n = 5`` by default, applied to the
    pre-activations (the reference code puts a forward pre-hook on each activation module; here a forward
    hook on each module passed, the models' ``pre_activations()`` taps, which is the same tensor; passing the
    activation modules themselves would regularize post-activations), summed over layers. A *unit* is one
    activation: for a conv output ``(N, C, H, W)`` every ``(c, y, x)`` is a unit and every image a sample
    (``h.reshape(N, -1)``), not the per-channel rows of :func:`per_core.as_samples`. This is what makes the
    paper's VCL overhead of about 350K parameters on the 11-layer CNN [1]_ (350,460 betas on its ten hidden
    layers for 32x32 inputs).

    Parameters
    ----------
    modules : nn.Module, iterable of nn.Module, or mapping name -> nn.Module
        Layers whose outputs (batch first: ``(N, *features)``) are regularized. Recurrent modules are
        rejected: their outputs are time-major or packed, and change length.
    lam : float
        Weight :math:`\lambda` of the summed loss (the reference code's ``gamma``, default 0.01 there).
    sample_size : int or None
        ``n``, the size of each subset; None uses two halves of the batch. A batch with fewer than
        ``2n`` samples uses ``n = N // 2``; a layer with ``N < 4`` contributes nothing.
    beta : float
        Initial (or, with ``learn_beta=False``, constant) :math:`\beta`.
    learn_beta : bool
        When True, every layer gets a learnable :math:`\beta` per unit, created at the first forward pass
        (unit shape = output shape without the batch dimension). Run one training-mode forward pass, then
        give :meth:`parameters` to the optimizer (the reference code does the same); save them with
        :meth:`state_dict`. When False (default) no parameter is added and :math:`\beta` is constant.

    Example
    -------
    >>> lin = nn.Linear(3, 4)
    >>> with VCL(lin, lam=1.0) as vcl:
    ...     _ = lin(torch.randn(10, 3))
    ...     bool(vcl.loss() >= 0)
    True
    """

    def __init__(
        self,
        modules: nn.Module | Iterable[nn.Module] | Mapping[str, nn.Module],
        lam: float,
        sample_size: int | None = 5,
        *,
        beta: float = 1.0,
        learn_beta: bool = False,
    ) -> None:
        if sample_size is not None and (not is_integer(sample_size) or sample_size < 2):
            raise ValueError(f"sample_size must be None (halves) or an integer >= 2, got {sample_size!r}")
        beta = check_nonnegative(beta, "beta")
        for name, m in named_targets(modules, "VCL").items():
            if isinstance(m, nn.RNNBase | RecurrentBatchNormLSTM):
                raise TypeError(
                    f"VCL does not take recurrent modules ({name!r}): their outputs are time-major or packed and "
                    "change length, while VCL's samples are the batch's and its learned betas are per output unit; "
                    "regularize a layer with batch-first outputs of fixed shape"
                )
        self.sample_size = None if sample_size is None else int(sample_size)
        self.beta = beta
        self.learn_beta = learn_beta
        self._betas: dict[str, nn.Parameter] = {}
        super().__init__(modules, lam)

    #: Lower bound applied to a learned beta before use (a safeguard against a zero or negative denominator;
    #: the reference code has none).
    BETA_MIN = 1e-3

    def _beta_for(self, name: str, h: Tensor) -> Tensor | float:
        if not self.learn_beta:
            return self.beta
        if name not in self._betas:
            dtype = torch.promote_types(h.dtype, torch.float32)  # half-precision outputs get float32 betas
            self._betas[name] = nn.Parameter(torch.full(h.shape[1:], self.beta, device=h.device, dtype=dtype))
        beta = self._betas[name]
        with torch.no_grad():
            beta.clamp_(min=self.BETA_MIN)
        return beta.flatten()

    def _term(self, name: str, module: nn.Module, h: Tensor) -> Tensor | None:
        n_batch = h.shape[0]
        n = n_batch // 2 if self.sample_size is None else min(self.sample_size, n_batch // 2)
        beta = self._beta_for(name, h)
        if n < 2:
            return None
        rows = h.reshape(n_batch, -1)  # (N, *features) -> (N, U): every activation is a unit
        var_a = rows[:n].var(dim=0)  # (U,), unbiased
        var_b = rows[n : 2 * n].var(dim=0)
        return (1 - var_a / (var_b + beta)).square().mean()

    def parameters(self) -> Iterator[nn.Parameter]:
        """The learned betas (empty unless ``learn_beta=True`` and a forward pass has run)."""
        return iter(self._betas.values())

    def state_dict(self) -> dict[str, Tensor]:
        """Learned betas by layer name."""
        return {k: v.detach().clone() for k, v in self._betas.items()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore betas saved by :meth:`state_dict` (before or after the first forward pass)."""
        for k, v in state.items():
            if k in self._betas:
                with torch.no_grad():
                    self._betas[k].copy_(v)
            else:
                self._betas[k] = nn.Parameter(v.detach().clone())


# --- decorrelated batch normalization --------------------------------------------------------


def _check_momentum(momentum: object, why_no_none: str) -> float:
    """A running-average weight in [0, 1], as a float; a one-line error otherwise."""
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0 <= momentum <= 1:
        raise ValueError(
            f"momentum must be a number in [0, 1], got {momentum!r} (nn.BatchNorm's None, a cumulative "
            f"average, is not offered: {why_no_none})"
        )
    return float(momentum)


class _Covariance64(torch.autograd.Function):
    """:math:`\\frac{1}{M} X X^T` of (G, m, M) rows computed in float64; the backward in the input's dtype.

    The forward needs float64: in float32 a covariance plus eps loses eps to rounding once the entries
    exceed ~10, and a rank-deficient group then gets eigenvalues below 0. Its gradient,
    :math:`\\frac{1}{M}(\\bar G + \\bar G^T) X`, has no such cancellation, so it runs in the input's dtype
    and keeps the input itself, not a float64 copy. On MPS, which has no float64, the covariance is
    computed and returned on the CPU.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        x64 = x.to(device=_float64_device(x.device), dtype=torch.float64)
        return x64 @ x64.transpose(-1, -2) / x.shape[-1]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        g = (grad + grad.transpose(-1, -2)).to(device=x.device, dtype=x.dtype)
        return g @ x / x.shape[-1]


def _float64_device(device: torch.device) -> torch.device:
    """Where float64 work for a tensor on ``device`` runs: there, or on the CPU for MPS (no float64)."""
    return torch.device("cpu") if device.type == "mps" else device


class _InverseSqrtSPD(torch.autograd.Function):
    """:math:`\\Sigma^{-1/2}` of symmetric positive definite matrices, with a stable backward."""

    @staticmethod
    def forward(ctx, sigma: Tensor, min_eigenvalue: float) -> Tensor:
        lam, u = torch.linalg.eigh(sigma)  # sigma = U diag(lam) U^T, batched over leading dims
        s = lam.clamp_min(max(min_eigenvalue, torch.finfo(lam.dtype).tiny)).sqrt()
        ctx.save_for_backward(u, s)
        return (u / s.unsqueeze(-2)) @ u.transpose(-1, -2)  # U diag(1/s) U^T

    @staticmethod
    @torch.autograd.function.once_differentiable  # u and s are constants here: a second derivative would be wrong
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        u, s = ctx.saved_tensors
        si, sj = s.unsqueeze(-1), s.unsqueeze(-2)
        # divided differences of f(x) = x^(-1/2) at the eigenvalues: finite even for equal eigenvalues
        k = -1.0 / (si * sj * (si + sj))
        g = 0.5 * (grad + grad.transpose(-1, -2))
        ut = u.transpose(-1, -2)
        return u @ (k * (ut @ g @ u)) @ ut, None


def inverse_sqrt_spd(sigma: Tensor, min_eigenvalue: float = 0.0) -> Tensor:
    r"""The ZCA whitening matrix :math:`W = \Sigma^{-1/2} = U \Lambda^{-1/2} U^T` (batched).

    The backward uses the Daleckii-Krein formula with the divided differences of
    :math:`f(\lambda) = \lambda^{-1/2}`,

    .. math::
        \frac{\partial L}{\partial \Sigma} = U \big(K \circ (U^T \bar G U)\big) U^T, \qquad
        K_{ij} = \frac{-1}{\sqrt{\lambda_i}\sqrt{\lambda_j}(\sqrt{\lambda_i} + \sqrt{\lambda_j})},
        \quad \bar G = \tfrac{1}{2}(G + G^T),

    which stays finite when eigenvalues coincide (autograd through ``eigh`` divides by
    :math:`\lambda_i - \lambda_j`). The result equals the gradient of the DBN paper [4]_. It is a
    first derivative only: differentiating it again (``create_graph=True``) raises.

    Parameters
    ----------
    sigma : Tensor, shape (..., m, m)
        Symmetric positive definite matrices.
    min_eigenvalue : float
        Eigenvalues are raised to at least this (and to the dtype's smallest normal number) before
        :math:`\lambda^{-1/2}`: rounding can make the computed eigenvalues of a matrix known to be
        :math:`\succeq \epsilon I` (a covariance plus :math:`\epsilon I`) fall below :math:`\epsilon`, even below 0.

    Returns
    -------
    W : Tensor, shape (..., m, m)
        Symmetric, with :math:`W \Sigma W = I`.

    Example
    -------
    >>> w = inverse_sqrt_spd(torch.tensor([[4.0, 0.0], [0.0, 9.0]]))
    >>> torch.allclose(w, torch.tensor([[0.5, 0.0], [0.0, 1 / 3]]))
    True
    """
    return _InverseSqrtSPD.apply(sigma, float(min_eigenvalue))


class DecorrelatedBatchNorm2d(nn.Module):
    r"""Decorrelated batch normalization (Huang et al. [4]_): ZCA whitening of groups of channels.

    Channels are split into groups of ``group_size`` (the last group takes the remainder). For a group
    with centered data :math:`X_C \in \mathbb{R}^{m \times M}` (m channels, M = batch x locations):

    .. math::
        \Sigma = \tfrac{1}{M} X_C X_C^T + \epsilon I, \qquad
        \hat X = \Sigma^{-1/2} X_C = U \Lambda^{-1/2} U^T X_C, \qquad
        y = \gamma \odot \hat X + \beta

    per channel. ZCA (the symmetric whitening matrix) is the whitening that keeps :math:`\hat X` closest
    to :math:`X_C`, which avoids the stochastic axis swapping of PCA whitening [4]_. In training, the batch
    statistics are used and the backward goes through them (see :func:`inverse_sqrt_spd`); the running
    mean and the running whitening matrix (exponential averages with ``momentum``, as in the paper's
    code) are used in evaluation.

    Parameters
    ----------
    num_features : int
        Channels C of an ``(N, C, *spatial)`` input.
    group_size : int
        Channels whitened together (paper's recommendation for CIFAR-size nets: 16). ``group_size >= C``
        whitens all channels jointly. A training batch needs M = batch x locations well above it: with
        M <= group_size the covariance is singular and the batch is kept out of the running whitening
        (with a warning; evaluation then uses the other batches' average, the identity if there were
        none, so it only centres), and a few samples more than group_size still give a noisy estimate
        that the running average takes in (std of eval outputs up to 1.3 after one batch of M = 17).
    eps : float
        :math:`\epsilon` added to the covariance.
    momentum : float
        Weight of the new batch in the running averages.
    affine : bool
        Learn the per-channel :math:`\gamma` (init 1) and :math:`\beta` (init 0).

    Example
    -------
    >>> dbn = DecorrelatedBatchNorm2d(4, group_size=2)
    >>> dbn(torch.randn(8, 4, 3, 3)).shape
    torch.Size([8, 4, 3, 3])
    """

    def __init__(
        self, num_features: int, group_size: int = 16, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True
    ) -> None:
        super().__init__()
        num_features = check_positive_int(num_features, "num_features")
        group_size = check_positive_int(group_size, "group_size")
        self.num_features = num_features
        self.group_size = m = min(group_size, num_features)
        self.eps = eps
        self.momentum = _check_momentum(momentum, "the running whitening is an exponential average")
        n_full, rest = divmod(num_features, m)
        self.register_buffer("running_mean", torch.zeros(num_features))
        # whitening matrices of the full groups (n_full, m, m) and of the remainder group (0 or 1, r, r)
        self.register_buffer("running_whitening", torch.eye(m).repeat(n_full, 1, 1))
        self.register_buffer("running_whitening_rest", torch.eye(rest).repeat(1 if rest else 0, 1, 1))
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def _groups(self, x: Tensor) -> list[Tensor]:
        """(C, M) -> [(n_full, m, M), (0 or 1, r, M)]: full groups batched, then the remainder."""
        n_full = self.running_whitening.shape[0]
        full = x[: n_full * self.group_size].reshape(n_full, self.group_size, -1)
        rest = x[n_full * self.group_size :].unsqueeze(0)
        return [full, rest[: self.running_whitening_rest.shape[0]]]

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"expected input (N, {self.num_features}, *spatial), got {tuple(x.shape)}")
        shape = x.shape
        # half inputs are whitened in float32: the covariance path's gradient grows like 1/lambda^1.5 and cancels
        # against the direct path's, each beyond float16's range for a near-singular group under loss scaling
        work = torch.promote_types(x.dtype, torch.float32)
        x2 = x.transpose(0, 1).reshape(self.num_features, -1).to(work)  # (N, C, *S) -> (C, N*prod(S))
        buffers = [self.running_whitening, self.running_whitening_rest]
        if self.training:
            # m channels from at most m samples: a singular covariance, whose eps eigenvalues would put 1/sqrt(eps)
            # (316) into the running whitening; the batch is whitened as the reference code does, but not averaged
            singular = x2.shape[1] <= self.group_size
            if singular:
                warnings.warn(
                    f"DecorrelatedBatchNorm2d: {x2.shape[1]} samples per channel (batch x locations) cannot estimate "
                    f"the whitening of {self.group_size} channels (it needs more samples than channels), so the "
                    "running whitening was not updated; use a larger batch or a smaller group_size",
                    RuntimeWarning,
                    stacklevel=4,
                )
            mean = x2.mean(dim=1)
            xc = x2 - mean.unsqueeze(1)
            outs = []
            for g, buf in zip(self._groups(xc), buffers, strict=True):
                if g.shape[0] == 0:
                    continue
                # in float64: in float32, eps (1e-5) is lost to rounding once the channels' variance exceeds
                # ~10, and a rank-deficient group (a dead channel) then got eigenvalues below 0 and a 1e14 output
                eye = torch.eye(g.shape[1], device=_float64_device(x.device), dtype=torch.float64)
                sigma = _Covariance64.apply(g) + self.eps * eye  # (G, m, m)
                w64 = inverse_sqrt_spd(sigma, min_eigenvalue=self.eps)  # eigenvalues are >= eps
                outs.append((w64.to(device=x.device, dtype=work) @ g).reshape(-1, g.shape[2]))  # (G*m, M)
                if not singular:
                    with torch.no_grad():
                        buf.lerp_(w64.detach().to(device=buf.device, dtype=buf.dtype), self.momentum)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
        else:
            xc = x2 - self.running_mean.to(work).unsqueeze(1)
            outs = [
                (buf.to(work) @ g).reshape(-1, g.shape[2])
                for g, buf in zip(self._groups(xc), buffers, strict=True)
                if g.shape[0]
            ]
        y = torch.cat(outs)  # (C, M)
        if self.weight is not None:
            y = y * self.weight.to(work).unsqueeze(1) + self.bias.to(work).unsqueeze(1)
        y = y.reshape(shape[1], shape[0], *shape[2:]).transpose(0, 1)  # (C, M) -> (N, C, *S), a strided view
        # stored as the input is (a (C, N, *S) layout slowed the next conv by 12 %)
        channels_last = x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        out_dtype = x.dtype if self.weight is None else torch.promote_types(x.dtype, self.weight.dtype)
        return y.to(out_dtype).contiguous(memory_format=fmt)

    def extra_repr(self) -> str:
        return f"{self.num_features}, group_size={self.group_size}, eps={self.eps}, momentum={self.momentum}"


def make_norm(norm: NormName, channels: int) -> nn.Module:
    """The normalization a model puts after a conv: ``'none'`` -> Identity, ``'bn'`` -> BatchNorm2d,
    ``'dbn'`` -> :class:`DecorrelatedBatchNorm2d`. Its output is the layer's pre-activation.

    Example
    -------
    >>> type(make_norm("dbn", 32)).__name__
    'DecorrelatedBatchNorm2d'
    """
    if norm == "none":
        return nn.Identity()
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "dbn":
        return DecorrelatedBatchNorm2d(channels)
    raise ValueError(f"norm must be 'none', 'bn' or 'dbn', got {norm!r}")


# --- recurrent batch normalization ----------------------------------------------------------


class StepwiseBatchNorm1d(nn.Module):
    r"""Batch norm of ``(N, F)`` inputs with separate running statistics for each time step.

    .. math::
        \mathrm{BN}_t(x) = \gamma \odot \frac{x - \mu_t}{\sqrt{\sigma_t^2 + \epsilon}} + \beta

    Training uses the batch statistics of step t and updates the running statistics of step t; steps
    ``t >= max_steps`` use their batch statistics in training without updating anything, and the
    statistics of step ``max_steps - 1`` in evaluation (Cooijmans et al. [5]_, Section 4).

    Parameters
    ----------
    num_features : int
    max_steps : int
        Number of time steps with their own statistics.
    gamma_init : float
        Initial :math:`\gamma` (0.1 in [5]_, which keeps tanh/sigmoid out of saturation).
    shift : bool
        Learn :math:`\beta` (init 0); without it there is no shift.
    eps, momentum : float
        As in ``nn.BatchNorm1d``.
    """

    def __init__(
        self,
        num_features: int,
        max_steps: int,
        gamma_init: float = 0.1,
        shift: bool = True,
        eps: float = 1e-5,
        momentum: float = 0.1,
    ) -> None:
        super().__init__()
        num_features = check_positive_int(num_features, "num_features")
        self.max_steps = check_positive_int(max_steps, "max_steps")
        self.eps = eps
        self.momentum = _check_momentum(momentum, "it would need a count per time step")
        self.weight = nn.Parameter(torch.full((num_features,), float(gamma_init)))
        self.bias = nn.Parameter(torch.zeros(num_features)) if shift else None
        self.register_buffer("running_mean", torch.zeros(max_steps, num_features))
        self.register_buffer("running_var", torch.ones(max_steps, num_features))

    def forward(self, x: Tensor, t: int) -> Tensor:
        if self.training and x.shape[0] < 2:
            raise ValueError(
                f"recurrent batch normalization in training needs at least 2 sequences per batch (for batch "
                f"statistics), got {x.shape[0]}: use a larger batch, or eval mode"
            )
        s = min(t, self.max_steps - 1)
        if self.training and t >= self.max_steps:
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        # row views of the buffers: batch_norm updates step t's running statistics in place
        return F.batch_norm(
            x, self.running_mean[s], self.running_var[s], self.weight, self.bias, self.training, self.momentum, self.eps
        )


class RecurrentBatchNormLSTM(nn.Module):
    r"""One LSTM layer with recurrent batch normalization (Cooijmans et al. [5]_).

    .. math::
        \begin{pmatrix} i_t \\ f_t \\ g_t \\ o_t \end{pmatrix}
            = \mathrm{BN}_t(W_h h_{t-1}; \gamma_h) + \mathrm{BN}_t(W_x x_t; \gamma_x) + b, \qquad
        c_t = \sigma(f_t) \odot c_{t-1} + \sigma(i_t) \odot \tanh(g_t), \qquad
        h_t = \sigma(o_t) \odot \tanh(\mathrm{BN}_t(c_t; \gamma_c, \beta_c))

    with separate statistics per time step (:class:`StepwiseBatchNorm1d`), :math:`\gamma` initialized to
    0.1 and no shift in the two gate normalizations (the single bias b does it). Weights are initialized
    as in ``nn.LSTM`` (uniform in :math:`\pm 1/\sqrt{H}`), b = 0, so that the normalization is the only
    difference with the vanilla layer (the authors' Penn Treebank code instead uses orthogonal weights,
    a forget-gate bias of 1, learned initial states and a statistics momentum of 0.05). The interface
    is that of a one-layer ``nn.LSTM`` (time-major). In a language model trained with truncated
    backpropagation, step t is the position within a segment (the hidden state carries over), so the
    statistics of step 0 mix segment starts with the start of the text.

    Parameters
    ----------
    input_size, hidden_size : int
    max_steps : int
        Time steps with their own statistics (longer sequences reuse the last).
    gamma_init, eps, momentum : float
        See :class:`StepwiseBatchNorm1d`.

    Example
    -------
    >>> lstm = RecurrentBatchNormLSTM(3, 4, max_steps=5)
    >>> out, (h, c) = lstm(torch.randn(7, 2, 3))
    >>> out.shape, h.shape, c.shape
    (torch.Size([7, 2, 4]), torch.Size([1, 2, 4]), torch.Size([1, 2, 4]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        max_steps: int = 100,
        gamma_init: float = 0.1,
        eps: float = 1e-5,
        momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        h4 = 4 * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(h4, input_size))
        self.weight_hh = nn.Parameter(torch.empty(h4, hidden_size))
        self.bias = nn.Parameter(torch.zeros(h4))
        self.bn_ih = StepwiseBatchNorm1d(h4, max_steps, gamma_init, shift=False, eps=eps, momentum=momentum)
        self.bn_hh = StepwiseBatchNorm1d(h4, max_steps, gamma_init, shift=False, eps=eps, momentum=momentum)
        self.bn_c = StepwiseBatchNorm1d(hidden_size, max_steps, gamma_init, shift=True, eps=eps, momentum=momentum)
        bound = 1.0 / math.sqrt(hidden_size)
        nn.init.uniform_(self.weight_ih, -bound, bound)
        nn.init.uniform_(self.weight_hh, -bound, bound)

    def forward(self, x: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x: (T, N, input_size); hx: (h0, c0), each (1, N, hidden_size), zeros when None.

        Returns the output sequence (T, N, hidden_size) and (h_T, c_T), each (1, N, hidden_size).
        """
        if x.ndim != 3 or x.shape[2] != self.input_size:
            raise ValueError(f"expected input (T, N, {self.input_size}), got {tuple(x.shape)}")
        n = x.shape[1]
        if hx is None:
            h = x.new_zeros(n, self.hidden_size)
            c = x.new_zeros(n, self.hidden_size)
        else:
            shapes = [tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in hx]
            if len(shapes) != 2 or any(sh != (1, n, self.hidden_size) for sh in shapes):
                raise ValueError(
                    f"hx must be (h0, c0), each of shape (1, {n}, {self.hidden_size}) as nn.LSTM's for one layer "
                    f"and batch {n}, got {shapes}"
                )
            h, c = hx[0][0], hx[1][0]
        wx = x @ self.weight_ih.T  # (T, N, I) -> (T, N, 4H), all steps at once
        outputs = []
        for t in range(x.shape[0]):
            gates = self.bn_hh(h @ self.weight_hh.T, t) + self.bn_ih(wx[t], t) + self.bias  # (N, 4H)
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(self.bn_c(c, t))
            outputs.append(h)
        return torch.stack(outputs), (h.unsqueeze(0), c.unsqueeze(0))

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, max_steps={self.bn_c.max_steps}"
