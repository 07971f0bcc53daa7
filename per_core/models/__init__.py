"""The models: one file per family, a factory per model and an explicit registry.

Every model defines ``pre_activations() -> dict[label, nn.Module]``: the modules whose outputs are
the pre-activations of its hidden layers, in depth order. PER attaches to them and the activation
recorder records them, so every method is compared on the same tensors.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from per_core.models.cnn11 import CNN11, cnn11
from per_core.models.lstm_lm import LSTMLanguageModel, lstm_lm
from per_core.models.resnet_cifar import CifarResNet, resnet20, resnet32, resnet44, resnet56, resnet110
from per_core.models.small_cnn import SmallCNN, small_cnn

__all__ = ["CNN11", "MODELS", "CifarResNet", "LSTMLanguageModel", "SmallCNN", "build_model"]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": small_cnn,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "cnn11": cnn11,
    "lstm_lm": lstm_lm,
}


def build_model(name: str, **kwargs: object) -> nn.Module:
    """Build the registered model ``name`` with keyword arguments for its factory."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)
