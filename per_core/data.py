"""Data: embedded defaults that need no download, and loaders for the paper's data sets in local files.

Embedded (always available):

- ``digits``: scikit-learn's bundled 8x8 handwritten digits, 1797 images, 10 classes; a fixed
  80/20 train/validation split (the same for every run seed).
- ``corpus``: the Python documentation text that ships with CPython (``pydoc_data.topics``) as a
  small word-level language-modelling corpus with a fixed 80/10/10 train/valid/test split.

Local files in their standard formats (nothing is downloaded):

- ``cifar10`` / ``cifar100``: the "python version" pickle batches (``data_batch_1..5`` + ``test_batch``,
  or ``train`` + ``test``) in ``data_dir`` or in its ``cifar-10-batches-py`` / ``cifar-100-python``
  subfolder. Per-channel normalization with the training set's statistics; random crop (pad 4)
  and horizontal flip are applied per batch by :func:`augment_crop_flip`.
- ``ptb`` (``ptb.{train,valid,test}.txt``) and ``wikitext2`` (``wiki.{train,valid,test}.tokens``):
  word level, one ``<eos>`` per line, vocabulary from the training split.
- ``synthetic_images`` / ``synthetic_text``: random data of a given shape, for ``--smoke`` runs.
"""

from __future__ import annotations

import pickle
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from per_core.checks import check_positive_int, is_integer

__all__ = [
    "DataError",
    "ImageData",
    "TextData",
    "augment_crop_flip",
    "batchify",
    "image_batches",
    "load_cifar",
    "load_corpus",
    "load_digits",
    "load_word_corpus",
    "synthetic_images",
    "synthetic_text",
]

#: Seed of the fixed train/validation split of the embedded data (independent of the run seed).
SPLIT_SEED = 0


class DataError(FileNotFoundError):
    """Data files are missing or malformed; the message names the expected files."""


@dataclass
class ImageData:
    """Images (N, C, H, W) float32, labels (N,) int64, already normalized."""

    name: str
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    num_classes: int

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]


@dataclass
class TextData:
    """Token-id streams (1-D int64) and the vocabulary (index -> word)."""

    name: str
    train: Tensor
    valid: Tensor
    test: Tensor
    vocab: list[str]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)


def _normalize(train_x: Tensor, *others: Tensor) -> list[Tensor]:
    """Per-channel standardization with the training set's mean and std."""
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return [(t - mean) / std for t in (train_x, *others)]


def _split_indices(n: int, train_fraction: float) -> tuple[Tensor, Tensor]:
    """A fixed random split (seed SPLIT_SEED) of range(n) into train and validation indices."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    cut = round(train_fraction * n)
    return perm[:cut], perm[cut:]


def load_digits() -> ImageData:
    """scikit-learn's bundled digits as (N, 1, 8, 8) images, fixed 80/20 split, standardized."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    y = torch.tensor(bunch.target, dtype=torch.int64)
    tr, va = _split_indices(len(y), 0.8)
    train_x, val_x = _normalize(x[tr], x[va])
    return ImageData("digits", train_x, y[tr], val_x, y[va], num_classes=10)


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            return pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise
    except Exception as err:
        raise DataError(f"{path}: not a CIFAR python pickle batch ({type(err).__name__}: {err})") from err


def load_cifar(data_dir: str | Path, num_classes: int = 10) -> ImageData:
    """CIFAR-10/100 from the standard python pickle batches in ``data_dir`` (see module docstring)."""
    if num_classes not in (10, 100):
        raise ValueError(f"num_classes must be 10 or 100, got {num_classes}")
    root = Path(data_dir).expanduser()
    sub = "cifar-10-batches-py" if num_classes == 10 else "cifar-100-python"
    if (root / sub).is_dir():
        root = root / sub
    if num_classes == 10:
        train_files, test_files, label_key = (
            [f"data_batch_{i}" for i in range(1, 6)],
            ["test_batch"],
            b"labels",
        )
    else:
        train_files, test_files, label_key = ["train"], ["test"], b"fine_labels"
    missing = [f for f in train_files + test_files if not (root / f).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-{num_classes} not found in {root}: missing {', '.join(missing)}. Download the 'python version' "
            f"from https://www.cs.toronto.edu/~kriz/cifar.html on a machine with internet, extract it and pass "
            f"--data-dir to the folder that holds {sub}/"
        )

    def read(files: list[str]) -> tuple[Tensor, Tensor]:
        xs, ys = [], []
        for name in files:
            batch = _unpickle(root / name)
            if b"data" not in batch or label_key not in batch:
                raise DataError(f"{root / name}: missing keys b'data' / {label_key!r}")
            data, labels = np.asarray(batch[b"data"], dtype=np.uint8), np.asarray(batch[label_key], dtype=np.int64)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != data.shape[:1]:
                raise DataError(
                    f"{root / name}: data of shape {data.shape} and {labels.size} labels, not CIFAR's (N, 3072) "
                    "images with one label each; the file is damaged or of another data set"
                )
            if labels.size and not (0 <= labels.min() and labels.max() < num_classes):
                raise DataError(
                    f"{root / name}: labels from {labels.min()} to {labels.max()}, not CIFAR-{num_classes}'s 0 to "
                    f"{num_classes - 1}; the file is damaged or of another data set"
                )
            xs.append(data.reshape(-1, 3, 32, 32))
            ys.append(labels)
        return torch.from_numpy(np.concatenate(xs)).float() / 255.0, torch.from_numpy(np.concatenate(ys))

    train_x, train_y = read(train_files)
    test_x, test_y = read(test_files)
    train_x, test_x = _normalize(train_x, test_x)
    return ImageData(f"cifar{num_classes}", train_x, train_y, test_x, test_y, num_classes=num_classes)


