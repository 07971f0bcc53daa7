r"""Figures from run directories: Figure 2, SW1 curves, ridgelines, metrics; ``python -m analysis.plot``.

Every function takes a :class:`analysis.io.RunData` (from :func:`analysis.io.load_run`) and returns a
matplotlib Figure (nothing is shown). The same method has the same colour in every figure
(:func:`analysis.style.method_color`).

- :func:`figure2`: the paper's Figure 2 for chosen units of chosen layers: per method, the unit's
  distribution over epochs as quantile bands (from the recorded histogram, :func:`~analysis.quantiles.hist_quantiles`),
  then its mean and variance over epochs with every method overlaid (variance clipped at 5).
- :func:`sw1_curves`: per layer, :math:`SW_1` to :math:`\mathcal{N}(0, I)` (exact per slice, on the
  reservoir of joint rows) over epochs, with the bound :math:`L_{per}` on the same slices dashed, and
  the epochs where the activations collapsed (bound small because the activations spread little).
- :func:`ridgeline`: the unit's histogram over epochs, one panel per method.
- :func:`metrics_curves`: validation error (or perplexity), training loss and the PER penalty.

Several runs of one method (seeds, lambdas): Figure 2's bands and the ridgelines show the *first*
run of each method (runs sorted by label), titled with that run's label (and lambda) and drawn in
that run's shade; the curves (mean, variance, SW1, metrics) show every run. Shades: one hue per
method, its lambdas from lightest (smallest) to the method's full colour (largest); further seeds of
one lambda thinner and fainter. The figure notes spell this out.

Layers are ordered by depth within each run (each run's order merged), never by first appearance
across runs. Epochs where a layer recorded NaN or infinite values (left out of the histograms,
moments and reservoirs by the recorder), and epochs where a run logged a non-finite metric, are
marked with a red diamond on the x axis and named in the figure notes (and on the command line).

Runs that recorded different layers: the default layers are chosen among the layers every run
recorded (an error names each run's layers when there is none in common); a chosen layer only some
runs recorded is drawn from those runs, and the command line says in one ``note:`` line per run
which layers it lacks.

Command line::

    python -m analysis.plot RUN_DIR [RUN_DIR ...] [--layers L ...] [--units U ...] [--split eval|train]
                            [--out DIR] [--format png|pdf] [--skip-bad] [--debug]

A path is a run directory or a sweep of them; all runs found under all paths are compared. The
figures go to ``PATH/figures/``; for several paths to ``figures/`` in their common parent, or, when
that parent holds other runs too (a selection from a sweep, ``demo/per demo/bn``), to
``figures/<selection>/`` there (``figures/bn+per/``), so that the sweep's own figures are kept. Each
written path is printed on its own line (the folder's rules are in :mod:`analysis.figdir`). The
folder's manifest (:data:`MANIFEST`) lists the files a call wrote with a hash of their bytes; the
next call into the folder removes those of them it does not write again (in its format) and that
nobody changed since, never any other file, and says when it replaces a file of its names that no
earlier call wrote as it is; a second call into a folder while one writes there is refused
(:func:`analysis.figdir.folder_lock`). Paths that share no folder below ``/`` or the home folder, or a
selection whose folder name would exceed 100 characters, need ``--out``. User errors (not a run
directory, no activations, unknown layer, unit or split, damaged file, an output folder that is a
file) exit with status 2 and a one-line message.

Cost: :func:`analysis.io.load_run` reads every activation file once; the figures then decompress
only the members they draw (the histograms of the chosen layers, the reservoirs of the reservoir
epochs), so the time grows linearly with epochs x layers. What is drawn is computed in
:mod:`analysis.plotdata` (:func:`unit_evolution` and :func:`sw1_table` give it as tables); where the
files go, in :mod:`analysis.figdir`.

References
----------
.. [1] Joo, T., Kang, D., Kim, B. "Regularizing activations in neural networks via
   distribution matching with the Wasserstein metric", ICLR 2020, arXiv:2002.05366 (Figure 2).
.. [2] Bonneel, N., Rabin, J., Peyré, G., Pfister, H. "Sliced and Radon Wasserstein
   barycenters of measures", J. Math. Imaging Vis. 51 (2015).
"""

from __future__ import annotations

import math
import numbers
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from analysis.bounds import (
    COLLAPSE_STD,
    LPER_AT_GAUSSIAN,
    LPER_FLOOR,
    _add_slice_options,
    _check_slice_options,
)
from analysis.distances import GAUSSIAN_SAMPLE_W1
from analysis.figdir import (
    MANIFEST,
    check_out,
    claimed,
    default_out,
    folder_lock,
    replace_manifest,
    save_figure,
)
from analysis.io import RunData, load_run, logged_mask, no_activations, suggest_skip_bad
from analysis.plotdata import (
    PlotError,
    _epoch_list,
    _epochs,
    _layers_by_run,
    _layers_of,
    _nonfinite_epochs,
    _nonfinite_notes,
    _quantiles_of,
    _recorded,
    _resolve_layers,
    _resolve_split,
    _resolve_units,
    _runs_by_method,
    _runs_with,
    _unit_histograms,
    _unit_moments,
    default_layers,
    sw1_table,
    unit_evolution,
)
from analysis.style import method_color, use_style
from per_core.rundir import RunDirError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "COLLAPSE_STD",
    "MANIFEST",
    "VAR_CLIP",
    "PlotError",
    "default_layers",
    "figure2",
    "main",
    "metrics_curves",
    "ridgeline",
    "sw1_curves",
    "sw1_table",
    "unit_evolution",
]

#: Figure 2's variance axis is clipped here, as in the paper; clipped points are marked.
VAR_CLIP = 5.0
_SPLIT_WORDS = {"eval": "a fixed validation batch, eval mode", "train": "training batches, train mode"}
_EXTRA_ALPHA, _GREY = 0.45, "#777777"


# --- run styles ---------------------------------------------------------------------------------


def _smoke(data: RunData, run: str) -> str:
    """The label suffix of a ``--smoke`` run (synthetic data, a few steps per epoch): ' (smoke)', else ''."""
    return " (smoke)" if bool(data.configs.get(run, {}).get("smoke")) else ""  # as per_core.sweep reads it


def _label(data: RunData, run: str) -> str:
    method = data.methods[run]
    alone = sum(m == method for m in data.methods.values()) == 1
    return (method if run == method or alone else f"{method} ({run})") + _smoke(data, run)


