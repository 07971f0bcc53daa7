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

from per_core.checks import check_nonnegative, check_seed

__all__ = [
    "LAMBDA_GRIDS",
    "METHODS",
    "PAPER_RESULTS",
    "PENALTY_GRIDS",
    "PENALTY_LAMS",
    "PRESETS",
    "SMOKE_STEPS",
    "TRAINER_FIELDS",
    "TrainConfig",
    "get_preset",
    "lambda_grid",
]

#: Steps per epoch of a ``smoke`` run.
SMOKE_STEPS = 3

#: Training methods: no regularization, a normalization layer (bn, dbn, rbn), a gradient-path
#: regularizer (per) or a loss penalty on the pre-activations (vcl, l1, l2).
METHODS = ("vanilla", "bn", "dbn", "rbn", "per", "vcl", "l1", "l2")


#: Fields that every config.json written by ``per_core.train`` holds, from its first release on (fields added
#: later read as their defaults). A config.json without them was written by hand or by other code (the README's
#: quick start writes only method and lam): it labels a run for the analysis, but cannot be resumed or tabled.
TRAINER_FIELDS = (
    "preset",
    "method",
    "data",
    "model",
    "lam",
    "n_slices",
    "epochs",
    "batch_size",
    "lr",
    "milestones",
    "seed",
    "record",
)


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
    lam: float = 1e-4  # strength of the method: PER's lambda (the presets' value) or a loss penalty's (PENALTY_LAMS)
    n_slices: int = 256  # PER slices per step
    per_locations: int | None = 4  # conv layers: random spatial locations per image for PER (None: all; bench/)
    # --- optimization
    epochs: int = 30  # number of epochs
    batch_size: int = 64  # training batch size (global, over all ranks)
    eval_batch_size: int = 500  # batch size for validation
    lr: float = 0.05  # initial learning rate
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # Nesterov momentum
    weight_decay: float = 5e-4  # L2 weight decay on weights (ndim > 1), not on biases/norm params
    schedule: str = "multistep"  # multistep: lr *= gamma at milestones; plateau: lr *= gamma when val loss stalls
    milestones: list[int] = field(default_factory=lambda: [20, 27])  # epochs at which lr *= gamma (multistep)
    gamma: float = 0.1  # learning-rate decay factor
    gammas: list[float] | None = None  # multistep: one factor per milestone instead of gamma at each
    warmup_epochs: int = 0  # multistep: the first k epochs train at lr / 10 (He et al.'s start for ResNet-110)
    grad_clip: float | None = None  # clip the global gradient norm to this value (None: no clipping)
    clip_per_tensor: bool = False  # grad_clip bounds each parameter tensor's norm instead (the VCL code's rule)
    optimizer_groups: str = "default"  # default: decay on weights (ndim > 1); fixup: Fixup's (train.param_groups)
    bptt: int = 35  # language models: tokens per truncated-backpropagation segment
    # --- bookkeeping
    seed: int = 0  # the run's seed: every random stream derives its own from it (per_core.seeds)
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: auto/cuda means cuda:LOCAL_RANK)
    sync_bn: bool = True  # under data parallelism, synchronize BatchNorm statistics across ranks
    log_every: int = 10  # steps between progress updates and PER penalty measurements
    record: str | None = "all"  # layers to record: "all", comma-separated labels, or None
    record_every: int = 1  # record activations every k epochs (and always at the last epoch)
    record_eval_samples: int = 256  # fixed validation samples recorded in eval mode at each recorded epoch
    record_train_every: int = 50  # record one in k training batches (a recorded batch costs 0.15-0.7 of a step)
    record_reservoir_every: int = 20  # keep joint rows (for SW1) at epochs divisible by k, and at the last epoch
    smoke: bool = False  # synthetic data of the real shape and SMOKE_STEPS steps per epoch (tests, quick checks)

    def validate(self) -> None:
        """Raise ValueError naming the first field that is out of range."""
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        check_nonnegative(self.lam, "lam")  # finite too: inf would be written to config.json as Infinity
        check_seed(self.seed)  # every stream's seed derives from it (per_core.seeds)
        checks = [
            ("n_slices", self.n_slices >= 1, ">= 1"),
            ("epochs", self.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("eval_batch_size", self.eval_batch_size >= 1, ">= 1"),
            ("lr", self.lr > 0, "> 0"),
            ("log_every", self.log_every >= 1, ">= 1"),
            ("record_every", self.record_every >= 1, ">= 1"),
            ("record_train_every", self.record_train_every >= 1, ">= 1"),
            ("record_reservoir_every", self.record_reservoir_every >= 1, ">= 1"),
            ("per_locations", self.per_locations is None or self.per_locations >= 1, "None or >= 1"),
            ("grad_clip", self.grad_clip is None or self.grad_clip > 0, "None or > 0"),
            ("schedule", self.schedule in ("multistep", "plateau"), "'multistep' or 'plateau'"),
            (
                "gammas",
                self.gammas is None
                or (
                    len(self.gammas) == len(self.milestones)
                    and all(isinstance(g, int | float) and not isinstance(g, bool) and g > 0 for g in self.gammas)
                ),
                "None or one factor > 0 per milestone",
            ),
            ("optimizer_groups", self.optimizer_groups in ("default", "fixup"), "'default' or 'fixup'"),
            ("gammas", self.gammas is None or self.schedule == "multistep", "None with schedule 'plateau'"),
            ("warmup_epochs", isinstance(self.warmup_epochs, int) and self.warmup_epochs >= 0, "an int >= 0"),
            ("warmup_epochs", not self.warmup_epochs or self.schedule == "multistep", "0 with schedule 'plateau'"),
            ("clip_per_tensor", not self.clip_per_tensor or self.grad_clip is not None, "False without grad_clip"),
            ("bptt", self.bptt >= 1, ">= 1"),
            ("record", self.record is None or any(x.strip() for x in self.record.split(",")), "None, 'all' or labels"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The config saved in a run directory's config.json (extra keys such as versions are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def as_smoke(self) -> TrainConfig:
        """This config as a quick check: synthetic data of the same shape, 2 epochs of SMOKE_STEPS small steps."""
        return self.replace(
            smoke=True,
            epochs=2,
            batch_size=min(self.batch_size, 8),
            eval_batch_size=min(self.eval_batch_size, 8),
            record_every=1,
            record_eval_samples=min(self.record_eval_samples, 8),
        )

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def for_method(self, method: str) -> TrainConfig:
        """This config trained with ``method`` at that method's default strength: ``lam`` as it is for
        PER and the methods without one, :data:`PENALTY_LAMS` for a loss penalty (vcl, l1, l2)."""
        return self.replace(method=method, lam=PENALTY_LAMS.get(method, self.lam))

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
        record_reservoir_every=1,  # SW1 at every epoch: small maps, a few MB per run
    )


def _lm_recipe(**changes: Any) -> TrainConfig:
    """The language-model recipe of Table 3 (Merity et al. 2017 setup as in PyTorch's word LM example)."""
    base = TrainConfig(
        model="lstm_lm",
        batch_size=20,
        eval_batch_size=10,
        bptt=35,
        lr=20.0,
        momentum=0.0,
        weight_decay=0.0,
        schedule="plateau",
        gamma=0.25,
        grad_clip=0.25,
        lam=1e-4,
        record_eval_samples=10,
    )
    return base.replace(**changes)


def corpus_lstm() -> TrainConfig:
    """The embedded CPython-docs corpus with a small 2-layer LSTM LM (200 units): the Table 3 recipe, scaled down."""
    return _lm_recipe(
        preset="corpus-lstm",
        data="corpus",
        model_args={"hidden": 200, "layers": 2, "tied": True, "dropout": 0.3},
        epochs=12,
        record_reservoir_every=1,
    )


def _table1(depth: int) -> Callable[[], TrainConfig]:
    def preset() -> TrainConfig:
        return TrainConfig(
            preset=f"table1-resnet{depth}",
            data="cifar10",
            augment=True,
            model=f"resnet{depth}",
            epochs=200,
            batch_size=128,
            lr=0.1,
            momentum=0.9,
            weight_decay=1e-4,
            milestones=[100, 150],
            warmup_epochs=1 if depth == 110 else 0,
            optimizer_groups="fixup",
            lam=1e-4,
            record_every=10,
            record_reservoir_every=20,
        )

    preset.__doc__ = (
        f"Table 1: ResNet-{depth} on CIFAR-10 (Fixup init without BN), the Fixup/ResNet recipe.\n\n"
        "As Fixup's CIFAR script (hongyi-zhang/Fixup, cifar/cifar_train.py): biases and Fixup scales at lr/10,\n"
        "weight decay on every parameter; without its mixup, which the paper does not mention. The random\n"
        "crop pads the normalized image with 0 (the channel mean, as the VCL code does), where Fixup's script\n"
        "pads the raw image with black."
        + (
            "\n\nResNet-110 trains its first epoch at lr 0.01 (warmup_epochs=1), as He et al. (2016, Section 4.2)\n"
            "start their ResNet-110, for which 0.1 is 'slightly too large to start converging': the BN row's\n"
            "loss grows from its first steps at 0.1. Fixup starts at any lr (its net is the identity at init)\n"
            "but takes the same start, so that the rows of the table share one schedule."
            if depth == 110
            else ""
        )
    )
    return preset


def _table2(activation: str, dataset: str) -> Callable[[], TrainConfig]:
    def preset() -> TrainConfig:
        return TrainConfig(
            preset=f"table2-{activation.replace('_', '')}-{dataset}",
            data=dataset,
            augment=True,
            model="cnn11",
            model_args={"activation": activation},
            epochs=165,
            batch_size=250,
            lr=0.05,
            momentum=0.9,
            nesterov=True,
            weight_decay=1e-4,
            milestones=[60, 100, 140],
            gammas=[0.2, 0.1, 0.1],  # lr 0.05, 0.01, 0.001, 0.0001: the VCL code sets these values
            grad_clip=1.0,
            clip_per_tensor=True,  # the VCL code clips each parameter tensor to norm 1
            lam=1e-4 if activation == "elu" else 1e-6,
            record_every=5,
            record_reservoir_every=20,
        )

    preset.__doc__ = (
        f"Table 2: the 11-layer CNN with {activation} on {dataset} (VCL paper's recipe).\n\n"
        "As the VCL code (avirambh/vcl_pytorch, vcl_tests_main.py): lr 0.05, set to 0.01, 0.001 and 0.0001\n"
        "at epochs 60, 100 and 140, each parameter tensor's gradient clipped to norm 1, weight decay 1e-4.\n"
        "Choices the paper leaves open: 165 epochs (25 past the last lr drop at 140); the lambda grid\n"
        "{3e-6..1e-7} that the paper gives for ReLU/LeakyReLU on CIFAR-100 is also used on CIFAR-10.\n"
        "Differences from that code, for the BN row: BN scales are not weight-decayed here (weights with\n"
        "ndim > 1 only; the VCL code decays every parameter but biases), and BN's eps is 1e-5 (there 1e-3).\n"
        "Inputs are normalized per channel (the VCL code subtracts a per-pixel mean image, divides by a\n"
        "per-pixel std)."
    )
    return preset


def _table3(variant: str, dataset: str) -> Callable[[], TrainConfig]:
    tied, dropout = variant.startswith("re-"), 0.5 if "vd-" in variant else 0.0

    def preset() -> TrainConfig:
        return _lm_recipe(
            preset=f"table3-{variant}-{dataset}",
            data=dataset,
            model_args={"hidden": 650, "layers": 2, "tied": tied, "dropout": dropout},
            epochs=60,
            record_every=5,
            record_reservoir_every=20,
        )

    preset.__doc__ = (
        f"Table 3: {variant.upper()} (650 units, 2 layers) on {dataset}, clipping 0.25, 60 epochs.\n\n"
        "Choices the paper leaves open: PyTorch's word-LM example recipe (plain SGD, lr 20 divided by 4\n"
        "when the validation loss does not improve, batch 20, bptt 35), dropout 0.5 for the VD variants.\n"
        "VD is variational (locked) dropout as Gal & Ghahramani define it, one mask per sequence on the\n"
        "embedding, between the layers and on the output, none on the recurrent connections; the example\n"
        "draws a new mask each step, and the paper's VD numbers are within 0.3 ppl of the example's.\n"
        "As the example, the final row of metrics.jsonl also holds the validation and test perplexity of\n"
        "the best validation epoch's model (best_val_ppl, best_test_ppl; the sweep table reports those)."
    )
    return preset


PRESETS: dict[str, Callable[[], TrainConfig]] = {"demo": demo, "corpus-lstm": corpus_lstm}
PRESETS.update({f"table1-resnet{d}": _table1(d) for d in (56, 110)})
PRESETS.update(
    {
        f"table2-{a.replace('_', '')}-{ds}": _table2(a, ds)
        for a in ("relu", "leaky_relu", "elu")
        for ds in ("cifar10", "cifar100")
    }
)
PRESETS.update(
    {
        f"table3-{v}-{ds}": _table3(v, ds)
        for v in ("lstm", "re-lstm", "vd-lstm", "re-vd-lstm")
        for ds in ("ptb", "wikitext2")
    }
)

#: Default strengths of the loss penalties. PER's lambda (a preset's ``lam``, 1e-6..1e-4) leaves them
#: without effect: at lambda = 3e-6 on the 11-layer ReLU CNN the VCL gradient is 1e-6 of the
#: cross-entropy's, and L2 at 3e-4 on the Table 3 LSTM 6e-6 of it. VCL: the reference code's
#: ``gamma`` (avirambh/vcl_pytorch, ``vcl_tests_main.py``); L2: the activation regularization alpha of
#: Merity et al. (2017) for 2-layer LSTM LMs (gradient about 4 % of the cross-entropy's at init);
#: L1: the same gradient scale as that L2 on the LSTM's hidden states (the paper gives no value).
#: The command lines (train, sweep) use them when ``--lam``/``--lams`` is not given.
PENALTY_LAMS: dict[str, float] = {"vcl": 1e-2, "l1": 1e-1, "l2": 2.0}

#: Grids of the loss penalties for ``--lams grid``, around :data:`PENALTY_LAMS`.
PENALTY_GRIDS: dict[str, list[float]] = {"vcl": [3e-3, 1e-2, 3e-2], "l1": [3e-2, 1e-1, 3e-1], "l2": [0.5, 1.0, 2.0]}

#: The lambda grids the paper searched for PER, per preset (``python -m per_core.sweep`` uses them).
LAMBDA_GRIDS: dict[str, list[float]] = {
    **{f"table1-resnet{d}": [3e-4, 1e-4, 3e-5, 1e-5] for d in (56, 110)},
    **{f"table2-elu-{ds}": [3e-4, 1e-4, 3e-5, 1e-5] for ds in ("cifar10", "cifar100")},
    **{f"table2-{a}-{ds}": [3e-6, 1e-6, 3e-7, 1e-7] for a in ("relu", "leakyrelu") for ds in ("cifar10", "cifar100")},
    **{k: [3e-4, 1e-4, 3e-5] for k in PRESETS if k.startswith("table3-")},
    "demo": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
    "corpus-lstm": [1e-5, 1e-4, 1e-3, 1e-2],
}


def _paper_results() -> dict[str, dict[str, dict[str, float]]]:
    out = {
        "table1-resnet56": {"vanilla": {"val_error": 7.21}, "bn": {"val_error": 6.95}, "per": {"val_error": 6.72}},
        "table1-resnet110": {"vanilla": {"val_error": 6.90}, "bn": {"val_error": 6.62}, "per": {"val_error": 6.19}},
    }
    table2 = {  # (CIFAR-10, CIFAR-100) for vanilla, BN, VCL, PER
        "relu": ((8.43, 29.45), (7.53, 29.13), (7.80, 30.30), (7.21, 29.29)),
        "leakyrelu": ((6.73, 26.50), (6.38, 26.83), (6.45, 26.30), (6.29, 25.50)),
        "elu": ((6.74, 27.53), (6.69, 26.60), (6.26, 25.86), (6.42, 25.73)),
    }
    for act, rows in table2.items():
        for col, ds in enumerate(("cifar10", "cifar100")):
            methods = ("vanilla", "bn", "vcl", "per")
            out[f"table2-{act}-{ds}"] = {m: {"val_error": r[col]} for m, r in zip(methods, rows, strict=True)}
    table3 = {  # (PTB valid, PTB test, WT2 valid, WT2 test) for vanilla, then PER
        "lstm": ((123.2, 122.0, 138.9, 132.7), (118.5, 114.5, 134.2, 129.6)),
        "re-lstm": ((114.1, 112.2, 129.2, 123.2), (110.0, 108.5, 123.2, 117.4)),
        "vd-lstm": ((84.9, 81.1, 99.6, 94.5), (84.1, 80.7, 98.1, 92.6)),
        "re-vd-lstm": ((78.9, 75.7, 91.4, 86.4), (78.1, 74.9, 90.6, 85.9)),
    }
    for variant, rows in table3.items():
        for col, ds in enumerate(("ptb", "wikitext2")):
            out[f"table3-{variant}-{ds}"] = {
                m: {"val_ppl": r[2 * col], "test_ppl": r[2 * col + 1]}
                for m, r in zip(("vanilla", "per"), rows, strict=True)
            }
    return out


#: The paper's numbers per preset and method (PAPER.md): test error (%) for Tables 1-2 (the
#: CIFAR test batch, our ``val_error``), validation and test perplexity for Table 3.
PAPER_RESULTS: dict[str, dict[str, dict[str, float]]] = _paper_results()


def lambda_grid(preset: str, method: str) -> list[float]:
    """The lambdas ``--lams grid`` tries for ``method`` on ``preset``: the paper's for PER, or :data:`PENALTY_GRIDS`."""
    return list(PENALTY_GRIDS[method]) if method in PENALTY_GRIDS else list(LAMBDA_GRIDS[preset])


def get_preset(name: str) -> TrainConfig:
    """A fresh config of preset ``name``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()