def synthetic_images(
    n: int = 256, shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10, seed: int = 0
) -> ImageData:
    """Random images with random labels, shaped like a real data set (for ``--smoke``)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    cut = max(1, n // 4)
    return ImageData("synthetic", x[cut:], y[cut:], x[:cut], y[:cut], num_classes=num_classes)


def augment_crop_flip(x: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Random crop after zero padding by ``pad`` and random horizontal flip, per image.

    x : Tensor, shape (N, C, H, W). Returns a tensor of the same shape. Written with torch ops
    (no torchvision); the randomness comes from ``generator``.
    """
    if not isinstance(x, Tensor) or x.ndim != 4:
        got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a batch of images, a tensor of shape (N, C, H, W), got {got}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if not is_integer(pad) or pad < 0:
        raise ValueError(f"pad must be an integer >= 0, got {pad!r}")
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # (N, C, H+2p, W+2p)
    oy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    rows = (oy + torch.arange(h)).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * pad)
    out = padded.gather(2, rows)  # (N, C, H, W+2p)
    cols = (ox + torch.arange(w)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    out = out.gather(3, cols)  # (N, C, H, W)
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)


def image_batches(
    x: Tensor,
    y: Tensor,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    augment: torch.Generator | None = None,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Mini-batches of (x, y); shuffled when ``generator`` is given; this rank's share of each batch.

    With ``world_size`` > 1 every rank walks the same permutation (same generator seed) and takes
    its contiguous slice of every global batch of ``batch_size`` samples. All ranks get equal shares,
    so that data parallelism's average of the ranks' mean losses is exactly the mean over the batch:
    ``batch_size`` must be a multiple of ``world_size``, and of a last, partial batch the
    ``len % world_size`` samples that do not divide evenly are skipped (fewer than ``world_size``
    per epoch; ``torch.utils.data.DistributedSampler`` pads with repeats instead).
    ``augment``: a generator for random crop + flip (:func:`augment_crop_flip`), or None.
    """
    for name, value, low in (("batch_size", batch_size, 1), ("world_size", world_size, 1), ("rank", rank, 0)):
        if not is_integer(value) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if rank >= world_size:
        raise ValueError(f"rank must be below world_size {world_size}, got {rank}")
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same number of samples, got {len(x)} and {len(y)}")
    if batch_size % world_size:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by {world_size} ranks; use a multiple of {world_size}"
        )
    n = len(y)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        share = len(idx) // world_size
        if share == 0:
            break
        idx = idx[rank * share : (rank + 1) * share]
        xb = x[idx]
        if augment is not None:
            xb = augment_crop_flip(xb, augment)
        yield xb, y[idx]


# --- text ---------------------------------------------------------------------------------------

_TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def _tokenize_lines(lines: Sequence[str], lower: bool, keep_blank: bool = False) -> list[list[str]]:
    """Words of each line plus ``<eos>``; ``keep_blank``: a blank line is a lone ``<eos>``.

    PTB and WikiText-2 keep blank lines, as the standard loader does (pytorch/examples
    word_language_model: ``line.split() + ['<eos>']`` for every line), so token counts and
    perplexities are comparable with the published ones; WikiText-2 has a blank line around
    every heading and paragraph.
    """
    out = []
    for line in lines:
        words = _TOKEN.findall(line.lower()) if lower else line.split()
        if words or keep_blank:
            out.append([*words, "<eos>"])
    return out


def _encode(lines: list[list[str]], index: dict[str, int]) -> Tensor:
    unk = index.get("<unk>")
    ids = []
    for line in lines:
        for w in line:
            i = index.get(w, unk)
            if i is None:
                raise DataError(f"word {w!r} is not in the training vocabulary and there is no <unk> token")
            ids.append(i)
    return torch.tensor(ids, dtype=torch.int64)


def _build(
    name: str, train: list[list[str]], valid: list[list[str]], test: list[list[str]], min_count: int
) -> TextData:
    counts = Counter(w for line in train for w in line)
    vocab = sorted(w for w, c in counts.items() if c >= min_count)
    if "<unk>" not in vocab:
        vocab.append("<unk>")
    index = {w: i for i, w in enumerate(vocab)}
    return TextData(name, _encode(train, index), _encode(valid, index), _encode(test, index), vocab)


def load_corpus(min_count: int = 2) -> TextData:
    """The CPython documentation topics as a word-level corpus (lower-cased, punctuation split off).

    Lines are split 80/10/10 into train/valid/test in a fixed order; words seen fewer than
    ``min_count`` times in train become ``<unk>``.
    """
    from pydoc_data.topics import topics

    lines = [line for key in sorted(topics) for line in topics[key].splitlines()]
    tokens = _tokenize_lines(lines, lower=True)
    n = len(tokens)
    a, b = int(0.8 * n), int(0.9 * n)
    return _build("corpus", tokens[:a], tokens[a:b], tokens[b:], min_count)


def _file_lines(path: Path) -> list[str]:
    """The lines of a text file as Python's file iteration gives them (the standard loader's way).

    Broken at ``\\n``, ``\\r\\n`` and ``\\r`` only; ``str.splitlines`` also breaks at vertical tabs, form
    feeds, ``\\x1c``-``\\x1e``, ``\\x85``, ``\\u2028`` and ``\\u2029``: each an extra ``<eos>``, so other
    token counts and perplexities.
    """
    try:
        with path.open(encoding="utf-8") as f:
            return list(f)
    except UnicodeDecodeError:  # its offset counts from the decoder's chunk: the whole file decoded gives the file's
        try:
            path.read_bytes().decode("utf-8")
            where = ""
        except UnicodeDecodeError as err:
            where = f" ({err.reason} at byte {err.start})"
        raise DataError(
            f"{path}: not UTF-8 text{where}; the file is damaged or in another encoding: replace it with the data "
            "set's original file"
        ) from None


def load_word_corpus(data_dir: str | Path, name: str) -> TextData:
    """Penn Treebank (``name='ptb'``) or WikiText-2 (``name='wikitext2'``) from local text files."""
    patterns = {"ptb": "ptb.{}.txt", "wikitext2": "wiki.{}.tokens"}
    if name not in patterns:
        raise ValueError(f"name must be one of {sorted(patterns)}, got {name!r}")
    root = Path(data_dir).expanduser()
    files = [root / patterns[name].format(split) for split in ("train", "valid", "test")]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataError(
            f"{name} not found in {root}: missing {', '.join(missing)}. Put the standard word-level files "
            f"({', '.join(f.name for f in files)}) in one folder and pass it as --data-dir"
        )
    splits = [_tokenize_lines(_file_lines(f), lower=False, keep_blank=True) for f in files]
    for f, lines in zip(files, splits, strict=True):
        if not lines:
            raise DataError(f"{f} is empty: the {name} files are damaged or were not fully copied")
    return _build(name, *splits, min_count=1)


def synthetic_text(n_tokens: int = 2000, vocab_size: int = 50, seed: int = 0) -> TextData:
    """Random token streams (for ``--smoke``)."""
    g = torch.Generator().manual_seed(seed)
    vocab = [f"w{i}" for i in range(vocab_size - 1)] + ["<unk>"]
    ids = torch.randint(0, vocab_size, (n_tokens,), generator=g)
    a, b = int(0.8 * n_tokens), int(0.9 * n_tokens)
    return TextData("synthetic", ids[:a], ids[a:b], ids[b:], vocab)


def batchify(ids: Tensor, batch_size: int) -> Tensor:
    """A token stream (L,) as ``batch_size`` parallel streams, shape (L // batch_size, batch_size)."""
    if not isinstance(ids, Tensor) or ids.ndim != 1:
        got = f"shape {tuple(ids.shape)}" if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(f"ids must be a token stream, a 1-D tensor of shape (L,), got {got}")
    batch_size = check_positive_int(batch_size, "batch_size")
    n = ids.numel() // batch_size
    if n < 2:
        raise ValueError(f"{ids.numel()} tokens are too few for batch size {batch_size}")
    return ids[: n * batch_size].view(batch_size, n).t().contiguous()  # (B*n,) -> (n, B)
