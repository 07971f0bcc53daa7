"""The progress-bar class of the trainer and the analysis tables.

``tqdm.auto`` picks notebook widgets inside Jupyter, but where ipywidgets is missing it prints a
``TqdmWarning: IProgress not found`` into the notebook (on import, even when every bar is disabled)
before falling back to text bars. Here the widget bars are used only where ipywidgets is installed;
text bars otherwise, without the warning.
"""

from __future__ import annotations

import importlib.util


def _have_widgets() -> bool:
    try:
        return importlib.util.find_spec("ipywidgets") is not None
    except ValueError:  # a stub module without __spec__ in sys.modules
        return False


if _have_widgets():
    from tqdm.auto import tqdm
else:
    from tqdm.std import tqdm

__all__ = ["tqdm"]
