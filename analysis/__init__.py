"""analysis: what normalization and regularization do to a network's activations.

- :class:`ActivationRecorder` (:mod:`analysis.recorder`): forward hooks -> per-unit histograms,
  moments, NaN/Inf counts and a reservoir of joint rows, per epoch, into a run directory.
- Distances (:mod:`analysis.distances`): exact 1-D :math:`W_1` to N(0, 1), sliced :math:`W_1` to
  N(0, I) exact per slice, and sample-to-sample distances through POT.
- Bounds (:mod:`analysis.bounds`): the Minkowski bound :math:`L_{per}` PER minimizes, and checks
  that the distance stays below it (it is a bound, not the distance).
- :func:`load_run` (:mod:`analysis.io`): run or sweep directories as tidy pandas frames.
- Figures live in :mod:`analysis.plot` and :mod:`analysis.figure1`, which this package does not
  import (matplotlib stays out of ``import analysis``).
"""

from analysis.distances import (
    max_sliced_w1,
    sliced_w1,
    sliced_w1_to_normal,
    sliced_w1_to_normal_grad,
    w1,
    w1_to_normal,
    w1_to_normal_hist,
)
from analysis.recorder import ActivationRecorder, layer_stats

__all__ = [
    "ActivationRecorder",
    "BoundReport",
    "RunData",
    "check_bounds",
    "layer_stats",
    "load_run",
    "max_sliced_w1",
    "per_bound",
    "sliced_w1",
    "sliced_w1_to_normal",
    "sliced_w1_to_normal_grad",
    "w1",
    "w1_to_normal",
    "w1_to_normal_hist",
]


_LAZY = {"load_run": "io", "RunData": "io", "per_bound": "bounds", "check_bounds": "bounds", "BoundReport": "bounds"}


def __getattr__(name: str):
    """Names loaded on first use: ``load_run`` imports pandas, and ``analysis.bounds`` is also a CLI
    (``python -m analysis.bounds``), which must not be imported by the package before it runs."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"analysis.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
