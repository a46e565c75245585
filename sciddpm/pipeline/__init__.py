"""The pipeline: the four components composed, sampled, saved and loaded.

- :mod:`~sciddpm.pipeline.pipeline`: :class:`~sciddpm.pipeline.pipeline.Pipeline` and the helpers
  it sizes components with;
- :mod:`~sciddpm.pipeline.sizing`: the config fields the data determines, checked;
- :mod:`~sciddpm.pipeline.schedules`: the fitted sampling schedules kept and saved with a pipeline;
- :mod:`~sciddpm.pipeline.card`: the model card written beside every saved pipeline.
"""

from sciddpm.pipeline.card import model_card
from sciddpm.pipeline.pipeline import Pipeline, complete_spec, estimate_sigma_data, is_per_sample

__all__ = ["Pipeline", "complete_spec", "estimate_sigma_data", "is_per_sample", "model_card"]
