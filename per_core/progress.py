"""The progress-bar class of the trainer and the analysis tables, and whether this process is a notebook kernel.

``tqdm.auto`` picks notebook widgets inside Jupyter, but where ipywidgets is missing it prints a
``TqdmWarning: IProgress not found`` into the notebook (on import, even when every bar is disabled)
before falling back to text bars. Here the widget bars are used only in a kernel where ipywidgets
imports; text bars otherwise, without the warning (and without importing ipywidgets outside a kernel).
"""

from __future__ import annotations

import sys

__all__ = ["in_kernel", "tqdm"]


def in_kernel() -> bool:
    """Whether this process is a Jupyter kernel (not merely one that imported ipykernel, as nbclient does)."""
    get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)
    try:
        shell = get_ipython() if callable(get_ipython) else None
        return getattr(shell, "kernel", None) is not None
    except Exception:  # a stub or half-imported IPython: no kernel to draw into
        return False


def _widget_bars() -> bool:
    """In a kernel, whether ipywidgets imports (installed and not broken)."""
    if not in_kernel():
        return False
    try:
        import ipywidgets  # noqa: F401
    except Exception:  # missing, or broken on import: text bars
        return False
    return True


if _widget_bars():
    from tqdm.auto import tqdm
else:
    from tqdm.std import tqdm
