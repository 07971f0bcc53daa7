"""Models, inputs and one training step on the paper's shapes, shared by the benchmarks.

Shapes (paper, PAPER.md): ResNet-56 (Fixup, no BN) at batch 128 on 32x32x3; the 11-layer ELU CNN at
batch 250 on 32x32x3; the 2-layer 650-unit LSTM LM at batch 20, bptt 35, vocabulary 10,000. Inputs
are random (images ~ N(0, 1), uniform labels and tokens): the cost of a step does not depend on them.
``quick`` swaps in small stand-ins (ResNet-20, 8x8 images, a 32-unit LSTM with 100 words, batch 2,
bptt 5) so that a smoke test runs in seconds; quick numbers are not results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from per_core.models import build_model
from per_core.regularizer import PER

__all__ = ["RECOMMENDED_LOCATIONS", "SHAPES", "Shape", "make_inputs", "make_step", "step_variants"]


@dataclass(frozen=True)
class Shape:
    """A model of the paper at its training shape."""

    name: str
    model: str
    batch: int
    bn_norm: str  # the normalization baseline of that table: bn (Tables 1-2) or rbn (Table 3)
    kwargs: tuple[tuple[str, object], ...] = ()
    # quick (smoke) mode: a smaller model of the same family on smaller inputs
    quick_model: str = ""
    quick_batch: int = 2
    quick_kwargs: tuple[tuple[str, object], ...] = ()

    def model_and_kwargs(self, quick: bool) -> tuple[str, dict[str, object]]:
        """Registry name and factory arguments (the small stand-in in quick mode)."""
        if quick:
            return self.quick_model or self.model, dict(self.quick_kwargs or self.kwargs)
        return self.model, dict(self.kwargs)

    @property
    def vocab(self) -> int:
        return int(dict(self.kwargs).get("vocab_size", 0))


SHAPES: dict[str, Shape] = {
    "resnet56": Shape("resnet56", "resnet56", 128, "bn", quick_model="resnet20"),
    "cnn11": Shape("cnn11", "cnn11", 250, "bn", (("activation", "elu"),)),
    "lstm": Shape(
        "lstm",
        "lstm_lm",
        20,
        "rbn",
        (("vocab_size", 10_000), ("hidden", 650), ("layers", 2)),
        quick_kwargs=(("vocab_size", 100), ("hidden", 32), ("layers", 2)),
    ),
}
#: PER's locations per image for conv layers in training, chosen by bench/conv_design.py (RESULTS.md)
RECOMMENDED_LOCATIONS = 4
BPTT, QUICK_BPTT = 35, 5
IMAGE, QUICK_IMAGE = 32, 8


def make_inputs(shape: Shape, quick: bool, device: torch.device, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A fixed batch (inputs, targets) for ``shape``."""
    g = torch.Generator().manual_seed(seed)
    batch = shape.quick_batch if quick else shape.batch
    if shape.model == "lstm_lm":
        bptt = QUICK_BPTT if quick else BPTT
        vocab = int(shape.model_and_kwargs(quick)[1]["vocab_size"])
        tokens = torch.randint(0, vocab, (bptt + 1, batch), generator=g)
        return tokens[:-1].to(device), tokens[1:].to(device)
    size = QUICK_IMAGE if quick else IMAGE
    x = torch.randn(batch, 3, size, size, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    return x.to(device), y.to(device)


def build(shape: Shape, norm: str, device: torch.device, seed: int = 0, quick: bool = False) -> nn.Module:
    """The model of ``shape`` with normalization ``norm`` ('none', 'bn' or 'rbn'), seeded."""
    torch.manual_seed(seed)
    name, kwargs = shape.model_and_kwargs(quick)
    return build_model(name, norm=norm, **kwargs).to(device)


def make_step(
    shape: Shape,
    method: str,
    *,
    quick: bool = False,
    device: torch.device | str = "cpu",
    locations: int | str | None = "default",
    n_slices: int = 256,
    lam: float = 1e-4,
    sync: bool = True,
) -> tuple[Callable[[], None], nn.Module, PER | None]:
    """One SGD training step (zero_grad, forward, cross-entropy, backward, step) as a closure.

    ``method``: 'vanilla', 'bn' (the table's normalization baseline: BN, or recurrent BN for the LSTM)
    or 'per' (PER on ``model.pre_activations()`` with ``n_slices`` and ``locations``; 'default' keeps
    PER's own default). The LSTM step clips gradients to 0.25 (Table 3 recipe) in every method.
    On CUDA the step ends with a device synchronization unless ``sync=False`` (for graph capture).
    """
    device = torch.device(device)
    norm = shape.bn_norm if method == "bn" else "none"
    model = build(shape, norm, device, quick=quick)
    per = None
    if method == "per":
        kw = {} if locations == "default" else {"locations": locations}
        per = PER(model.pre_activations(), lam, n_slices, **kw)
    elif method not in ("vanilla", "bn"):
        raise ValueError(f"method must be vanilla, bn or per, got {method!r}")
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = make_inputs(shape, quick, device)
    lm = shape.model == "lstm_lm"

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if lm:
            logits, _ = model(x)
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        else:
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if lm:
            nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
        if sync and device.type == "cuda":
            torch.cuda.synchronize(device)

    return step, model, per


def step_variants(model: str) -> dict[str, dict[str, object]]:
    """The variants of goal 1's step for ``model``: name -> :func:`make_step` keyword arguments.

    vanilla, bn (the table's baseline) and per (s = 256); for the conv nets PER on the recommended
    ``RECOMMENDED_LOCATIONS`` per image and, as ``per_all``, Algorithm 1 on every location. The LSTM's
    rows are time steps: nothing to subsample.
    """
    out: dict[str, dict[str, object]] = {"vanilla": {"method": "vanilla"}, "bn": {"method": "bn"}}
    if SHAPES[model].model == "lstm_lm":
        out["per"] = {"method": "per"}
    else:
        out["per"] = {"method": "per", "locations": RECOMMENDED_LOCATIONS}
        out["per_all"] = {"method": "per", "locations": None}
    return out