def _lam(data: RunData, run: str) -> float | None:
    """``run``'s lambda (its config's ``lam``) when that is a number; None otherwise (absent, or a value a
    hand-written config.json holds that is no lambda, e.g. a list or NaN: the run is then labelled without one)."""
    lam = data.configs.get(run, {}).get("lam")
    number = isinstance(lam, numbers.Real) and not isinstance(lam, bool) and math.isfinite(lam)
    return float(lam) if number else None


def _lams_of(data: RunData, method: str) -> list[float]:
    """The lambdas of ``method``'s runs (:func:`_lam`), sorted."""
    lams = {_lam(data, run) for run, m in data.methods.items() if m == method}
    return sorted(lam for lam in lams if lam is not None)


def _run_title(data: RunData, run: str, head: str = "", tail: str = "") -> str:
    """A panel title for one run: ``head``, its method, its lambda when its method's runs have
    several, " (smoke)" for a ``--smoke`` run, ``tail``; then the run on a second line when
    :func:`_label` names it."""
    method, lam = data.methods[run], _lam(data, run)
    several = len(_lams_of(data, method)) > 1
    smoke = _smoke(data, run)
    first = f"{head}{method}{f', λ = {lam:g}' if several and lam is not None else ''}{smoke}{tail}"
    return first if _label(data, run) == method + smoke else f"{first}\nrun {run}"


def _runs_note(data: RunData, runs: Sequence[str], chosen: str | None = None) -> str:
    """The figure note's sentence on several runs per method: what ``chosen`` panels show, and how
    the curves' shades map to lambdas and seeds (:func:`_line_style`); empty for one run per method."""
    groups = _runs_by_method(data, runs)
    if not any(len(rs) > 1 for rs in groups.values()):
        return ""
    text = f" {chosen}; curves: every run." if chosen else ""
    swept = {m: lams for m in groups if len(lams := _lams_of(data, m)) > 1}
    if swept:
        each = "; ".join(f"{m} {', '.join(f'{lam:g}' for lam in lams)}" for m, lams in swept.items())
        text += (
            f" Shades: one hue per method, its lambdas from lightest (smallest) to the method's full colour "
            f"(largest): {each}; further seeds of one lambda thinner and fainter."
        )
    else:
        text += " Further seeds of a method: thinner and fainter lines of its colour."
    return text


def _line_style(data: RunData, run: str) -> dict[str, Any]:
    """Colour per method, a shade per lambda; the first run of a (method, lambda) solid, further runs
    (seeds) thinner and lighter.

    When a method's runs have several lambdas (a sweep), the smallest is drawn lightest and the
    largest in the method's own colour, so a lambda sweep reads as one hue from weak to strong.
    """
    mates = _runs_by_method(data)[data.methods[run]]
    lams = _lams_of(data, data.methods[run])
    lam = _lam(data, run)
    first = next(r for r in mates if _lam(data, r) == lam) == run
    color: str | tuple[float, float, float] = method_color(data.methods[run])
    if len(lams) > 1 and lam in lams:  # 0.3 of the method's colour for the smallest lambda, all of it for the largest
        color = _tint(color, 0.3 + 0.7 * lams.index(lam) / (len(lams) - 1))
    return {
        "color": color,
        "lw": 1.6 if first else 1.0,
        "alpha": 1.0 if first else _EXTRA_ALPHA,
        "label": _label(data, run),
    }


# --- drawing helpers ----------------------------------------------------------------------------


def _pyplot():
    import matplotlib.pyplot as plt

    use_style()
    return plt


def _epoch_axis(axes: Any) -> None:
    """Integer epoch ticks on every axes of ``axes``, call after drawing: an x range narrower than
    one epoch (a single recorded epoch) is widened to one epoch either side, so that the ticks are
    whole epochs and a lone point is not at the edge. Shared axes keep their common range (every
    run's epochs)."""
    from matplotlib.ticker import MaxNLocator

    for ax in np.ravel(axes):
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        lo, hi = ax.get_xlim()
        if hi - lo < 1:  # one epoch (x range of about 0.2)
            mid = round((lo + hi) / 2)
            ax.set_xlim(mid - 1, mid + 1)


def _marker(n_points: int) -> dict[str, Any]:
    return {"marker": "o", "ms": 3} if n_points <= 12 else {}


def _bands(ax: Axes, epochs: np.ndarray, qs: np.ndarray, color: Any) -> None:
    """5-95% and 25-75% bands and the median of one unit over epochs (a box at a single epoch; the
    x range is left to the shared axis, :func:`_epoch_axis`)."""
    if len(epochs) == 1:
        x = epochs[0]
        ax.vlines(x, qs[0, 0], qs[0, 4], color=color, lw=2, alpha=0.35)
        ax.vlines(x, qs[0, 1], qs[0, 3], color=color, lw=7, alpha=0.6)
        ax.plot([x], [qs[0, 2]], "o", color="white", mec=color, ms=5)
        return
    ax.fill_between(epochs, qs[:, 0], qs[:, 4], color=color, alpha=0.18, lw=0, label="5-95%")
    ax.fill_between(epochs, qs[:, 1], qs[:, 3], color=color, alpha=0.38, lw=0, label="25-75%")
    ax.plot(epochs, qs[:, 2], color=color, lw=1.5, label="median", **_marker(len(epochs)))


