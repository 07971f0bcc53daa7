"""What the command lines of the project share: usage errors in one line, and flags parsed alike.

argparse's default answer to a mistyped flag is the whole usage block (13 lines for
``python -m per_core.train``) followed by the message. :class:`OneLineArgumentParser` prints only
the message, so that the error is the one line a user (or a sweep's log) sees; ``--help`` is
unchanged. The entry points build their parsers with it: ``per_core.train``, ``per_core.sweep``,
``per_core.demo``, ``analysis.plot``, ``analysis.bounds`` and ``analysis.figures``.
:func:`parse_per_locations` reads ``--per-locations`` for the trainer and the sweep.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

__all__ = ["OneLineArgumentParser", "parse_per_locations"]


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
