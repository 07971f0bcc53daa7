"""The figures folder of ``python -m analysis.plot``: where it is, and which earlier files a call may replace.

- :func:`default_out`: ``PATH/figures`` for one path; for several, ``figures/`` in their common parent,
  or ``figures/<selection>/`` there when that parent holds other runs too (a selection from a sweep).
- :func:`claimed` and :func:`replace_manifest`: the folder's manifest (:data:`MANIFEST`) lists the
  files a call wrote with the SHA-256 of their bytes; the next call removes those of them it does not
  write again (in its format) and that nobody changed since, never any other file.
- :func:`save_figure`: one figure written atomically (temporary file and rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.io import RunData
from analysis.plotdata import PlotError
from per_core.rundir import atomic_write, find_runs

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "MANIFEST",
    "FiguresFolderError",
    "check_out",
    "claimed",
    "default_out",
    "folder_lock",
    "replace_manifest",
    "save_figure",
]


class FiguresFolderError(PlotError):
    """The figures cannot go where they would: no common folder, a name too long, or a file in the way."""


@contextmanager
def folder_lock(out: Path) -> Iterator[None]:
    """Hold a lock on the folder ``out`` (``flock`` of the folder itself: no file is left) while a call writes
    into it; a second call into the same folder fails at once.

    The folder is created if missing (with its parents); when the call leaves nothing in it (a failed first
    call) the folders it created are removed again. Without ``fcntl`` (Windows) there is no lock.
    """
    absolute = Path(os.path.abspath(out))  # "new/../old" must not count "old" as made here
    missing = [p for p in (absolute, *absolute.parents) if not p.exists()]  # deepest first
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        fcntl = None
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
        fd = os.open(out, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if fcntl is not None else None
    except OSError as err:
        raise FiguresFolderError(
            f"cannot write into {out} ({err.strerror or err}): give --out a writable folder"
        ) from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise FiguresFolderError(
                    f"another python -m analysis.plot is writing into {out}: wait for it to finish, or give "
                    "--out another folder"
                ) from None
        try:
            yield
        finally:  # a failed first call leaves no trace: its empty manifest and the folders it made go
            if missing and not _read_manifest(out) and {p.name for p in out.iterdir()} <= {MANIFEST}:
                (out / MANIFEST).unlink(missing_ok=True)
                for folder in missing:
                    try:
                        folder.rmdir()
                    except OSError:  # another process put something there meanwhile: it stays
                        break
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def save_figure(fig: Figure, path: Path, fmt: str) -> Path:
    """Write ``fig`` to ``path`` in format ``fmt`` atomically (temporary file and rename), close it; return ``path``."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda f: fig.savefig(f, format=fmt))
    finally:
        plt.close(fig)


#: In a figures folder: the names of the files the last ``python -m analysis.plot`` call wrote there.
MANIFEST = ".analysis-plot-manifest.json"


def default_out(paths: Sequence[str | os.PathLike[str]], data: RunData) -> Path:
    """Where the figures go without ``--out``: ``PATH/figures`` for one path; for several,
    ``figures/`` in their common parent when they hold every run below it, else
    ``figures/<selection>/`` there, named for the paths (``bn+per``; a short hash of the selection is
    added where a name had to be changed or holds ``+``, so two selections never share a folder), so
    that a selection never overwrites the figures of the whole sweep."""
    root = Path(data.root)
    given = list(dict.fromkeys(Path(p).resolve() for p in paths))
    if len(given) == 1:
        return root / "figures"
    parent = root.resolve()
    if parent == Path(parent.anchor) or parent == Path.home().resolve():
        raise FiguresFolderError(
            f"the {len(given)} paths share no folder below {parent}, where their figures would go: give --out DIR"
        )
    selected = {rd.root.resolve() for p in given for rd in find_runs(p)}
    if not _other_run_below(parent, selected):
        return root / "figures"
    names = sorted(p.relative_to(parent).as_posix() for p in given)
    safe = ["".join(c if c.isalnum() or c in "._-" else "_" for c in n) for n in names]
    name = "+".join(safe)
    if safe != names or any("+" in n for n in names):  # a changed or ambiguous name: the selection's own hash
        name += "-" + hashlib.sha256("\0".join(names).encode()).hexdigest()[:8]
    if len(name) > 100:
        raise FiguresFolderError(
            f"the {len(given)} paths are part of {root}, which holds other runs too: their figures would go to a "
            "subfolder of its figures/ named for them, but the name is too long; give --out DIR"
        )
    return root / "figures" / name