def _finish(fig: Figure, legends: Sequence[tuple[list[Any], list[str], int]], note: str | None = None) -> None:
    """Tight layout below the suptitle, then legend blocks ``(handles, labels, ncol)`` and a grey
    note below the axes, placed in inches so that they never overlap (``savefig.bbox = "tight"`` of
    :func:`analysis.style.use_style` keeps them in the file)."""
    inch = 1.0 / fig.get_figheight()
    title = fig._suptitle
    if title is not None and title.get_text():  # its height kept free at the top, whatever the figure's height
        lines = title.get_text().count("\n") + 1
        height = (0.04 + lines * 1.3 * title.get_fontsize() / 72) * inch  # tight_layout pads below it
        title.set(y=1 - 0.04 * inch, va="top")
        fig.tight_layout(rect=(0, 0, 1, 1 - height))
    else:
        fig.tight_layout()
    y = 0.0
    for handles, labels, ncol in legends:
        if handles:
            fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, y), ncol=ncol, fontsize=8)
            y -= (0.19 * -(-len(handles) // ncol) + 0.08) * inch
    if note:
        fig.text(0.5, y - 0.04 * inch, note, ha="center", va="top", fontsize=7.5, color="#444444", wrap=True)


#: sw1_curves: L_per's points (SW1's are filled circles), so that the bound never looks like the distance.
_LPER_MARKER: dict[str, Any] = {"marker": "s", "mfc": "white"}
#: what sw1_curves' x means: analysis.bounds' ``collapsed`` rule, which also fires on activations small from the start
_COLLAPSED_WORDS = (
    f"x: projected std < {COLLAPSE_STD:g} and L_per < 1.128: small activations, shrunk or small from the start"
)
_NONFINITE = "#FF0000"
_NONFINITE_LABEL = "NaN/inf recorded in the layer that epoch (left out; see the note)"
_NONFINITE_UNIT_LABEL = "NaN/inf recorded in the unit that epoch (left out; see the note)"
_NARROW_LABEL = "std below the bin width that epoch (band not resolved)"


def _on_x_axis(ax: Axes, epochs: Sequence[int], **style: Any) -> None:
    """Markers on the x axis of ``ax`` at each of ``epochs`` (x: epoch; y: the bottom of the axes)."""
    if len(epochs) == 0:
        return
    from matplotlib.transforms import blended_transform_factory

    on_axis = blended_transform_factory(ax.transData, ax.transAxes)
    ax.plot(list(epochs), [0.0] * len(epochs), ls="", transform=on_axis, clip_on=False, zorder=6, **style)


def _mark_nonfinite(ax: Axes, epochs: Sequence[int], color: Any) -> None:
    """A red diamond edged in the run's ``color`` on the x axis at each of ``epochs`` (NaN/inf there)."""
    _on_x_axis(ax, epochs, marker="D", ms=5, mfc=_NONFINITE, mec=color, mew=1.2, label="_nonfinite")


def _mark_narrow(ax: Axes, epochs: Sequence[int]) -> None:
    """A grey tick on the x axis at each of ``epochs`` (the unit narrower than a bin there)."""
    _on_x_axis(ax, epochs, marker="|", ms=9, mew=1.6, color=_GREY, label="_narrow")


def _nonfinite_key() -> Any:
    """The legend key of :func:`_mark_nonfinite` (a handle cannot be shared between figures)."""
    from matplotlib.lines import Line2D

    return Line2D([], [], ls="", marker="D", ms=5, mfc=_NONFINITE, mec="k", mew=1.2)


def _tint(color: str, amount: float = 0.45) -> tuple[float, float, float]:
    """``color`` blended with white (opaque, so that overlapping ridges hide each other)."""
    from matplotlib.colors import to_rgb

    r, g, b = to_rgb(color)
    return (1 - amount * (1 - r), 1 - amount * (1 - g), 1 - amount * (1 - b))


def _split_words(split: str) -> str:
    return f"{split} split ({_SPLIT_WORDS.get(split, split)})"


# --- figures ------------------------------------------------------------------------------------


def figure2(
    data: RunData,
    layers: Sequence[str] | None = None,
    units: Sequence[int] | None = None,
    split: str | None = None,
    *,
    var_clip: float = VAR_CLIP,
) -> Figure:
    r"""The paper's Figure 2: chosen units of chosen layers over training, per method.

    One row per (layer, unit); columns (a), (b), ... one per method (its first run that recorded the
    layer; "not recorded" when none did): the unit's
    distribution over epochs as quantile bands, 5-95% (light), 25-75% (dark) and the median,
    computed from the recorded histogram by :func:`~analysis.quantiles.hist_quantiles` (resolution:
    the bin width; beyond the histogram range, drawn dotted, a normal tail with the unit's exact mean
    and variance); then (mean) and (variance) of the unit over epochs, every run overlaid in its method's colour. These
    are the exact moments of all recorded values (:func:`analysis.recorder.moments_from_sums`), not
    histogram estimates. The variance axis is clipped at ``var_clip`` (5 in the paper); clipped
    epochs are drawn as open triangles on the clip line. Dotted grey lines: mean 0 and variance 1 of
    :math:`\mathcal{N}(0, 1)`. The epoch axis is shared and covers every run's epochs.

    The note below names which runs use which bin width, the bands of units whose standard
    deviation is below the bin width at an epoch (their quantiles are not resolved: the values fill
    one or two bins), and the epochs with NaN/inf values (also marked on the x axis).

    Parameters
    ----------
    data : RunData
    layers : sequence of str, optional
        Default :func:`default_layers` of the recorded layers (layer3, layer6 of the demo net).
    units : sequence of int, optional
        Units shown for every chosen layer (default ``[0]``).
    split : {"eval", "train"}, optional
        Default ``eval`` (a fixed validation batch in eval mode) when recorded, else ``train``.
    var_clip : float
        Upper limit of the variance axis.

    Returns
    -------
    Figure
        ``len(layers) * len(units)`` rows of ``n_methods + 2`` axes.
    """
    split = _resolve_split(data, split)
    layers = _resolve_layers(data, split, layers)
    units = _resolve_units(data, split, layers, units)
    pairs = [(layer, unit) for layer in layers for unit in units]
    recorded = _runs_with(data, split)
    groups = _runs_by_method(data, recorded)
    methods = list(groups)
    plt = _pyplot()
    ncols = len(methods) + 2
    fig, axes = plt.subplots(
        len(pairs), ncols, figsize=(2.55 * ncols + 0.6, 2.35 * len(pairs) + 0.9), squeeze=False, sharex=True
    )
    widths: dict[str, list[str]] = {}  # bin width (3 digits: float32 edges) -> the runs whose bands use it
    narrow = 0  # bands with epochs where the unit is narrower than a bin
    outside = False
    by_run = _layers_by_run(data, split)
    bad = _nonfinite_epochs(data, split, layers, by_unit=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    for col, method in enumerate(methods):
        chosen: dict[str, list[int]] = {}  # run -> rows it draws: the method's first run with the row's layer
        for row, (layer, _) in enumerate(pairs):
            having = [r for r in groups[method] if layer in by_run.get(r, ())]
            if having:
                chosen.setdefault(having[0], []).append(row)
            else:
                ax = axes[row, col]
                ax.text(
                    0.5, 0.5, f"{layer} not recorded", transform=ax.transAxes, ha="center", va="center", color=_GREY
                )
        for i, (run, rows) in enumerate(chosen.items()):  # in the order of their first rows
            hists = _unit_histograms(data, run, split, [pairs[row] for row in rows])
            color = _line_style(data, run)["color"]  # the colour of this run's (method, lambda) in the curves
            title = _run_title(data, run, f"({letters[col]}) ", ": quantile bands")
            axes[0 if i == 0 else rows[0], col].set_title(title, color=method_color(method))  # full colour: legible
            for row in rows:
                ax = axes[row, col]
                layer, unit = pairs[row]
                _mark_nonfinite(ax, bad.get((run, layer, unit), []), color)
                h = hists[pairs[row]]
                if not len(h["epoch"]):
                    continue
                qs = _quantiles_of(h)
                _bands(ax, h["epoch"], qs, color)
                bin_widths = np.diff(h["edges"], axis=1).max(1)
                for w in dict.fromkeys(f"{w:.3g}" for w in bin_widths):
                    widths.setdefault(w, []).append(_label(data, run))
                with np.errstate(invalid="ignore"):
                    below = np.sqrt(h["var"]) < bin_widths  # NaN (nothing recorded): not below
                _mark_narrow(ax, h["epoch"][below])
                narrow += bool(below.any())
                drawn = qs[np.isfinite(qs)]
                lo, hi = h["edges"][:, 0].min(), h["edges"][:, -1].max()
                for edge, beyond in ((lo, (drawn < lo).any()), (hi, (drawn > hi).any())):
                    if beyond:  # a band crosses the range's edge: beyond it, a model
                        ax.axhline(edge, color=_GREY, ls=":", lw=0.8)
                        outside = True
        if not chosen:  # no run of this method recorded any chosen layer: " (smoke)" when all its runs are
            smoke = " (smoke)" if all(_smoke(data, r) for r in groups[method]) else ""
            title = f"({letters[col]}) {method}{smoke}: quantile bands"
            axes[0, col].set_title(title, color=method_color(method))
    for row in range(len(pairs)):  # one activation scale per row, so methods compare at a glance
        lims = np.array([axes[row, c].get_ylim() for c in range(len(methods))])
        for c in range(len(methods)):
            axes[row, c].set_ylim(lims[:, 0].min(), lims[:, 1].max())

    moments = _unit_moments(data, split, layers, units)
    clipped_any = False
    for row, (layer, unit) in enumerate(pairs):
        ax_m, ax_v = axes[row, -2], axes[row, -1]
        ax_m.axhline(0.0, color=_GREY, ls=":", lw=1)
        ax_v.axhline(1.0, color=_GREY, ls=":", lw=1)
        ax_v.axhline(var_clip, color=_GREY, ls="--", lw=0.8)
        for method in methods:
            for run in groups[method]:
                m = moments[(moments["run"] == run) & (moments["layer"] == layer) & (moments["unit"] == unit)]
                e, mean, var = m["epoch"].to_numpy(), m["mean"].to_numpy(), m["var"].to_numpy()
                style = _line_style(data, run)
                ax_m.plot(e, mean, **style, **_marker(len(e)))
                ax_v.plot(e, np.minimum(var, var_clip), **style, **_marker(len(e)))
                for ax in (ax_m, ax_v):
                    _mark_nonfinite(ax, bad.get((run, layer, unit), []), style["color"])
                over = var > var_clip
                if over.any():
                    clipped_any = True
                    ax_v.plot(e[over], np.full(over.sum(), var_clip), "^", mfc="white", mec=style["color"], ms=5)
        ax_v.set_ylim(0, var_clip * 1.08)
        ax_m.set_ylabel("mean")
        ax_v.set_ylabel(f"variance (clipped at {var_clip:g})")
        axes[row, 0].set_ylabel(f"{layer}, unit {unit}\nactivation value")
    axes[0, -2].set_title(f"({letters[len(methods)]}) mean")
    axes[0, -1].set_title(f"({letters[len(methods) + 1]}) variance")
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    _epoch_axis(axes)  # after drawing: the shared x range covers every run's epochs
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    runs_h, runs_l = axes[0, -2].get_legend_handles_labels()
    if clipped_any:
        runs_h.append(Line2D([], [], ls="", marker="^", mfc="white", mec="k", ms=5))
        runs_l.append(f"variance > {var_clip:g} (clipped)")
    if any(bad.get((run, *pair)) for run in recorded for pair in pairs):
        runs_h.append(_nonfinite_key())
        runs_l.append(_NONFINITE_UNIT_LABEL)
    bands_h = [Patch(color="k", alpha=0.18), Patch(color="k", alpha=0.45), Line2D([], [], color="k", lw=1.5)]
    bands_l = ["bands: 5-95% of the unit's values", "25-75%", "median"]
    if narrow:
        bands_h.append(Line2D([], [], ls="", marker="|", ms=9, mew=1.6, color=_GREY))
        bands_l.append(_NARROW_LABEL)
    what = ", ".join(f"{layer} unit {unit}" for layer, unit in pairs)
    fig.suptitle(f"Activation evolution of {what} over training, {_split_words(split)}")
    if len(widths) > 1:  # which run has which bins
        ordered = sorted(widths.items(), key=lambda item: float(item[0]))
        width = "; ".join(f"{w} ({', '.join(dict.fromkeys(runs))})" for w, runs in ordered)
    else:
        width = f"{next(iter(widths))} (resolution ±{next(iter(widths))})" if widths else "?"
    note = (
        f"Bands: quantiles interpolated within histogram bins of width {width}"
        + (
            "; beyond the histogram range (dotted grey) they follow a normal tail with the unit's exact mean and "
            "variance: exact for normal values, a model for others (about 20% off for exponential or lognormal tails)"
            if outside
            else ""
        )
        + (
            f". Grey ticks on the x axis of {narrow} band panel(s): epochs where the unit's std is below the bin "
            "width; there its values fill one or two bins, and the band's shape within them is the "
            "interpolation's, not the data's"
            if narrow
            else ""
        )
        + ". Mean and variance: exact moments of all recorded values. Dotted: N(0, 1) (mean 0, variance 1)."
        + _runs_note(data, recorded, "Bands: the first run of each method (named in its title), in its curve's shade")
        + "".join(f" {line}." for line in _nonfinite_notes(data, split, layers))
    )
    _finish(fig, [(runs_h, runs_l, min(len(runs_h), 6)), (bands_h, bands_l, 3)], note)
    return fig


def sw1_curves(
    data: RunData,
    split: str | None = None,
    layers: Sequence[str] | None = None,
    *,
    n_projections: int = 256,
    seed: int = 0,
    table: pd.DataFrame | None = None,
) -> Figure:
    r"""Per layer, :math:`SW_1` to :math:`\mathcal{N}(0, I)` over epochs next to the bound :math:`L_{per}`.

    One panel per layer with a reservoir (numbers from :func:`sw1_table`): solid, the true sliced
    distance :math:`SW_1` (exact per slice, on the reservoir rows); dashed, :math:`L_{per}` on the
    same slices, the upper bound PER minimizes (:math:`SW_1 \le L_{per}` slice by slice). It is not
    a distance: it is smallest for a point mass at 0, :math:`\sqrt{2/\pi} \approx 0.798` (dotted
    line; also the :math:`SW_1` of that point mass), and equals :math:`2/\sqrt{\pi} \approx 1.128`
    at :math:`\mathcal{N}(0, I)` itself (dash-dotted). So with a large :math:`\lambda` the
    activations shrink, :math:`L_{per}` falls towards 0.798 while the true :math:`SW_1` grows
    again; those points are marked x (``collapsed``: projected std < :data:`COLLAPSE_STD` and
    :math:`L_{per} < 1.128`, the rule of :mod:`analysis.bounds`: small activations, whether shrunk
    by a regularizer or small from the start). Where points are drawn (few epochs), SW1's are
    filled circles and L_per's hollow squares.

    Parameters
    ----------
    data : RunData
    split : {"eval", "train"}, optional
        Default ``eval`` when it has reservoir rows, else ``train``.
    layers : sequence of str, optional
        Default: every layer with a reservoir in ``split``.
    n_projections, seed : int
        The slices (as in :func:`analysis.distances.sliced_w1_to_normal`).
    table : DataFrame, optional
        A precomputed :func:`sw1_table` to draw instead of computing it.

    Returns
    -------
    Figure
        One axes per layer.
    """
    if table is None:
        table = sw1_table(data, split, layers, n_projections=n_projections, seed=seed)
    elif split is not None and len(table) and not (table["split"] == split).all():
        raise PlotError(f"the table given is of split {', '.join(map(str, table['split'].unique()))}, not {split!r}")
    if len(table) and "slices" in table:
        n_projections = int(table["slices"].iloc[0])  # what the table was computed with, shown in the note
    split = str(table["split"].iloc[0]) if len(table) else _resolve_split(data, split, reservoir=True)
    shown = [layer for layer in _layers_of(data, split) if (table["layer"] == layer).any()]
    if not shown:
        raise PlotError(f"no finite reservoir rows in split {split} of {data.root}")
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.transforms import blended_transform_factory

    ncols = min(3, len(shown))
    nrows = -(-len(shown) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols + 0.9, 2.6 * nrows + 0.8), squeeze=False, sharey=True)
    groups = _runs_by_method(data, sorted(set(table["run"])))
    bad = _nonfinite_epochs(data, split, shown)
    top = max(float(table["lper"].max()), float(table["sw1"].max()), LPER_AT_GAUSSIAN) * 1.08
    marked = False  # points drawn with markers: the legend keys show them
    for k, layer in enumerate(shown):
        ax = axes.flat[k]
        ax.axhline(LPER_FLOOR, color=_GREY, ls=":", lw=1)
        ax.axhline(LPER_AT_GAUSSIAN, color=_GREY, ls="-.", lw=1)
        for runs in groups.values():
            for run in runs:
                style = _line_style(data, run)
                _mark_nonfinite(ax, bad.get((run, layer), []), style["color"])
                t = table[(table["run"] == run) & (table["layer"] == layer)].sort_values("epoch")
                if t.empty:
                    continue
                e = t["epoch"].to_numpy()
                mk = _marker(len(e)) or ({"marker": "o", "ms": 3} if len(e) == 1 else {})
                marked = marked or bool(mk)
                ax.plot(e, t["sw1"], **style, **mk)
                bound = {**style, "label": None, "ls": "--", "lw": style["lw"] * 0.8}
                ax.plot(e, t["lper"], **bound, **({**mk, **_LPER_MARKER} if mk else {}))
                c = t["collapsed"].to_numpy(bool)
                if c.any():
                    ax.plot(e[c], t["sw1"].to_numpy()[c], "X", color=style["color"], mec="k", mew=0.6, ms=7)
        ax.set_ylim(0, top)
        ax.set_title(f"{layer}")
        if k % ncols == 0:
            ax.set_ylabel("SW1 to N(0, I); L_per dashed")
        if k >= len(shown) - ncols:
            ax.set_xlabel("epoch")
        if k % ncols == ncols - 1 or k == len(shown) - 1:  # reference values at the right of each row
            right = blended_transform_factory(ax.transAxes, ax.transData)
            for y, text in ((LPER_FLOOR, "0.798 point mass"), (LPER_AT_GAUSSIAN, "1.128 L_per at N(0, I)")):
                ax.text(1.02, y, text, transform=right, va="center", fontsize=7, color="#555555")
    _epoch_axis(axes)
    for ax in axes.flat[len(shown) :]:
        fig.delaxes(ax)
    runs_h, runs_l = [], []
    for runs in groups.values():
        for run in runs:
            s = _line_style(data, run)
            runs_h.append(Line2D([], [], color=s["color"], lw=s["lw"], alpha=s["alpha"]))
            runs_l.append(s["label"])
    keys_h = [
        Line2D([], [], color="k", lw=1.4, **({"marker": "o", "ms": 3} if marked else {})),
        Line2D([], [], color="k", lw=1.2, ls="--", **({"ms": 3, **_LPER_MARKER} if marked else {})),
        Line2D([], [], ls="", marker="X", color="#bbbbbb", mec="k", mew=0.6, ms=7),
        Line2D([], [], color=_GREY, lw=1, ls=":"),
        Line2D([], [], color=_GREY, lw=1, ls="-."),
    ]
    keys_l = [
        "SW1 to N(0, I), exact per slice",
        "L_per, same slices (bound, not a distance)",
        _COLLAPSED_WORDS,
        "0.798: L_per floor = SW1 of a point mass at 0",
        "1.128: L_per of N(0, I)",
    ]
    if bad:
        keys_h.append(_nonfinite_key())
        keys_l.append(_NONFINITE_LABEL)
    rows = sorted(set(table["rows"].astype(int)))
    m = f"{rows[0]}" if len(rows) == 1 else f"{rows[0]}-{rows[-1]}"
    fig.suptitle(
        f"SW1 to N(0, I) per layer (solid) vs the bound L_per (dashed), {_split_words(split)}\n"
        "L_per is minimized by a point mass (0.798), not by N(0, I) (1.128): a small L_per can mean small "
        "activations, where the true SW1 is large (x)"
    )
    note = (
        f"SW1 on {m} reservoir rows per layer and epoch, {n_projections} slices; an m-point sample carries a "
        f"finite-sample bias of about {GAUSSIAN_SAMPLE_W1:.2f}/sqrt(m) per slice (a Gaussian sample scores "
        f"~{GAUSSIAN_SAMPLE_W1 / np.sqrt(rows[0]):.2f} here): compare at "
        "equal m. SW1 = 0 is N(0, I) exactly. x marks small activations whether shrunk by a regularizer (the "
        "lambda trap: an x after epochs without one) or small from the start (an x from the first epoch on)."
        + _runs_note(data, sorted(set(table["run"])))
        + "".join(f" {line}." for line in _nonfinite_notes(data, split, shown))
    )
    _finish(fig, [(runs_h, runs_l, min(len(runs_h), 6)), (keys_h, keys_l, 3)], note)
    return fig


def ridgeline(data: RunData, layer: str, unit: int = 0, split: str | None = None, *, max_ridges: int = 20) -> Figure:
    r"""The unit's histogram over epochs as a ridgeline, one panel per method (its first run with ``layer``,
    titled with that run's label and lambda, in the colour of its curves elsewhere).

    Each ridge is the histogram density :math:`c_k / (N \Delta_k)` of one recorded epoch, scaled to
    its own peak (the shape, not the height, is compared), stacked upwards by epoch. At most
    ``max_ridges`` evenly spaced epochs are drawn (always the first and the last). Values outside
    the histogram range are not drawn; their share is given in the panel title when non-zero.

    Returns
    -------
    Figure
        One axes per method that recorded ``layer`` (methods without it have no panel).
    """
    split = _resolve_split(data, split)
    layer = _resolve_layers(data, split, [layer])[0]
    unit = _resolve_units(data, split, [layer], [unit])[0]
    groups = _runs_by_method(data, _runs_with(data, split, layers=[layer]))  # methods without the layer: no panel
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(groups), figsize=(3.1 * len(groups) + 0.5, 4.6), squeeze=False, sharex=True, sharey=False
    )
    lo, hi = np.inf, -np.inf
    for ax, runs in zip(axes[0], groups.values(), strict=True):
        epochs = _epochs(data, runs[0], split, [layer])
        if len(epochs) > max_ridges:
            epochs = sorted({epochs[round(i)] for i in np.linspace(0, len(epochs) - 1, max_ridges)})
        h = _unit_histograms(data, runs[0], split, [(layer, unit)], epochs)[(layer, unit)]
        color = _line_style(data, runs[0])["color"]  # the colour of this run's (method, lambda) in the curves
        fill = _tint(color)
        inside = h["counts"].sum(1)
        for k in range(len(h["epoch"]) - 1, -1, -1):  # top ridge first; lower ridges are drawn over it
            edges, counts = h["edges"][k], h["counts"][k]
            if inside[k] == 0:
                continue
            nz = np.nonzero(counts)[0]
            a, b = nz[0], nz[-1] + 1  # the ridge spans its non-empty bins
            density = counts[a:b] / (inside[k] * np.diff(edges[a : b + 1]))
            y = 1.5 * density / density.max()  # peak 1.5 ridge spacings: neighbours overlap a little
            x, top = edges[a : b + 1], k + np.append(y, y[-1])
            z = 2 * (len(h["epoch"]) - k)
            ax.fill_between(x, k, top, step="post", color=fill, lw=0, zorder=z)
            ax.step(x, top, where="post", color=color, lw=0.8, zorder=z + 1)
            ax.plot([x[0], x[0]], [k, top[0]], color=color, lw=0.8, zorder=z + 1)
            ax.plot([x[-1], x[-1]], [k, top[-1]], color=color, lw=0.8, zorder=z + 1)
            lo, hi = min(lo, x[0]), max(hi, x[-1])
        ticks = np.arange(len(h["epoch"]))
        step = max(1, len(ticks) // 8)
        ax.set_yticks(ticks[::step], [str(e) for e in h["epoch"][::step]])
        ax.set_ylim(-0.2, len(ticks) + 0.8)
        ax.axvline(0.0, color=_GREY, ls=":", lw=1, zorder=0)
        total = h["counts"].sum() + h["under"].sum() + h["over"].sum()
        share = (h["under"].sum() + h["over"].sum()) / total if total else 0.0
        outside = f" ({share:.1%} outside the histogram range)" if share > 0 else ""
        ax.set_title(_run_title(data, runs[0], tail=outside), color=method_color(data.methods[runs[0]]))
        ax.set_xlabel("activation value")
        ax.grid(axis="y", alpha=0)
    axes[0, 0].set_ylabel("epoch")
    if np.isfinite(lo):
        pad = 0.05 * (hi - lo)
        axes[0, 0].set_xlim(lo - pad, hi + pad)
    fig.suptitle(
        f"Histogram of {layer} unit {unit} over epochs, {_split_words(split)}\n"
        "each ridge scaled to its own peak; bins as recorded"
    )
    _finish(fig, [])
    return fig


def metrics_curves(data: RunData) -> Figure:
    r"""Validation metrics, training loss and the PER penalty over epochs, every run.

    One panel per validation metric a run logged: perplexity (language models) and error (classifiers)
    each get one, so a folder of both kinds loses neither; validation loss only when some run logged
    neither. The PER penalty is :math:`L_{per}` of the regularized layers as logged by the trainer
    (measured for every method), an upper bound of :math:`SW_1`, with its floor 0.798 (point mass)
    and its value 1.128 at :math:`\mathcal{N}(0, I)` marked. Epochs where a run logged a NaN or
    infinite value (a run that diverged) are marked on the x axis instead of being left as a silent gap.

    Returns
    -------
    Figure
        One axes per metric found in ``metrics.jsonl`` (at most four).
    """
    m, present = data.metrics, data.logged()  # present: the line of metrics.jsonl holds the key
    if m.empty or "epoch" not in m:
        raise PlotError(f"no metrics recorded in {data.root}")

    def logged(col: str, runs: Sequence[str] | None = None) -> bool:
        rows = present if runs is None else present[m["run"].isin(list(runs))]
        return col in rows and bool(rows[col].any())

    vals = [c for c in ("val_ppl", "val_error") if logged(c)]
    without = [r for r in data.runs_list if not any(logged(c, [r]) for c in vals)]
    if logged("val_loss", without):
        vals.append("val_loss")
    panels = [*vals, *(c for c in ("train_loss", "per_penalty") if logged(c))]
    if not panels:
        raise PlotError(f"no val_error/val_ppl, train_loss or per_penalty in the metrics of {data.root}")
    names = {
        "val_error": "validation error (%)",
        "val_ppl": "validation perplexity",
        "val_loss": "validation loss",
        "train_loss": "training loss",
        "per_penalty": "PER penalty: L_per (a bound, not a distance)",
    }
    units = {"val_error": "error (%)", "val_ppl": "perplexity", "val_loss": "loss", "train_loss": "loss"}
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 0.4, 3.2), squeeze=False)
    nonfinite: list[str] = []
    for ax, col in zip(axes[0], panels, strict=True):
        for runs in _runs_by_method(data).values():
            for run in runs:
                r = m[(m["run"] == run) & present[col]].sort_values("epoch")  # the epochs that logged col
                if r.empty:
                    continue  # never logged by this run (a task of another metric)
                values = r[col].to_numpy(np.float64)
                finite = np.isfinite(values)
                style = _line_style(data, run)
                ax.plot(r["epoch"][finite], values[finite], **style, **_marker(int(finite.sum())))
                if not finite.all():  # NaN or inf logged: the run diverged there
                    _mark_nonfinite(ax, r["epoch"][~finite].tolist(), style["color"])
                    epochs = _epoch_list(r["epoch"][~finite])
                    nonfinite.append(f"run {run} logged a non-finite {col} at {epochs}")
        finite_values = m[col][np.isfinite(m[col].to_numpy(np.float64))]
        # log scale for a decade or more (an error falling from 90 % to 2 %); over less, its ticks read 5.4x10^1
        if col != "per_penalty" and (finite_values > 0).all() and finite_values.max() >= 10 * finite_values.min():
            ax.set_yscale("log")
        if col == "per_penalty":
            ax.axhline(LPER_FLOOR, color=_GREY, ls=":", lw=1, label="0.798: floor (point mass)")
            ax.axhline(LPER_AT_GAUSSIAN, color=_GREY, ls="-.", lw=1, label="1.128: at N(0, I)")
        ax.set(title=names.get(col, col), xlabel="epoch", ylabel=units.get(col, "L_per"))
    _epoch_axis(axes)
    handles, labels = [], []
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    if nonfinite:
        handles.append(_nonfinite_key())
        labels.append("NaN/inf logged that epoch (see the note)")
    fig.suptitle("Training metrics per run")
    note = "; ".join(nonfinite) + "." if nonfinite else ""
    _finish(fig, [(handles, labels, min(len(handles), 6))], (note + _runs_note(data, data.runs_list)).strip() or None)
    return fig


