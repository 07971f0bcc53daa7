"""Tasks: what one training step and one evaluation mean for a kind of data.

A task owns its data on the training device and knows how to batch it, how to compute the loss
of a batch and how to evaluate. The trainer (:mod:`per_core.train`) is the same for every task.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from per_core.configs import TrainConfig
from per_core.data import (
    ImageData,
    TextData,
    batchify,
    image_batches,
    load_cifar,
    load_corpus,
    load_digits,
    load_word_corpus,
    synthetic_images,
    synthetic_text,
)
from per_core.distributed import DistEnv

__all__ = ["FILE_DATA", "ImageClassification", "LanguageModeling", "StepResult", "Task", "build_task", "reads_data_dir"]


@dataclass
class StepResult:
    """Loss of one batch (a graph to backpropagate) and device-side counters (no host sync)."""

    loss: Tensor  # scalar, mean over the batch
    errors: Tensor  # number of wrong predictions (0 for language models)
    count: int  # samples (or tokens) in the batch


class Task(Protocol):
    """What the trainer needs from a task."""

    #: Whether the trainer also reports the test metrics of the model of the best validation epoch (a task
    #: whose validation split is apart from its test split; choosing on a test split would fit the test set).
    best_of_validation: bool

    def model_kwargs(self) -> dict[str, Any]: ...

    def steps_per_epoch(self, world_size: int) -> int: ...

    def train_batches(
        self, order: torch.Generator, augment: torch.Generator, rank: int, world_size: int
    ) -> Iterator[Any]: ...

    def step(self, model: nn.Module, batch: Any) -> StepResult: ...

    def evaluate(self, model: nn.Module, final: bool = False, env: DistEnv | None = None) -> dict[str, float]: ...

    def summarize(self, loss_sum: float, errors: int, count: int) -> dict[str, float]: ...

    def record_batch(self) -> Any: ...

    def forward(self, model: nn.Module, batch: Any) -> Tensor: ...


class ImageClassification:
    """Image classification with cross-entropy; metrics: train/val loss and error (%)."""

    best_of_validation = False  # CIFAR's validation split is its test batch, as in the paper's tables

    def __init__(self, data: ImageData, cfg: TrainConfig, device: torch.device) -> None:
        self.data = data
        self.cfg = cfg
        self.device = device

    def model_kwargs(self) -> dict[str, Any]:
        return {"num_classes": self.data.num_classes, "in_channels": self.data.in_channels}

    def steps_per_epoch(self, world_size: int = 1) -> int:
        return -(-len(self.data.train_y) // self.cfg.batch_size)

    def train_batches(
        self, order: torch.Generator, augment: torch.Generator, rank: int = 0, world_size: int = 1
    ) -> Iterator[Any]:
        batches = image_batches(
            self.data.train_x,
            self.data.train_y,
            self.cfg.batch_size,
            generator=order,
            augment=augment if self.cfg.augment else None,
            rank=rank,
            world_size=world_size,
        )
        for x, y in batches:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def forward(self, model: nn.Module, batch: Any) -> Tensor:
        return model(batch[0] if isinstance(batch, tuple) else batch)

    def step(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> StepResult:
        x, y = batch
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        return StepResult(loss, (logits.argmax(1) != y).sum(), len(y))

    def summarize(self, loss_sum: float, errors: int, count: int) -> dict[str, float]:
        return {"train_loss": loss_sum / count, "train_error": 100.0 * errors / count}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, final: bool = False, env: DistEnv | None = None) -> dict[str, float]:
        """Validation loss and error (%); the CIFAR validation split is its test batch, as in the paper's tables.

        Under data parallelism (``env``) the ranks share the work: rank r evaluates batches r, r + R,
        r + 2R, ... of ``eval_batch_size`` images and one all-reduce sums the loss and the errors (every
        rank must call it). The batches are those of one process, so the metrics are one process's
        (the float64 sum of the batch losses is the same in any order, to rounding).
        """
        env = env or DistEnv(device=self.device)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        wrong = torch.zeros((), device=self.device, dtype=torch.float64)
        size = self.cfg.eval_batch_size
        for start in range(env.rank * size, len(self.data.val_y), env.world_size * size):
            x = self.data.val_x[start : start + size].to(self.device)
            y = self.data.val_y[start : start + size].to(self.device)
            logits = model(x)
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
            wrong += (logits.argmax(1) != y).sum()
        loss_sum, wrong = env.all_reduce_sum(torch.stack([loss_sum, wrong]))
        n = len(self.data.val_y)
        return {"val_loss": float(loss_sum) / n, "val_error": 100.0 * float(wrong) / n}

    def record_batch(self) -> Tensor:
        """The fixed validation images recorded in eval mode at each recorded epoch."""
        return self.data.val_x[: self.cfg.record_eval_samples].to(self.device)


class LanguageModeling:
    """Word-level language modelling with truncated BPTT; metrics: loss (nats/token) and perplexity.

    The training stream is cut into ``batch_size`` parallel streams (:func:`per_core.data.batchify`);
    each step feeds ``bptt`` tokens of every stream and carries the hidden state over (detached).
    With ``world_size`` ranks, each rank takes its contiguous share of the streams.
    """

    best_of_validation = True  # the test perplexity of the best-validation model too, as pytorch/examples reports

    def __init__(self, data: TextData, cfg: TrainConfig, device: torch.device) -> None:
        self.data = data
        self.cfg = cfg
        self.device = device
        self.train = batchify(data.train, cfg.batch_size).to(device)  # (L, B)
        self.valid = batchify(data.valid, min(cfg.eval_batch_size, max(1, data.valid.numel() // 4))).to(device)
        self.test = batchify(data.test, min(cfg.eval_batch_size, max(1, data.test.numel() // 4))).to(device)
        self.hidden: Any = None

    def model_kwargs(self) -> dict[str, Any]:
        return {"vocab_size": self.data.vocab_size}

    def steps_per_epoch(self, world_size: int = 1) -> int:
        return -(-(self.train.shape[0] - 1) // self.cfg.bptt)

    def _segments(self, stream: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
        for i in range(0, stream.shape[0] - 1, self.cfg.bptt):
            n = min(self.cfg.bptt, stream.shape[0] - 1 - i)
            yield stream[i : i + n], stream[i + 1 : i + 1 + n]  # inputs and next-token targets, (n, B)

    def train_batches(
        self, order: torch.Generator, augment: torch.Generator, rank: int = 0, world_size: int = 1
    ) -> Iterator[Any]:
        share = self.train.shape[1] // world_size
        self.hidden = None  # every epoch starts from a zero state
        yield from self._segments(self.train[:, rank * share : (rank + 1) * share])

    def _loss(self, model: nn.Module, x: Tensor, y: Tensor, hidden: Any) -> tuple[Tensor, Any]:
        logits, hidden = model(x, hidden)  # (T, B, V)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)), hidden

    def step(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> StepResult:
        x, y = batch
        net = getattr(model, "module", model)  # under DDP the LM's own methods are on the wrapped module
        hidden = None if self.hidden is None else net.detach_hidden(self.hidden)
        loss, self.hidden = self._loss(model, x, y, hidden)
        return StepResult(loss, torch.zeros((), dtype=torch.int64, device=self.device), y.numel())

    def summarize(self, loss_sum: float, errors: int, count: int) -> dict[str, float]:
        loss = loss_sum / count
        return {"train_loss": loss, "train_ppl": math.exp(min(loss, 50.0))}

    def _perplexity(self, model: nn.Module, stream: Tensor, split: str, env: DistEnv) -> dict[str, float]:
        """Loss (nats/token) and perplexity of ``stream`` (L, B); rank r of R takes its contiguous share of columns."""
        cols = torch.arange(stream.shape[1]).tensor_split(env.world_size)[env.rank]
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        count, hidden = 0, None
        if len(cols):  # more ranks than columns: this rank only joins the sum
            for x, y in self._segments(stream[:, int(cols[0]) : int(cols[-1]) + 1]):
                loss, hidden = self._loss(model, x, y, hidden)
                total += loss.double() * y.numel()
                count += y.numel()
        total, count = env.all_reduce_sum(torch.stack([total, total.new_tensor(count)])).tolist()
        return {f"{split}_loss": total / count, f"{split}_ppl": math.exp(min(total / count, 50.0))}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, final: bool = False, env: DistEnv | None = None) -> dict[str, float]:
        """Validation loss and perplexity; at the final epoch also the test split's (Table 3 reports both).

        Under data parallelism (``env``) each rank evaluates its contiguous share of the evaluation
        streams (columns) and one all-reduce per split sums the losses (every rank must call it). A
        narrower batch runs other kernels, so the result matches one process to float rounding, not bits.
        """
        env = env or DistEnv(device=self.device)
        out = self._perplexity(model, self.valid, "val", env)
        if final:
            out.update(self._perplexity(model, self.test, "test", env))
        return out

    def forward(self, model: nn.Module, batch: Any) -> Tensor:
        return model(batch)[0]

    def record_batch(self) -> Tensor:
        """The first ``bptt`` validation tokens of up to ``record_eval_samples`` streams."""
        return self.valid[: self.cfg.bptt, : self.cfg.record_eval_samples]


#: Shapes of synthetic stand-ins for ``--smoke`` runs: data name -> (channels, height, width, classes).
SYNTHETIC_IMAGE_SHAPES = {"digits": (1, 8, 8, 10), "cifar10": (3, 32, 32, 10), "cifar100": (3, 32, 32, 100)}


#: The data sets read from ``--data-dir`` (the others are embedded or synthetic).
FILE_DATA = ("cifar10", "cifar100", "ptb", "wikitext2")


def reads_data_dir(cfg: TrainConfig) -> bool:
    """Whether :func:`build_task` reads ``cfg.data_dir``: real data from files, not ``--smoke``."""
    return cfg.data in FILE_DATA and not cfg.smoke


def build_task(cfg: TrainConfig, device: torch.device) -> Task:
    """The task for ``cfg.data``; with ``cfg.smoke``, synthetic data of the same shape (nothing is read).

    Synthetic data is a fixed data set, the same for every run seed, like the real data it stands in for.
    """
    if cfg.data in SYNTHETIC_IMAGE_SHAPES or cfg.data == "synthetic_images":
        if cfg.smoke or cfg.data == "synthetic_images":
            c, h, w, k = SYNTHETIC_IMAGE_SHAPES.get(cfg.data, (3, 32, 32, 10))
            data = synthetic_images(n=4 * cfg.batch_size, shape=(c, h, w), num_classes=k)
        elif cfg.data == "digits":
            data = load_digits()
        else:
            if cfg.data_dir is None:
                raise ValueError(f"data {cfg.data!r} needs --data-dir (the folder with the CIFAR python batches)")
            data = load_cifar(cfg.data_dir, num_classes=SYNTHETIC_IMAGE_SHAPES[cfg.data][3])
        return ImageClassification(data, cfg, device)
    if cfg.data in ("corpus", "ptb", "wikitext2", "synthetic_text"):
        if cfg.smoke or cfg.data == "synthetic_text":
            text = synthetic_text(n_tokens=cfg.batch_size * (4 * cfg.bptt + 2) * 10 // 8)
        elif cfg.data == "corpus":
            text = load_corpus()
        else:
            if cfg.data_dir is None:
                raise ValueError(f"data {cfg.data!r} needs --data-dir (the folder with the word-level text files)")
            text = load_word_corpus(cfg.data_dir, cfg.data)
        return LanguageModeling(text, cfg, device)
    raise ValueError(
        f"unknown data {cfg.data!r}; available: digits, cifar10, cifar100, corpus, ptb, wikitext2, "
        "synthetic_images, synthetic_text"
    )
