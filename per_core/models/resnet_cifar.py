r"""CIFAR ResNets of depth 6n+2 (He et al. [1]_): batch norm, decorrelated BN, or Fixup without normalization.

Architecture (He et al. [1]_, Section 4.2): a 3x3 conv with 16 channels, then three stages of n basic
blocks with 16, 32 and 64 channels (the first block of stages 2 and 3 has stride 2), global average
pooling and a linear classifier. Shortcuts are option A: the identity, subsampled with stride 2 and
padded with zero channels where the width doubles (no parameters).

``norm='bn'`` (or ``'dbn'``): every conv is followed by BatchNorm2d (or
:class:`~per_core.baselines.DecorrelatedBatchNorm2d`); convs have no bias; He (fan-out) init. The DBN
authors' residual networks (github.com/princeton-vl/DecorrelatedBN, ``models/Conv/wr_DBN_scale_L1.lua``)
whiten only after the stem conv and keep BN elsewhere; ``'dbn'`` here whitens after every conv (DBN is
not in the paper's tables).

``norm='none'``: Fixup (Zhang, Dauphin & Ma [2]_), the setting of the paper's vanilla and PER rows [3]_:
no normalization; a learnable scalar bias (init 0) before each conv, before each ReLU and before the
classifier; a scalar multiplier (init 1) on each residual branch; the last conv of each branch and the
classifier initialized to zero; the first conv of each branch He-initialized then scaled by
:math:`L^{-1/(2m-2)} = L^{-1/2}` (L residual branches, m = 2 layers per branch). So at initialization every
residual branch outputs 0 and the network outputs 0 logits. As in the authors' code
(github.com/hongyi-zhang/Fixup, ``cifar/models/fixup_resnet_cifar.py``) the branch's first bias is also
added to the input of a subsampling shortcut. Not followed from that repository: its BN model puts a BN
on the subsampling shortcut and zero-initializes each block's last BN scale; here the BN model is the
plain one of [1]_. The stem conv is He-initialized in both variants.

Pre-activations (``pre_activations()``, what PER and the recorder see): every tensor that enters a ReLU,
in depth order, i.e. one per conv layer below the classifier (depth - 1 layers):

- ``layer1``: the stem, ``norm(conv(x))`` (Fixup: ``conv(x) + b``);
- ``layer{2k}``: block k's first conv, ``norm1(conv1(x))`` (Fixup: ``conv1(x + b1a) + b1b``);
- ``layer{2k+1}``: block k's output before its final ReLU, ``branch + shortcut``;

(blocks k = 1..3n counted across stages). Each is the output of an ``nn.Identity`` tap module.

Parameter counts (3 input channels, 10 classes; ``'dbn'`` has the same count as ``'bn'``):

    =====  ==========  =========  ==========================
    depth  BN          Fixup      literature
    =====  ==========  =========  ==========================
    20     269,722     268,393    0.27M [1]_
    32     464,154     461,959    0.46M
    44     658,586     655,525    0.66M
    56     853,018     849,091    0.85M
    110    1,727,962   1,720,138  1.7M
    =====  ==========  =========  ==========================

(BN adds 2 parameters per channel of each of the depth - 1 normalized convs; Fixup adds 5 scalars per
block and 2 more. With 100 classes add 5,850.)

References
----------
.. [1] He, K., Zhang, X., Ren, S., Sun, J. "Deep residual learning for image recognition", CVPR 2016.
.. [2] Zhang, H., Dauphin, Y. N., Ma, T. "Fixup initialization: residual learning without
   normalization", ICLR 2019, arXiv:1901.09321.
.. [3] Joo, T., Kang, D., Kim, B. "Regularizing activations in neural networks via distribution
   matching with the Wasserstein metric", ICLR 2020, arXiv:2002.05366 (Table 1).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from per_core.baselines import make_norm

__all__ = ["CifarResNet", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]

Norm = Literal["none", "bn", "dbn"]

WIDTHS = (16, 32, 64)


class ScalarAffine(nn.Module):
    """Fixup's scalar bias ``x + b`` (b init 0), optionally with a scalar multiplier ``x * s + b`` (s init 1)."""

    def __init__(self, scale: bool = False) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1)) if scale else None
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        return (x * self.scale if self.scale is not None else x) + self.bias


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def _after_conv(norm: Norm, channels: int, scale: bool = False) -> nn.Module:
    """What follows a conv: the normalization, or Fixup's scalar bias (and multiplier) for ``'none'``."""
    return ScalarAffine(scale) if norm == "none" else make_norm(norm, channels)


