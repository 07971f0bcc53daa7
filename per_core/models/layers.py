"""Building blocks shared by the model files: activations by name, and normalization by name."""

from __future__ import annotations

from typing import Literal

from torch import nn

from per_core.baselines import make_norm

__all__ = ["ACTIVATIONS", "Activation", "make_activation", "make_norm"]

Activation = Literal["relu", "leaky_relu", "elu"]

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU}


def make_activation(activation: Activation) -> nn.Module:
    """A fresh activation module by name (never in-place: PER reads the pre-activation in backward)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    return ACTIVATIONS[activation]()
