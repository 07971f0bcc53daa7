"""The progress-bar class of the trainer and the analysis tables.

``tqdm.auto`` picks notebook widgets inside Jupyter, but where ipywidgets is missing it prints a
``TqdmWarning: IProgress not found`` into the notebook (on import, even when every bar is disabled)
before falling back to text bars. Here the widget bars are used only where ipywidgets is installed;
text bars otherwise, without the warning.
"""

from __future__ import annotations

import importlib.util


def _have_widgets() -> bool:
    """Whether ipywidgets can be imported (imported only where it is installed)."""
    try:
        if importlib.util.find_spec("ipywidgets") is None:
            return False
        import ipywidgets  # noqa: F401  (installed but broken: text bars)
    except Exception:  # a stub without __spec__ in sys.modules, or an import error
        return False
    return True


if _have_widgets():
    from tqdm.auto import tqdm
else:
    from tqdm.std import tqdm

__all__ = ["tqdm"]
