"""A small deep CNN for the embedded digits data (the demo model).

Six 3x3 conv blocks (conv -> norm -> activation) on 8x8 images, max-pooling after blocks 2 and 4,
global average pooling and a linear classifier. It is deep enough that layers 3 and 6 exist, as
in the paper's Figure 2, and trains in seconds per epoch on a CPU.

Parameter counts (width 32, depth 6, 1 input channel, 10 classes): 46,890 without BN; 47,082
with BN (the conv biases go, 2 parameters per channel per block come).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from per_core.models.layers import Activation, make_activation, make_norm

Norm = Literal["none", "bn", "dbn"]


class ConvBlock(nn.Module):
    """conv -> norm -> activation; ``norm``'s output is the block's pre-activation."""

    def __init__(self, c_in: int, c_out: int, norm: Norm, activation: Activation) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=norm == "none")
        self.norm = make_norm(norm, c_out)
        self.act = make_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


class SmallCNN(nn.Module):
    """Deep small CNN: ``depth`` conv blocks of ``width`` channels, pools after blocks 2 and 4."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        width: int = 32,
        depth: int = 6,
        norm: Norm = "none",
        activation: Activation = "elu",
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.blocks = nn.ModuleList(
            ConvBlock(in_channels if i == 0 else width, width, norm, activation) for i in range(depth)
        )
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x)  # (N, width, H, W)
            if i in (1, 3) and min(x.shape[-2:]) >= 2:
                x = self.pool(x)
        return self.head(x.mean(dim=(2, 3)))  # global average pool: (N, width, H, W) -> (N, width)

    def pre_activations(self) -> dict[str, nn.Module]:
        """label -> module whose output is layer k's pre-activation (what PER and the recorder see)."""
        return {f"layer{i + 1}": block.norm for i, block in enumerate(self.blocks)}


def small_cnn(num_classes: int = 10, in_channels: int = 1, **kwargs: object) -> SmallCNN:
    """The demo model (see module docstring)."""
    return SmallCNN(num_classes=num_classes, in_channels=in_channels, **kwargs)  # type: ignore[arg-type]