# --- command line -------------------------------------------------------------------------------


def _load(paths: Sequence[str | os.PathLike[str]], skip_bad: bool) -> RunData:
    """One RunData for all runs under ``paths``; runs are labelled by their path below the common parent."""
    first: dict[Path, str | os.PathLike[str]] = {}
    for p in paths:  # each folder once (as first named): the same run twice is not two runs
        first.setdefault(Path(p).resolve(), p)
    paths = list(first.values())
    if len(paths) == 1:
        return load_run(paths[0], skip_bad=skip_bad)
    loaded = [load_run(p, skip_bad=skip_bad) for p in paths]
    roots = [rd.root.resolve() for d in loaded for rd in d.runs.values()]
    common = Path(os.path.commonpath([str(p.resolve()) for p in map(Path, paths)]))
    if common in roots:  # one path is a run inside another: label from one level up
        common = common.parent
    runs, methods, configs, skipped, ignored = {}, {}, {}, [], []
    stats, metrics, index, logged = [], [], [], []
    for d in loaded:
        skipped += d.skipped
        ignored += d.ignored
        rename = {}
        for old, rd in d.runs.items():
            new = rd.root.resolve().relative_to(common).as_posix()
            if new not in runs:
                rename[old] = new
                runs[new], methods[new], configs[new] = rd, d.methods[old], d.configs[old]
        for frame, out in ((d.stats, stats), (d.metrics, metrics), (d.index, index)):
            keep = frame[frame["run"].isin(list(rename))]
            out.append(keep.assign(run=keep["run"].astype(str).map(rename)))
        logged.append(d.metrics_logged[d.metrics["run"].isin(list(rename))])
    metrics_frame = pd.concat(metrics, ignore_index=True)
    if not any(Path(p).is_absolute() for p in paths):  # printed paths read as the user wrote them, as for one run
        typed = Path(os.path.commonpath([os.path.abspath(p) for p in paths]))  # through their symlinks, if any
        common = Path(os.path.relpath(typed if typed.is_dir() and typed.samefile(common) else common))
    return RunData(
        root=common,
        runs=runs,
        methods=methods,
        configs=configs,
        stats=pd.concat(stats, ignore_index=True),
        metrics=metrics_frame,
        index=pd.concat(index, ignore_index=True),
        skipped=skipped,
        metrics_logged=logged_mask(logged, metrics_frame),
        ignored=ignored,
    )


