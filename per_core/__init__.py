"""per_core: the PER regularizer, its baselines, the paper's models, data and a trainer.

The PER math is in :mod:`per_core.per`; rows of a layer's output in :mod:`per_core.samples`;
the hooks that attach it to layers in :mod:`per_core.regularizer`.
"""

from per_core.per import folded_normal_mean, per_grad, per_loss, sample_slices
from per_core.regularizer import PER
from per_core.samples import as_samples, from_samples

__all__ = ["PER", "as_samples", "folded_normal_mean", "from_samples", "per_grad", "per_loss", "sample_slices"]
__version__ = "0.1.0"
