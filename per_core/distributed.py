r"""Data-parallel plumbing: the torchrun environment, process group, and a BatchNorm synchronized across ranks.

``torchrun --nproc_per_node=N -m per_core.train ...`` starts N processes with the environment
variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_from_env` reads them and joins the process group (``nccl`` when CUDA is available,
``gloo`` on the CPU). Without them everything runs as one process and nothing here communicates.

Seeds under data parallelism (the trainer's convention; each stream's seed comes from
:func:`per_core.seeds.stream_seed`):

- the data order comes from one generator with the same seed on every rank: every rank walks the
  same permutation and takes its contiguous share of each global batch (what
  ``torch.utils.data.DistributedSampler`` does with a shared seed, on in-memory tensors);
- PER's slices come from one seed shared by all ranks, so all ranks use the same directions and
  the averaged gradient equals the single-process gradient of the whole batch;
- augmentation, dropout, PER's spatial locations and the recorder's reservoir draw from per-rank
  seeds (independent).

Why PER needs no synchronization: with slices shared, rank r's PER gradient for its rows is
:math:`\frac{1}{N_r} \sum_{i \in r} g(h_i)`; DDP averages gradients over R ranks, so with equal
shares :math:`N_r = N / R` the result is :math:`\frac{1}{N} \sum_i g(h_i)`, the full-batch gradient,
with no communication beyond DDP's gradient all-reduce. BatchNorm's normalization uses batch
statistics, so without synchronization each rank normalizes with its own half-batch statistics;
:func:`convert_sync_batchnorm` makes it exact at the cost of collectives in every BN layer.

Evaluation is shared too: after rank 0's buffers are broadcast (:meth:`DistEnv.broadcast_buffers`),
each rank evaluates its share of the validation split (every R-th batch of images, or its columns
of a language model's evaluation streams) and one all-reduce sums the losses, so every rank reports
the same metrics for 1/R of the work (:meth:`per_core.tasks.ImageClassification.evaluate`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "CrossRankBatchNorm2d",
    "DistEnv",
    "convert_sync_batchnorm",
    "exit_without_teardown",
    "gloo_ranks",
    "init_from_env",
    "resolve_device",
    "sync_bn_traffic",
]


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: rank, number of ranks and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        """Sum of ``t`` over ranks (returned; ``t`` itself is left alone)."""
        if not self.distributed:
            return t
        out = t.clone()
        dist.all_reduce(out)
        return out

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (e.g. running statistics) into every rank's ``module``, in place.

        DDP broadcasts them only at the start of a training forward, so after an epoch's last step the
        ranks' unsynchronized statistics (recurrent BN, DBN) differ; evaluating then would give each
        rank its own validation loss, and each rank's plateau schedule its own learning rate.
        """
        if self.distributed:
            for b in module.buffers():
                dist.broadcast(b, 0)

    def all_gather_object(self, obj: object) -> list[object]:
        if not self.distributed:
            return [obj]
        out: list[object] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


#: What ``--device`` accepts (``resolve_device``'s ``name``).
_VALID_DEVICES = "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> ``cuda:local_rank`` when CUDA is available, else the CPU; 'cuda' -> ``cuda:local_rank``.

    Raises ValueError, saying what is valid, for any other name, for a GPU that is not there
    (CUDA not available, ``cuda:N`` beyond the GPUs present) and for 'mps' without Apple's backend.
    """
    if not isinstance(name, str):
        raise TypeError(f"device must be a string ({_VALID_DEVICES}), got {type(name).__name__}")
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(f"cuda:{local_rank}" if name == "cuda" else name)
    except RuntimeError:  # torch's message lists 20 backends this project does not run on
        raise ValueError(f"device must be {_VALID_DEVICES}, got {name!r}") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be {_VALID_DEVICES}, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for but CUDA is not available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} was asked for but only {torch.cuda.device_count()} GPU(s) are visible "
                f"(cuda:0..cuda:{torch.cuda.device_count() - 1})"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} was asked for but the MPS backend is not available; use --device cpu")
    return device


def init_from_env(device: str = "auto") -> DistEnv:
    """Join the process group described by torchrun's environment variables (or run as one process).

    The backend is nccl when this rank's device is a GPU and gloo on the CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistEnv(rank, world_size, local_rank, dev)


