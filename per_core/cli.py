"""What every command line of the project shares: usage errors in one line.

argparse's default answer to a mistyped flag is the whole usage block (13 lines for
``python -m per_core.train``) followed by the message. :class:`OneLineArgumentParser` prints only
the message, so that the error is the one line a user (or a sweep's log) sees; ``--help`` is
unchanged. The entry points build their parsers with it: ``per_core.train``, ``analysis.plot`` and
``analysis.bounds``.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

__all__ = ["OneLineArgumentParser"]


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