def _other_run_below(root: Path, selected: set[Path]) -> bool:
    """Whether a run directory below ``root`` is not in ``selected``: one that :func:`find_runs` would find
    (a folder holding config.json; symlinked folders are not entered); the walk stops at the first one."""
    return any("config.json" in files and Path(d).resolve() not in selected for d, _, files in os.walk(root))


def check_out(out: Path, given: bool) -> None:
    """A one-line error when ``out`` or a folder above it is a file."""
    blocker = next((q for q in (out, *out.parents) if q.exists() and not q.is_dir()), None)
    if blocker is None:
        return
    where = f"--out {out}" if given else f"the figures folder {out}"
    what = "is a file" if blocker == out else f"lies in {blocker}, which is a file"
    raise FiguresFolderError(f"{where} {what}: give --out a folder (it is created if missing), or move the file away")


#: What ``main`` writes: a name the manifest lists is only ever removed when it is one of these.
_OWN_FILE = re.compile(r"(figure2|sw1_curves|metrics|ridgeline_.+_unit\d+)\.(png|pdf)")


def _fingerprint(path: Path) -> str | None:
    """The SHA-256 of a plain file's bytes (None for anything else): what the manifest compares, so that a
    copied folder (new times, same bytes) keeps its record."""
    if path.is_symlink() or not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_manifest(out: Path) -> dict[str, str] | None:
    """The files the previous call wrote into ``out`` with their fingerprints; None without a readable manifest."""
    try:
        listed = json.loads((out / MANIFEST).read_text())["written"]
        return {n: f for n, f in listed.items() if isinstance(n, str) and _OWN_FILE.fullmatch(n) and isinstance(f, str)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # missing or damaged: claims nothing
        return None


def claimed(out: Path) -> tuple[dict[str, str], set[str]]:
    """What ``out`` holds before a call draws: the files the previous call's manifest lists that are still as it
    wrote them (same bytes), with their fingerprints; and the other plain files of names ``main`` writes, which
    it did not write as they are (a user's file, or a figure edited after it was written). Without a readable
    manifest nothing is claimed, and every such file is of the second kind (a first call into a user's folder)."""
    if not out.is_dir():
        return {}, set()
    before = _read_manifest(out) or {}
    present = {f.name: _fingerprint(f) for f in out.iterdir() if _OWN_FILE.fullmatch(f.name)}
    kept = {n: mark for n, mark in before.items() if present.get(n) == mark}
    return kept, {n for n, mark in present.items() if mark is not None and n not in kept}


def replace_manifest(
    out: Path, written: Sequence[Path], fmt: str, previous: dict[str, str], *, finished: bool = True
) -> list[Path]:
    """Record in ``out/MANIFEST`` the files this call wrote, and remove the ``fmt`` files that the
    previous call wrote and nobody changed since (``previous``, from :func:`claimed`) and that this call
    did not write (figures of layers no longer chosen, a figure no longer drawn). Nothing else is
    removed: files the manifest does not name, files changed since, files of another format, links,
    folders. A call that did not finish (``finished=False``) removes nothing and keeps the previous
    call's files on record beside its own. Returns the removed files."""
    now = {w.name: _fingerprint(w) for w in written}
    stale, kept = [], {}
    for name, mark in previous.items():
        if name in now:
            continue  # written again
        if name.endswith(f".{fmt}") and finished:
            stale.append(out / name)
        else:
            kept[name] = mark  # another format's figures (removed by a call in that format), or an unfinished call
    if out.is_dir():
        atomic_write(out / MANIFEST, lambda f: f.write(json.dumps({"written": {**now, **kept}}, indent=1).encode()))
    for path in stale:
        path.unlink()
    return stale
