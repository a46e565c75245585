"""Evaluation of generated samples against data: distributions, spectra, features and memorisation.

Functions take batches ``(N, C, *spatial)`` (numpy or torch) in physical units, with 1-3 spatial
dims; the registered metrics in :mod:`sciddpm.components.sample_metrics` wrap them.
"""

from sciddpm.evaluation.conditional import condition_agreement
from sciddpm.evaluation.distributions import channel_wasserstein, histogram_overlap, sliced_wasserstein
from sciddpm.evaluation.features import as_batch, encoder_features, pooled_features
from sciddpm.evaluation.frechet import frechet_distance, kernel_distance
from sciddpm.evaluation.memorization import MemorizationReport, memorization
from sciddpm.evaluation.neighbours import precision_recall_density_coverage
from sciddpm.evaluation.spectra import radial_power_spectrum, spectrum_distance

__all__ = [
    "MemorizationReport",
    "as_batch",
    "channel_wasserstein",
    "condition_agreement",
    "encoder_features",
    "frechet_distance",
    "histogram_overlap",
    "kernel_distance",
    "memorization",
    "pooled_features",
    "precision_recall_density_coverage",
    "radial_power_spectrum",
    "sliced_wasserstein",
    "spectrum_distance",
]
