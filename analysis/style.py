"""One look for every figure: the same method always has the same colour."""

from __future__ import annotations

import matplotlib as mpl

__all__ = ["METHOD_COLORS", "method_color", "use_style"]

#: Fixed colours (colour-blind safe Okabe-Ito palette) per method.
METHOD_COLORS: dict[str, str] = {
    "vanilla": "#000000",
    "bn": "#0072B2",
    "per": "#D55E00",
    "vcl": "#009E73",
    "dbn": "#56B4E9",
    "rbn": "#CC79A7",
    "l1": "#E69F00",
    "l2": "#F0E442",
}
_EXTRA = ["#999999", "#882255", "#44AA99", "#117733", "#332288", "#AA4499"]


def method_color(method: str) -> str:
    """The colour of ``method``; unknown methods get a stable colour from their name."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    return _EXTRA[sum(map(ord, method)) % len(_EXTRA)]


def use_style() -> None:
    """Readable defaults for every figure of the toolkit (light grid, no top/right spines)."""
    mpl.rcParams.update(
        {
            "figure.dpi": 100,
            "savefig.dpi": 130,
            "savefig.bbox": "tight",
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "font.size": 9,
            "axes.titlesize": 10,
            "legend.frameon": False,
        }
    )
