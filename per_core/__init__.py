"""per_core: the PER regularizer, its baselines, the paper's models, data and a trainer.

The PER math is in :mod:`per_core.per`.
"""

from per_core.per import PER, as_samples, folded_normal_mean, from_samples, per_grad, per_loss, sample_slices

__all__ = ["PER", "as_samples", "folded_normal_mean", "from_samples", "per_grad", "per_loss", "sample_slices"]
__version__ = "0.1.0"