class BasicBlock(nn.Module):
    """conv3x3 -> norm -> ReLU -> conv3x3 -> norm, plus the option-A shortcut, then ReLU.

    With Fixup (``norm='none'``) the norms are scalar biases (the second with the branch multiplier) and
    scalar biases come before each conv.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, norm: Norm) -> None:
        super().__init__()
        fixup = norm == "none"
        self.stride = stride
        self.extra_channels = c_out - c_in
        self.in_bias = ScalarAffine() if fixup else nn.Identity()  # Fixup b1a
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.norm1 = _after_conv(norm, c_out)  # Fixup b1b
        self.pre1 = nn.Identity()  # tap: the first ReLU's input
        self.mid_bias = ScalarAffine() if fixup else nn.Identity()  # Fixup b2a
        self.conv2 = conv3x3(c_out, c_out)
        self.norm2 = _after_conv(norm, c_out, scale=True)  # Fixup: multiplier s and bias b2b
        self.pre2 = nn.Identity()  # tap: the block output's ReLU input

    def branch(self, x: Tensor) -> Tensor:
        """The residual branch F(x)."""
        out = F.relu(self.pre1(self.norm1(self.conv1(self.in_bias(x)))))
        return self.norm2(self.conv2(self.mid_bias(out)))

    def shortcut(self, x: Tensor) -> Tensor:
        """Option A: identity, or stride-2 subsampling with zero channels appended."""
        if self.stride == 1 and self.extra_channels == 0:
            return x
        x = self.in_bias(x)[:, :, :: self.stride, :: self.stride]  # (N, C, H, W) -> (N, C, H/2, W/2)
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))  # (N, C, ...) -> (N, C + extra, ...)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.pre2(self.branch(x) + self.shortcut(x)))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images (see the module docstring)."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3, norm: Norm = "none") -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth}")
        if norm not in ("none", "bn", "dbn"):
            raise ValueError(f"norm must be 'none' (Fixup), 'bn' or 'dbn', got {norm!r}")
        n = (depth - 2) // 6
        self.depth = depth
        self.norm = norm
        self.stem_conv = conv3x3(in_channels, WIDTHS[0])
        self.stem_norm = _after_conv(norm, WIDTHS[0])
        self.stem_pre = nn.Identity()  # tap
        blocks, c_in = [], WIDTHS[0]
        for stage, width in enumerate(WIDTHS):
            for b in range(n):
                blocks.append(BasicBlock(c_in, width, 2 if stage > 0 and b == 0 else 1, norm))
                c_in = width
        self.blocks = nn.ModuleList(blocks)
        self.head_bias = ScalarAffine() if norm == "none" else nn.Identity()
        self.fc = nn.Linear(WIDTHS[-1], num_classes)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if self.norm == "none":  # Fixup
            for block in self.blocks:
                block.conv1.weight.mul_(len(self.blocks) ** -0.5)  # L^(-1/(2m-2)) with m = 2
                nn.init.zeros_(block.conv2.weight)
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem_pre(self.stem_norm(self.stem_conv(x))))  # (N, 16, 32, 32)
        for block in self.blocks:
            x = block(x)  # ... -> (N, 64, 8, 8)
        x = x.mean(dim=(2, 3))  # global average pool: (N, 64, H, W) -> (N, 64)
        return self.fc(self.head_bias(x))

    def pre_activations(self) -> dict[str, nn.Module]:
        """label -> tap module whose output enters a ReLU, in depth order (see the module docstring)."""
        taps = {"layer1": self.stem_pre}
        for k, block in enumerate(self.blocks, start=1):
            taps[f"layer{2 * k}"] = block.pre1
            taps[f"layer{2 * k + 1}"] = block.pre2
        return taps


def resnet20(num_classes: int = 10, in_channels: int = 3, norm: Norm = "none") -> CifarResNet:
    """ResNet-20 (n = 3): 269,722 parameters with BN, 268,393 with Fixup."""
    return CifarResNet(20, num_classes, in_channels, norm)


def resnet32(num_classes: int = 10, in_channels: int = 3, norm: Norm = "none") -> CifarResNet:
    """ResNet-32 (n = 5): 464,154 parameters with BN, 461,959 with Fixup."""
    return CifarResNet(32, num_classes, in_channels, norm)


def resnet44(num_classes: int = 10, in_channels: int = 3, norm: Norm = "none") -> CifarResNet:
    """ResNet-44 (n = 7): 658,586 parameters with BN, 655,525 with Fixup."""
    return CifarResNet(44, num_classes, in_channels, norm)


def resnet56(num_classes: int = 10, in_channels: int = 3, norm: Norm = "none") -> CifarResNet:
    """ResNet-56 (n = 9): 853,018 parameters with BN, 849,091 with Fixup."""
    return CifarResNet(56, num_classes, in_channels, norm)


def resnet110(num_classes: int = 10, in_channels: int = 3, norm: Norm = "none") -> CifarResNet:
    """ResNet-110 (n = 18): 1,727,962 parameters with BN, 1,720,138 with Fixup."""
    return CifarResNet(110, num_classes, in_channels, norm)
