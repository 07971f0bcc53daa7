"""Training configuration: one dataclass, and named presets built from it.

A preset is a function returning a fresh :class:`TrainConfig` (no defaults frozen at import time);
the CLI (``python -m per_core.train``) starts from a preset and overrides fields from its flags.
The resolved config is saved in every run directory's config.json and in every checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["METHODS", "PRESETS", "SMOKE_STEPS", "TrainConfig", "get_preset"]

#: Steps per epoch of a ``smoke`` run.
SMOKE_STEPS = 3

#: Training methods the trainer knows; the baselines issue extends the list.
METHODS = ("vanilla", "bn", "per")


@dataclass
class TrainConfig:
    """Everything that decides a run. Every field is saved with the run."""

    preset: str = "demo"  # name of the preset this config started from
    method: str = "vanilla"  # one of METHODS
    # --- data
    data: str = "digits"  # digits | cifar10 | cifar100 | corpus | ptb | wikitext2 | synthetic_images | synthetic_text
    data_dir: str | None = None  # folder with the real data files (CIFAR, PTB, WikiText-2)
    augment: bool = False  # random crop (pad 4) + horizontal flip for image data
    # --- model
    model: str = "small_cnn"  # key of per_core.models.MODELS
    model_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the model factory
    # --- regularization
    lam: float = 1e-4  # PER strength lambda (also the strength of loss-based baselines)
    n_slices: int = 256  # PER slices per step
    per_locations: int | None = None  # conv layers: spatial locations per image used by PER (None: all)
    # --- optimization
    epochs: int = 30  # number of epochs
    batch_size: int = 64  # training batch size (global, over all ranks)
    eval_batch_size: int = 500  # batch size for validation
    lr: float = 0.05  # initial learning rate
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # Nesterov momentum
    weight_decay: float = 5e-4  # L2 weight decay on weights (ndim > 1), not on biases/norm params
    milestones: list[int] = field(default_factory=lambda: [20, 27])  # epochs at which lr *= gamma
    gamma: float = 0.1  # learning-rate decay factor at each milestone
    grad_clip: float | None = None  # clip the global gradient norm to this value (None: no clipping)
    # --- bookkeeping
    seed: int = 0  # seeds model init, data order, augmentation, PER slices and the recorder
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    log_every: int = 10  # steps between progress updates and PER penalty measurements
    record: str | None = "all"  # layers to record: "all", comma-separated labels, or None
    record_every: int = 1  # record activations every k epochs (and always at the last epoch)
    record_eval_samples: int = 256  # fixed validation samples recorded in eval mode at each recorded epoch
    smoke: bool = False  # synthetic data of the real shape and SMOKE_STEPS steps per epoch (tests, quick checks)

    def validate(self) -> None:
        """Raise ValueError naming the first field that is out of range."""
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        checks = [
            ("lam", self.lam >= 0, ">= 0"),
            ("n_slices", self.n_slices >= 1, ">= 1"),
            ("epochs", self.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("eval_batch_size", self.eval_batch_size >= 1, ">= 1"),
            ("lr", self.lr > 0, "> 0"),
            ("log_every", self.log_every >= 1, ">= 1"),
            ("record_every", self.record_every >= 1, ">= 1"),
            ("per_locations", self.per_locations is None or self.per_locations >= 1, "None or >= 1"),
            ("grad_clip", self.grad_clip is None or self.grad_clip > 0, "None or > 0"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The config saved in a run directory's config.json (extra keys such as versions are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def demo() -> TrainConfig:
    """Digits, a 6-block ELU CNN, 30 epochs: trains in well under a minute per method on 2 cores."""
    return TrainConfig(
        preset="demo",
        data="digits",
        model="small_cnn",
        model_args={"width": 32, "depth": 6, "activation": "elu"},
        epochs=30,
        batch_size=64,
        lr=0.05,
        milestones=[20, 27],
        lam=1e-2,
    )


PRESETS: dict[str, Callable[[], TrainConfig]] = {"demo": demo}


def get_preset(name: str) -> TrainConfig:
    """A fresh config of preset ``name``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()