def _coverage_notes(data: RunData, split: str) -> list[str]:
    """One line per run with activations that lacks ``split`` or some of its layers: what it is left out of."""
    everything = _layers_of(data, split)
    by_run = _layers_by_run(data, split)
    notes = []
    for run in data.runs_list:
        recorded = data.index[data.index["run"] == run]
        if recorded.empty:
            continue  # noted already: no activations at all
        if run not in by_run:
            there = ", ".join(dict.fromkeys(recorded["split"].astype(str)))
            notes.append(f"run {run} recorded no activations in split {split} (it has {there}): not in the figures")
            continue
        missing = [layer for layer in everything if layer not in by_run[run]]
        if missing:
            notes.append(
                f"run {run} did not record {', '.join(missing)} in split {split} "
                f"(it recorded {', '.join(by_run[run])}): left out of those layers' panels"
            )
        gaps = _missing_epochs(data, run, set(recorded.loc[recorded["split"] == split, "epoch"].astype(int)))
        if gaps:
            notes.append(
                f"run {run} has no activations of epoch {', '.join(map(str, gaps))} in split {split} (its config "
                f"records every {data.configs[run]['record_every']} epochs; a file missing or skipped): "
                "its curves join the epochs on either side"
            )
    return notes


def _unfinished_notes(data: RunData) -> list[str]:
    """One line per run whose metrics end before the epochs its config asks for (still training, or stopped)."""
    notes = []
    for run in data.runs_list:
        planned = data.configs.get(run, {}).get("epochs")
        done = data.metrics.loc[data.metrics["run"] == run, "epoch"] if "epoch" in data.metrics else pd.Series()
        done = pd.to_numeric(done, errors="coerce")
        done = done[np.isfinite(done)]
        if len(done) == 0:  # no metrics (missing, or all skipped): nothing says how far it got
            continue
        last = int(done.max())
        if isinstance(planned, int) and last < planned:
            notes.append(
                f"run {run} is unfinished (epoch {last} of {planned}: still training, or stopped): its curves end there"
            )
    return notes


