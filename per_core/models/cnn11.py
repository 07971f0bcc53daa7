r"""The 11-layer CNN of Clevert et al. [1]_ (ELU paper), as used by VCL [2]_ and by PER's Table 2 [3]_.

Ten conv layers in six stacks, then a 1x1 conv classifier; in the notation of [1]_
(layers x channels x kernel): ([1x192x5], [1x192x1, 1x240x3], [1x240x1, 1x260x2], [1x260x1, 1x280x2],
[1x280x1, 1x300x2], [1x300x1], [1x{classes}x1]).

    ======  =======  ======  ============================
    layer   width    kernel  after the activation
    ======  =======  ======  ============================
    1       192      5       2x2 max-pool
    2       192      1
    3       240      3       2x2 max-pool, dropout 0.1
    4       240      1
    5       260      2       2x2 max-pool, dropout 0.2
    6       260      1
    7       280      2       2x2 max-pool, dropout 0.3
    8       280      1
    9       300      2       2x2 max-pool, dropout 0.4
    10      300      1       dropout 0.5
    11      classes  1       (logits; averaged over the 1x1 map)
    ======  =======  ======  ============================

Each hidden layer is conv -> norm -> activation; convs use "same" padding (for the even 2x2 kernels
the extra row/column is padded at the bottom/right, TensorFlow's convention, as in the VCL code), so a
32x32 image ends as a 1x1 map after five pools. Pools use ``ceil_mode=True`` (identical for 32x32,
and smaller inputs still run). Conv biases are zero-initialized (as in the VCL code), weights keep
PyTorch's default init; with a normalization the conv has no bias.

What could be confirmed, and from where:

- widths, kernel sizes, pool positions and the dropout schedule 0.1..0.5 on the last layer of stacks
  2..6: the VCL authors' reference code (github.com/avirambh/vcl_pytorch, ``models/ELU.py``), which
  follows [1]_; the per-stack dropout list (0, 0.1, 0.2, 0.3, 0.4, 0.5, 0) also appears in other
  re-implementations of [1]_. The widths equal those listed in [3]_.
- the widths are 192..300, not the doubled widths of that reference code (``k = 2``): PER's parameter
  overheads [3]_ fit only the single widths: BN adds 2 x 2,544 - 2,544 = 2,544 ("~2.5K", conv biases
  dropped) and per-activation VCL betas on the ten hidden layers of a 32x32 input number 350,460
  ("~350K").
- not confirmed: the text of [1]_ itself (not available here), its initialization and the LeakyReLU
  slope (PyTorch's default 0.01 is used).
- not followed: the VCL code's BN epsilon of 1e-3; ``norm='bn'`` uses PyTorch's default 1e-5.

``pre_activations()``: ``layer1``..``layer10``, the output of each layer's norm module (an
``nn.Identity`` for ``norm='none'``, i.e. the conv output itself).

Parameter counts (3 input channels): 1,641,938 (10 classes) / 1,669,028 (100 classes) without
normalization; 2,544 more with BN or DBN.

References
----------
.. [1] Clevert, D.-A., Unterthiner, T., Hochreiter, S. "Fast and accurate deep network learning by
   exponential linear units (ELUs)", ICLR 2016, arXiv:1511.07289 (Section 4.3, CIFAR-100).
.. [2] Littwin, E., Wolf, L. "Regularizing by the variance of the activations' sample-variances",
   NeurIPS 2018.
.. [3] Joo, T., Kang, D., Kim, B. "Regularizing activations in neural networks via distribution
   matching with the Wasserstein metric", ICLR 2020 (Table 2).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from per_core.models.layers import Activation, make_activation, make_norm

__all__ = ["CNN11", "LAYERS", "cnn11"]

Norm = Literal["none", "bn", "dbn"]

#: (width, kernel, max-pool after, dropout after) of the ten hidden conv layers.
LAYERS: tuple[tuple[int, int, bool, float], ...] = (
    (192, 5, True, 0.0),
    (192, 1, False, 0.0),
    (240, 3, True, 0.1),
    (240, 1, False, 0.0),
    (260, 2, True, 0.2),
    (260, 1, False, 0.0),
    (280, 2, True, 0.3),
    (280, 1, False, 0.0),
    (300, 2, True, 0.4),
    (300, 1, False, 0.5),
)


class ConvLayer(nn.Module):
    """ "same" pad -> conv -> norm -> activation [-> max-pool] [-> dropout]; ``norm``'s output is the pre-activation."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, pool: bool, dropout: float, norm: Norm, activation: Activation
    ) -> None:
        super().__init__()
        before, after = (kernel - 1) // 2, kernel // 2  # TF "same": the extra pixel goes right/bottom
        self.pad = nn.ZeroPad2d((before, after, before, after))
        self.conv = nn.Conv2d(c_in, c_out, kernel, bias=norm == "none")
        self.norm = make_norm(norm, c_out)
        self.act = make_activation(activation)
        self.pool = nn.MaxPool2d(2, ceil_mode=True) if pool else nn.Identity()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.pool(self.act(self.norm(self.conv(self.pad(x))))))


class CNN11(nn.Module):
    """The 11-layer CNN of Clevert et al. (see the module docstring)."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, norm: Norm = "none", activation: Activation = "elu"
    ) -> None:
        super().__init__()
        layers, c_in = [], in_channels
        for width, kernel, pool, dropout in LAYERS:
            layers.append(ConvLayer(c_in, width, kernel, pool, dropout, norm, activation))
            c_in = width
        self.layers = nn.ModuleList(layers)
        self.classifier = nn.Conv2d(c_in, num_classes, 1)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)  # (N, 3, 32, 32) -> ... -> (N, 300, 1, 1)
        return self.classifier(x).mean(dim=(2, 3))  # (N, classes, H, W) -> (N, classes)

    def pre_activations(self) -> dict[str, nn.Module]:
        """label -> module whose output is layer k's pre-activation (k = 1..10)."""
        return {f"layer{i + 1}": layer.norm for i, layer in enumerate(self.layers)}


def cnn11(num_classes: int = 10, in_channels: int = 3, norm: Norm = "none", activation: Activation = "elu") -> CNN11:
    """The 11-layer CNN: 1,641,938 parameters (10 classes, no norm); +2,544 with BN/DBN."""
    return CNN11(num_classes, in_channels, norm, activation)
