"""The run directory: one place that builds every path, writes atomically and reads with clear errors.

Layout (format version :data:`FORMAT_VERSION`)::

    RUN_DIR/config.json                  resolved config, seed, package versions, format version
    RUN_DIR/metrics.jsonl                one JSON object per finished epoch
    RUN_DIR/activations/epoch_NNNN.npz   recorded activation statistics (see analysis.recorder)
    RUN_DIR/checkpoints/last.pt          model, optimizer, scheduler, RNG states, epoch
    RUN_DIR/analysis/*.csv               written by analysis
    RUN_DIR/figures/*.png                written by ``python -m analysis.plot``

Every write goes to a temporary file in the same folder, is flushed and fsync'ed, then renamed
over the target (``os.replace`` is atomic on POSIX), so a reader never sees a torn file and a
killed process leaves either the old or the new version.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
from numpy.lib import format as npformat

__all__ = [
    "FAILED",
    "FORMAT_VERSION",
    "NpyHeader",
    "NpzReader",
    "RunDir",
    "RunDirError",
    "atomic_write",
    "check_not_a_run",
    "find_runs",
    "holds_runs",
    "numbers_only",
]

#: Bumped whenever a file's layout changes in a way old readers cannot handle.
FORMAT_VERSION = 1
#: Marker file of a sweep's run that stopped with a TrainingError (its message inside).
FAILED = "FAILED"
#: Names of the temporaries :func:`atomic_write` writes before its rename (``.<name>.<random>.tmp``).
_TEMPORARY = ".*.tmp"


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


class RunDirError(ValueError):
    """A run directory or one of its files is missing, unreadable or inconsistent."""


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a temp file that is then renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


class RunDir:
    """Paths and atomic I/O of one run directory.

    Example
    -------
    >>> import tempfile
    >>> rd = RunDir(tempfile.mkdtemp())
    >>> rd.activation_path(7).name
    'epoch_0007.npz'
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # -- paths ----------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def activations_dir(self) -> Path:
        return self.root / "activations"

    @property
    def checkpoint_path(self) -> Path:
        return self.root / "checkpoints" / "last.pt"

    @property
    def analysis_dir(self) -> Path:
        return self.root / "analysis"

    @property
    def figures_dir(self) -> Path:
        return self.root / "figures"

    def activation_path(self, epoch: int) -> Path:
        return self.activations_dir / f"epoch_{epoch:04d}.npz"

    def activation_epochs(self) -> list[int]:
        """Epochs with a recorded activation file, sorted; only names :meth:`activation_path` writes count.

        Other names (``epoch_7.npz``, ``epoch_0007 (copy).npz``) are not the recorder's files and are left out.
        """
        if not self.activations_dir.is_dir():
            return []
        out = []
        for p in self.activations_dir.glob("epoch_*.npz"):
            stem = p.stem.removeprefix("epoch_")
            if stem.isascii() and stem.isdigit() and p.name == self.activation_path(int(stem)).name:
                out.append(int(stem))
        return sorted(out)

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete temp files that a killed writer left behind (never read: writes are rename-based)."""
        stale = [p for p in self.root.rglob(_TEMPORARY) if p.is_file()] if self.root.is_dir() else []
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

    def is_run(self) -> bool:
        return self.config_path.is_file()

    def foreign_entries(self) -> list[Path]:
        """Top-level entries that no run writes (only these make ``--overwrite`` refuse to delete the folder).

        A run writes config.json, metrics.jsonl, activations/, checkpoints/, analysis/, figures/,
        a sweep's FAILED marker and ``.*.tmp`` temporaries.
        """
        if not self.root.is_dir():
            return []
        known = {p.name for p in (self.config_path, self.metrics_path, self.activations_dir, self.analysis_dir)}
        known |= {self.checkpoint_path.parent.name, self.figures_dir.name, FAILED}
        return sorted(p for p in self.root.iterdir() if p.name not in known and not fnmatch.fnmatch(p.name, _TEMPORARY))

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    # -- writing --------------------------------------------------------------------------------
    def write_config(self, config: Mapping[str, Any]) -> Path:
        data = {"format_version": FORMAT_VERSION, **config}
        return _write_text(self.config_path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")

    def write_metrics(self, rows: list[Mapping[str, Any]]) -> Path:
        """Rewrite metrics.jsonl with ``rows`` (atomic; the file is small, one line per epoch)."""
        text = "".join(json.dumps(dict(r), sort_keys=True) + "\n" for r in rows)
        return _write_text(self.metrics_path, text)

    def write_npz(self, path: Path, arrays: Mapping[str, np.ndarray]) -> Path:
        def write(f: IO[bytes]) -> None:
            buf = io.BytesIO()
            np.savez_compressed(buf, **arrays)
            f.write(buf.getvalue())

        return atomic_write(path, write)

    def write_csv(self, name: str, frame: Any) -> Path:
        """Write a pandas DataFrame to RUN_DIR/analysis/NAME (atomic)."""
        return _write_text(self.analysis_dir / name, frame.to_csv(index=False))

    def save_checkpoint(self, state: Mapping[str, Any]) -> Path:
        import torch

        return atomic_write(self.checkpoint_path, lambda f: torch.save(dict(state), f))

    # -- reading --------------------------------------------------------------------------------
    def read_config(self) -> dict[str, Any]:
        path = self.config_path
        if not path.is_file():
            if self.root.exists() and not self.root.is_dir():
                raise RunDirError(f"{self.root} is a file, not a run directory")
            if not self.root.is_dir():
                raise RunDirError(f"{self.root}: no such directory")
            runs = [p.name for p in sorted(self.root.iterdir()) if holds_runs(p)]
            if runs:  # a sweep: its runs are one level down
                shown = ", ".join(runs[:5]) + (" ..." if len(runs) > 5 else "")
                raise RunDirError(
                    f"{self.root} is not a run directory but holds runs ({shown}), as a sweep does: name one of "
                    "them (or rerun the sweep, which continues its unfinished runs)"
                )
            raise RunDirError(f"{self.root} is not a run directory: {path.name} is missing")
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise RunDirError(f"{path}: unreadable JSON ({err}); the file is damaged") from err
        if not isinstance(config, dict):
            kind = type(config).__name__
            raise RunDirError(f"{path}: holds a JSON {kind}, not an object of settings; the file is damaged")
        version = config.get("format_version")
        if version != FORMAT_VERSION:
            raise RunDirError(f"{path}: run-directory format version {version!r}, this toolkit reads {FORMAT_VERSION}")
        return config

    def read_metrics(self, on_bad: Callable[[RunDirError], None] | None = None) -> list[dict[str, Any]]:
        """The rows of metrics.jsonl, one per epoch ([] when there is none).

        A line that is not a JSON object raises :class:`RunDirError` naming the file and line; with
        ``on_bad``, that error is passed to it instead and the line left out (the other epochs are kept).
        Values are as written (the trainer writes numbers only; :func:`analysis.io.load_run` leaves out
        any other).
        """
        path = self.metrics_path
        if not path.is_file():
            return []
        rows = []
        for i, raw in enumerate(path.read_bytes().splitlines(), start=1):
            if not raw.strip():
                continue
            try:  # bytes that are not UTF-8 (a damaged file) fail here, a line of their own
                row = json.loads(raw.decode("utf-8"))
                problem = None if isinstance(row, dict) else f"a JSON {type(row).__name__}, not an object of metrics"
            except ValueError as err:
                problem = f"not valid JSON ({err})"
            if problem is None:
                rows.append(row)
            elif on_bad is None:
                raise RunDirError(f"{path}, line {i}: {problem}")
            else:
                on_bad(RunDirError(f"{path}, line {i}: {problem}"))
        return rows

    def read_npz(self, path: Path) -> dict[str, np.ndarray]:
        """Every array of the npz file ``path``."""
        with self.open_npz(path) as z:
            return {k: z[k] for k in z.files}

    @contextlib.contextmanager
    def open_npz(self, path: Path) -> Iterator[NpzReader]:
        """The npz file ``path`` opened for reading single members (``z[key]`` decompresses that one only).

        Opening it and every read through the reader raise :class:`RunDirError` naming the file, whatever
        the exception: damage reaches numpy's readers in many types (zip, zlib, ValueError, even
        ``tokenize.TokenError`` from a header with a flipped byte). Exceptions of the ``with`` block's own
        code pass unchanged.
        """
        with _as_damage(path):
            f = open(path, "rb")
        with f:  # closed even when np.load fails
            with _as_damage(path):
                npz = np.load(f, allow_pickle=False)
                if not isinstance(npz, np.lib.npyio.NpzFile):  # a single .npy array under an .npz name
                    raise ValueError(f"a single {type(npz).__name__}, not an npz archive of arrays")
            with npz:
                yield NpzReader(npz, path)

    def load_checkpoint(self, map_location: Any = "cpu") -> dict[str, Any]:
        import torch

        path = self.checkpoint_path
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except FileNotFoundError as err:
            raise RunDirError(f"{path}: no checkpoint to resume from") from err
        except Exception as err:
            raise RunDirError(
                f"{path}: unreadable checkpoint ({type(err).__name__}: {err}); the file is damaged: restore it, or "
                "train the run again with --overwrite"
            ) from err


def numbers_only(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """The rows of metrics.jsonl (:meth:`RunDir.read_metrics`) as numbers only, and what was left out ('' if nothing).

    A value that is not a number (a string, even "12.5", a list, a boolean) is left out of its row (JSON null
    stays: it stands for a missing number); a line without an integer ``epoch`` (2.0 is one) is left out whole
    (it has no place on the epoch axis, and would count as an epoch finished). The trainer writes numbers
    only; these rules are for files written by other code, so that readers (``analysis.load_run``, the
    sweep's plan and table) neither crash nor count a string.
    """
    kept, values, lines = [], {}, 0
    for row in rows:
        epoch = row.get("epoch")
        integral = isinstance(epoch, int) or (isinstance(epoch, float) and epoch.is_integer())
        if not integral or isinstance(epoch, bool) or not -(2**53) < epoch < 2**53:  # 2**53: floats hold it exactly
            lines += 1
            continue
        good = {}
        for key, value in row.items():
            if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
                good[key] = value
            else:
                values[key] = values.get(key, 0) + 1
        kept.append(good)
    said = [f"{key} ({n} line{'s' * (n != 1)})" for key, n in values.items()]
    if said:
        said = [f"values that are not numbers left out: {', '.join(said)}"]
    if lines:
        said.append(f"{lines} line{'s' * (lines != 1)} without an integer epoch left out")
    return kept, "; ".join(said)


def check_not_a_run(path: Path, writes: str) -> None:
    """Refuse a run directory, or a folder inside one, as the folder that ``writes`` (e.g. "a sweep writes its
    runs") below: those runs would nest inside that run, and every reader (tables, plots, ``load_run``) stops
    at it."""
    if RunDir(path).is_run():
        raise RunDirError(f"{path} is a run directory; {writes} below --out: choose another folder")
    if (outer := enclosing_run(path)) is not None:
        raise RunDirError(f"{path} is inside the run directory {outer}; {writes} below --out: choose another folder")


def enclosing_run(path: str | os.PathLike[str]) -> Path | None:
    """The nearest folder above ``path`` that holds a run's config.json (:func:`_run_config`), or None: a run
    written at ``path`` would nest in that run. Another program's config.json (a project's, a model's) does
    not count."""
    return next((p for p in Path(path).resolve().parents if _run_config(RunDir(p).config_path)), None)


def _run_config(path: Path) -> bool:
    """Whether ``path`` is a run's config.json: one :meth:`RunDir.write_config` wrote (a JSON object holding
    ``format_version``), or a damaged one that still shows the key; not another program's (JSON without the
    key, a JSON list, JSON with comments)."""
    try:
        text = path.read_bytes() if path.is_file() else b""
    except OSError:
        return False
    try:
        config = json.loads(text)
    except ValueError:  # damaged: a run's if it names the key write_config puts in every config.json
        return b'"format_version"' in text
    return isinstance(config, dict) and "format_version" in config


def holds_runs(path: Path) -> bool:
    """Whether ``path`` is a run directory or holds one a level down (a sweep's ``METHOD/seedS`` layout)."""
    if not path.is_dir():
        return False
    return RunDir(path).is_run() or any(RunDir(p).is_run() for p in path.iterdir() if p.is_dir())


def find_runs(path: str | os.PathLike[str]) -> list[RunDir]:
    """The run directories at ``path``: itself if it is one, else every run below it (a sweep), sorted."""
    root = Path(path)
    if not root.exists():
        raise RunDirError(f"{root}: no such directory")
    if RunDir(root).is_run():
        return [RunDir(root)]
    runs = sorted({p.parent for p in root.rglob("config.json")})
    if not runs:
        raise RunDirError(f"{root} is neither a run directory nor a sweep of them (no config.json found below it)")
    return [RunDir(p) for p in runs]


@contextlib.contextmanager
def _as_damage(path: Path) -> Iterator[None]:
    """An Exception of the block (not KeyboardInterrupt and other bare BaseExceptions, not a RunDirError) as a
    RunDirError naming ``path``: "file not found", else "unreadable npz (...); the file is damaged"."""
    try:
        yield
    except RunDirError:
        raise
    except FileNotFoundError as err:
        raise RunDirError(f"{path}: file not found") from err
    except Exception as err:  # zipfile.BadZipFile, zlib.error, ValueError, EOFError, OSError, KeyError ...
        raise RunDirError(f"{path}: unreadable npz ({type(err).__name__}: {err}); the file is damaged") from err


class NpyHeader(NamedTuple):
    """Shape and dtype of an array in an npz file, from its ``.npy`` header."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)


class NpzReader:
    """An open npz file (:meth:`RunDir.open_npz`): members read one at a time; a failed read raises
    :class:`RunDirError` naming the file."""

    def __init__(self, npz: Any, path: Path) -> None:
        self._npz, self.path = npz, path

    @property
    def files(self) -> list[str]:
        """The arrays' names."""
        return self._npz.files

    def __contains__(self, key: str) -> bool:
        return key in self._npz.files

    def __iter__(self) -> Iterator[str]:
        return iter(self._npz.files)

    def __len__(self) -> int:
        return len(self._npz.files)

    def __getitem__(self, key: str) -> np.ndarray:
        self._check_open()
        with _as_damage(self.path):
            return self._npz[key]

    def _check_open(self) -> None:
        if self._npz.zip is None:  # a caller's mistake, not damage
            raise ValueError(f"{self.path} was read after its open_npz block ended: read inside the with block")

    def header(self, key: str, read_through: bool = False) -> NpyHeader | None:
        """The shape and dtype of member ``key`` without reading its data; None where the header cannot be read
        alone (a member not named ``key.npy``, a header version numpy has no reader for).

        ``read_through``: also read the data to the end, keeping nothing, so that damage inside the member
        raises here (zip's CRC at its end, a deflate error, fewer or more bytes than the header says).
        """
        readers = {(1, 0): npformat.read_array_header_1_0, (2, 0): npformat.read_array_header_2_0}
        self._check_open()
        with _as_damage(self.path):
            if key + ".npy" not in self._npz.zip.NameToInfo:
                return None
            with self._npz.zip.open(key + ".npy") as fp:
                version = npformat.read_magic(fp)
                if version not in readers:
                    return None
                shape, _, dtype = readers[version](fp)
                if read_through:
                    _read_through(fp, key, math.prod(shape) * dtype.itemsize, dtype.hasobject)
                return NpyHeader(tuple(shape), dtype)


def _read_through(fp: IO[bytes], key: str, expected: int, has_objects: bool) -> None:
    """Read a member's data to its end in 1 MiB blocks, keeping nothing; raise ValueError where it is not the
    ``expected`` number of bytes."""
    if has_objects:  # as np.load with allow_pickle=False
        raise ValueError(f"{key} holds Python objects, which cannot be loaded without pickle")
    size = 0
    while block := fp.read(1 << 20):
        size += len(block)
    if size != expected:
        raise ValueError(f"{key} holds {size} bytes of data, its header says {expected}")