def _smoke_notes(data: RunData) -> list[str]:
    """One line per ``--smoke`` run, when the figures also hold runs on real data."""
    smoke = [run for run in data.runs_list if _smoke(data, run)]
    if not smoke or len(smoke) == len(data.runs_list):
        return []
    return [
        f"run {run} is a --smoke run (synthetic data, a few steps): labelled (smoke), not comparable" for run in smoke
    ]


def _missing_epochs(data: RunData, run: str, epochs: set[int]) -> list[int]:
    """Multiples of the run's ``record_every`` up to its last recorded epoch that have no activations."""
    every = data.configs.get(run, {}).get("record_every")
    if not epochs or not isinstance(every, int) or every < 1:
        return []
    return [e for e in range(every, max(epochs) + 1, every) if e not in epochs]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m analysis.plot``: write the figures of run or sweep directories; print their paths.

    Exit status 0 on success, 2 for user errors (bad path, nothing recorded, unknown layer, unit or
    split, damaged file without ``--skip-bad``, an output folder that is a file).
    """
    import matplotlib

    matplotlib.use("Agg")  # before pyplot is imported: headless

    from per_core.cli import OneLineArgumentParser, nonempty_folder, nonempty_path, run_command

    p = OneLineArgumentParser(  # usage errors: one line, exit 2
        prog="python -m analysis.plot",
        description="Figure 2 (activation evolution), SW1-vs-L_per curves, ridgelines and metrics of runs.",
        epilog=(
            "Output: PATH/figures/ for one path; for several, figures/ in their common parent, or, when that "
            "parent holds other runs too (a selection from a sweep), figures/<selection>/ there, e.g. "
            "figures/bn+per/, so the sweep's own figures are kept (paths that share no folder below / or ~, or "
            "a selection named in over 100 characters, need --out). A manifest (" + MANIFEST + ") lists the "
            "files a call wrote; the next call into the same folder removes those it does not write again (same "
            "format only) if unchanged since, never any other file, and says when it replaces a file of its "
            "names that it did not write. A second call into a folder while one writes there is refused."
        ),
    )
    p.add_argument(
        "paths", nargs="+", type=nonempty_path, metavar="RUN_DIR", help="run directories or sweep directories"
    )
    p.add_argument("--layers", nargs="+", help="layers for Figure 2 and the ridgelines (default: every third)")
    p.add_argument("--units", nargs="+", type=int, help="units of every chosen layer (default 0)")
    p.add_argument("--split", choices=("eval", "train"), help="default eval when recorded, else train")
    p.add_argument(
        "--out", type=nonempty_folder, help="output folder (default PATH/figures, or the common parent's; see below)"
    )
    p.add_argument("--format", choices=("png", "pdf"), default="png", help="file format (default png)")
    _add_slice_options(p)
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable files and say which")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    _check_slice_options(p, args)

    def body() -> int:
        layers = None if args.layers is None else [x for a in args.layers for x in a.split(",") if x]
        data = _load(args.paths, args.skip_bad)
        for msg in data.skipped:
            print(f"skipped: {msg}", file=sys.stderr)
        for msg in [*data.ignored, *_unfinished_notes(data), *_smoke_notes(data)]:
            print(f"note: {msg}", file=sys.stderr)
        out = args.out if args.out is not None else default_out(args.paths, data)
        check_out(out, args.out is not None)
        with folder_lock(out):  # two calls into one folder would mix their figures and manifests
            claimed_files, unclaimed = claimed(out)
            fmt = args.format
            written: list[Path] = []
            if data.index.empty:  # e.g. a --no-record sweep: its metrics are still worth a figure
                none = no_activations(data.root, data.skipped)
                try:
                    written.append(save_figure(metrics_curves(data), out / f"metrics.{fmt}", fmt))
                except PlotError as err:
                    raise PlotError(f"{none}; and {err}") from None
                print(f"note: {none}; only the metrics are drawn", file=sys.stderr)
                print(written[-1], flush=True)
            else:
                try:
                    _draw_all(data, layers, args, out, written)
                except BaseException:  # what was written stays on record, so that a later call can remove it
                    replace_manifest(out, written, fmt, claimed_files, finished=False)
                    raise
            for path in written:
                if path.name in unclaimed:
                    print(
                        f"note: replaced {path}, which no earlier call of this command wrote as it was",
                        file=sys.stderr,
                    )
            for path in replace_manifest(out, written, fmt, claimed_files):
                print(f"note: removed {path}: an earlier call wrote it and this one did not", file=sys.stderr)
            return 0

    return run_command(
        suggest_skip_bad(body, args.skip_bad), debug=args.debug, errors=(RunDirError, PlotError, OSError)
    )


def _draw_all(data: RunData, layers: list[str] | None, args: Any, out: Path, written: list[Path]) -> None:
    """``main``'s figures of runs with activations, appended to ``written`` as they are saved."""
    fmt = args.format
    index = _recorded(data)
    for run in data.runs_list:
        if not (index["run"] == run).any():
            print(f"note: no activations recorded in run {run}; not in the activation figures", file=sys.stderr)
    split = _resolve_split(data, args.split)
    layers = _resolve_layers(data, split, layers)
    units = _resolve_units(data, split, layers, args.units)
    for note in [*_coverage_notes(data, split), *_nonfinite_notes(data, split)]:
        print(f"note: {note}", file=sys.stderr)
    written.append(save_figure(figure2(data, layers, units, split), out / f"figure2.{fmt}", fmt))
    print(written[-1], flush=True)
    for layer in layers:
        for unit in units:
            path = out / f"ridgeline_{layer.replace('/', '_')}_unit{unit}.{fmt}"
            written.append(save_figure(ridgeline(data, layer, unit, split), path, fmt))
            print(written[-1], flush=True)

    def sw1() -> Figure:  # without --split, the split with reservoir rows (eval when it has them, else train)
        sw1_split = _resolve_split(data, args.split, reservoir=True)
        if sw1_split != split:
            print(f"note: sw1_curves shows split {sw1_split}: split {split} has no reservoir rows", file=sys.stderr)
        return sw1_curves(data, sw1_split, n_projections=args.n_projections, seed=args.seed)

    optional = (("sw1_curves", sw1), ("metrics", lambda: metrics_curves(data)))  # else a note says why not
    for name, draw in optional:
        try:
            fig = draw()
        except PlotError as err:
            print(f"note: {name} not drawn: {err}", file=sys.stderr)
            continue
        written.append(save_figure(fig, out / f"{name}.{fmt}", fmt))
        print(written[-1], flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
