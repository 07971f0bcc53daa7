"""What the command lines of the project share: errors in one line, a closed pipe, flags parsed alike.

argparse's default answer to a mistyped flag is the whole usage block (13 lines for
``python -m per_core.train``) followed by the message. :class:`OneLineArgumentParser` prints only
the message, so that the error is the one line a user (or a sweep's log) sees; ``--help`` is
unchanged. The entry points build their parsers with it: ``per_core.train``, ``per_core.sweep``,
``per_core.demo``, ``analysis.plot``, ``analysis.bounds`` and ``analysis.figures``, and run their
bodies with :func:`run_command` (errors the user can fix: one ``error:`` line; Ctrl-C: what was
kept; a reader that closed stdout: a quiet stop). Long jobs print their progress lines with
:func:`say`, which lets the job go on when nobody reads stdout any more.
:func:`parse_per_locations` reads ``--per-locations`` for the trainer and the sweep.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from per_core.progress import in_kernel

__all__ = [
    "EXIT_PIPE",
    "OneLineArgumentParser",
    "bar_shown",
    "nonempty_folder",
    "nonempty_path",
    "parse_per_locations",
    "run_command",
    "say",
]

#: Exit status of a command whose reader closed stdout (``| head``): a shell's 128 + SIGPIPE.
EXIT_PIPE = 141


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose usage errors are one line on stderr, with exit status 2.

    The line is ``PROG: error: MESSAGE (see --help)``. Sub-parsers made by ``add_subparsers`` are of
    the same class (argparse's default), and ``parser.error(...)`` called by the program is one line too.

    Example
    -------
    >>> p = OneLineArgumentParser(prog="python -m tool")
    >>> _ = p.add_argument("--n", type=int)
    >>> try:  # stderr: python -m tool: error: argument --n: invalid int value: 'x' (see --help)
    ...     p.parse_args(["--n", "x"])
    ... except SystemExit as exit:
    ...     print(exit.code)
    2
    """

    def error(self, message: str) -> NoReturn:
        message = " ".join(str(message).split())  # one line, whatever argparse (or the caller) wrapped
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def nonempty_path(text: str) -> str:
    """An argparse ``type`` for a path argument: ``text`` unless empty, which would mean the current folder.

    An unset shell variable (``python -m analysis.plot "$RUN"``) must not make a command read, or write
    into, every run below the working directory.

    >>> nonempty_path("runs/demo")
    'runs/demo'
    """
    if not text:
        raise argparse.ArgumentTypeError("an empty path (an unset shell variable?): name a folder")
    return text


def nonempty_folder(text: str) -> Path:
    """:func:`nonempty_path` as a ``Path``, for the ``--out`` and ``--table`` flags."""
    return Path(nonempty_path(text))


def parse_per_locations(text: str) -> int | None:
    """``--per-locations`` of the trainer and the sweep: a positive integer m, or ``all`` (None).

    >>> parse_per_locations("4"), parse_per_locations("all")
    (4, None)
    """
    if text == "all":
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"--per-locations must be a positive integer or 'all', got {text!r}")
    return int(text)


def bar_shown(progress: bool) -> bool:
    """Whether a progress bar is drawn: asked for, and stderr is a terminal or a notebook (never a log or a pipe)."""
    return progress and (sys.stderr.isatty() or in_kernel())


def _discard(name: str = "stdout") -> None:
    """Send ``sys.<name>`` to the null device, so that later writes (and the flush at exit) succeed unseen."""
    try:
        fd = getattr(sys, name).fileno()
    except (AttributeError, OSError, ValueError):  # a stream without a descriptor: replace the object
        setattr(sys, name, open(os.devnull, "w"))  # lives as long as the process
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)  # the descriptor itself: buffered bytes and the interpreter's final flush go there too
    finally:
        os.close(null)


def say(line: str, write: Callable[[str], object] = print) -> None:
    """Print one progress line of a long job on stdout, flushed; a closed stdout does not stop the job.

    When the reader has gone (``python -m per_core.train ... | head -3``), stdout is pointed at the
    null device, one note on stderr says so, and the caller goes on: a training run's results are its
    run directory, not its log. ``write`` prints the line (e.g. ``tqdm.write``, which keeps a progress
    bar intact).
    """
    try:
        write(line)
        sys.stdout.flush()
    except BrokenPipeError:
        _discard("stdout")
        note("note: stdout was closed; nothing more is printed (what the command writes to disk is still written)")


def note(line: str) -> None:
    """Print one ``note:`` line on stderr; a closed stderr (``2>&1 | head``) does not stop the job."""
    try:
        print(line, file=sys.stderr, flush=True)
    except BrokenPipeError:
        _discard("stderr")


def run_command(
    body: Callable[[], int],
    *,
    debug: bool = False,
    errors: tuple[type[Exception], ...] = (ValueError, OSError),
    interrupted: Callable[[], str] = lambda: "interrupted; every file written so far is complete (writes are atomic)",
    who: str = "",
) -> int:
    """Run an entry point's body; return its exit status. How every command line of the project ends.

    - ``body()`` returns normally: its status.
    - It raises one of ``errors`` (mistakes the user can fix: a bad path, a bad flag value, a damaged
      file): one line ``error: MESSAGE`` on stderr, status 2.
    - Ctrl-C: ``interrupted()`` on stderr (what was kept, how to continue), status 130.
    - The reader closed stdout (``| head``): nothing more is printed, status :data:`EXIT_PIPE` (141).
    - ``debug``: errors and interrupts propagate with their traceback.

    ``who`` starts the error message (``"rank 1: "`` under data parallelism). Each message is written in
    one call, so that lines of processes sharing the terminal do not splice into each other.

    Example
    -------
    >>> def body() -> int:
    ...     raise ValueError("--lam must be >= 0, got -1")
    >>> run_command(body)  # stderr: error: --lam must be >= 0, got -1
    2
    """
    try:
        return body()
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"\n{interrupted()}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # an OSError, but not the user's mistake: the reader has gone
        if debug:
            raise
        _discard("stdout")  # the interpreter's own flush at exit must not fail again
        return EXIT_PIPE
    except errors as err:
        if debug:
            raise
        print(f"error: {who}{err}\n", end="", file=sys.stderr, flush=True)
        return 2


#: What ``python -m per_core.cli`` says: the module is a library of the commands, not one of them.
COMMANDS = (
    "per_core.cli holds what the commands share; it is not a command. The commands (each with --help): "
    "python -m per_core.demo, python -m per_core.train, python -m per_core.sweep, python -m analysis.plot, "
    "python -m analysis.bounds, python -m analysis.figures"
)

if __name__ == "__main__":
    sys.exit(COMMANDS)