def shutdown() -> None:
    """Tear the process group down, if there is one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gloo_ranks() -> bool:
    """Whether this process is one of several ranks of a gloo (CPU) process group that is still up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and dist.get_backend() == "gloo"


def exit_without_teardown(code: int) -> NoReturn:
    """End a rank of a gloo group with exit status ``code``, without tearing gloo down.

    Tearing it down races with the peers: a rank whose peer closed the connections first could abort
    ("terminate called without an active exception", exit -6) after all its results were written (twice
    in about 70 torchrun launches of the tests in one session, quiet or loaded). After the trainer's final
    barrier every rank has finished its collectives, so each one exits at once and the kernel closes the
    sockets; a rank that failed exits at once too (no barrier a failed peer would never reach).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable: the gradient of a sum used on every rank is the sum of the gradients."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


class CrossRankBatchNorm2d(nn.BatchNorm2d):
    r"""BatchNorm2d whose training statistics are summed over all ranks (works with gloo on the CPU).

    Each rank r reduces its local batch and locations to per-channel :math:`n_r`, :math:`S^{(r)} = \sum x`
    and :math:`Q^{(r)} = \sum (x - \bar x_r)^2 + n_r \bar x_r^2` (centred on its own mean
    :math:`\bar x_r`, accumulated in float64); these are all-reduced, differentiably, and

    .. math::
        \mu = \frac{\sum_r S^{(r)}}{n}, \qquad
        \sigma^2 = \max\Big(0, \frac{\sum_r Q^{(r)}}{n} - \mu^2\Big), \qquad
        y = \gamma \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta, \qquad n = \sum_r n_r,

    what one process computes on the whole batch. Centring and float64 keep the difference from
    cancelling: raw float32 sums of :math:`x` and :math:`x^2` gave an error of 0.26 at mean 10 and NaN
    at mean 100 for values of std 0.01. ``torch.nn.SyncBatchNorm`` does the
    same but accepts only GPU tensors; :func:`convert_sync_batchnorm` picks the right one.
    Communication: one all-reduce of 2C + 1 numbers per layer in forward, and one in backward.
    """

    def forward(self, x: Tensor) -> Tensor:
        # synchronized in training only, as nn.SyncBatchNorm (an untracked BN in eval uses its local batch)
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        n_local = x.numel() // c
        f64 = torch.float64
        s1 = x.sum((0, 2, 3), dtype=f64)
        centre = (s1 / n_local).to(x.dtype)  # the local mean, as x's dtype holds it
        d = x - centre[None, :, None, None]
        m = centre.to(f64)
        q = (d * d).sum((0, 2, 3), dtype=f64) + 2 * m * d.sum((0, 2, 3), dtype=f64) + n_local * m * m  # = sum x^2
        total = _AllReduceSum.apply(torch.cat([s1, q, q.new_tensor([float(n_local)])]))
        n = total[-1]
        mean64 = total[:c] / n
        mean = mean64.to(x.dtype)
        var = (total[c : 2 * c] / n - mean64 * mean64).clamp_min(0).to(x.dtype)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), m)
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None] if self.affine else y


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm2d by a rank-synchronized one: ``nn.SyncBatchNorm`` on GPUs, else ours.

    As ``nn.SyncBatchNorm.convert_sync_batchnorm``: the new layer holds the old one's parameters (the same
    objects, so a frozen BN stays frozen and an optimizer built before still sees them), its buffers and its
    train/eval mode; ``track_running_stats=False`` is kept.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            new = CrossRankBatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            new.running_mean, new.running_var = child.running_mean, child.running_var
            new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(model, name, new)
        else:
            convert_sync_batchnorm(child, device)
    return model


def sync_bn_traffic(model: nn.Module) -> dict[str, int]:
    """Collectives and numbers per training step that synchronized BN adds, per rank (PER adds none).

    Per BN layer with C channels: forward all-reduce of 2C + 1 numbers and backward all-reduce of
    2C numbers (``nn.SyncBatchNorm`` all-gathers mean, invstd and count in forward instead, the same
    order of size times the number of ranks).
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return {
        "bn_layers": len(layers),
        "collectives": 2 * len(layers),
        "numbers": sum(4 * m.num_features + 1 for m in layers),
    }
