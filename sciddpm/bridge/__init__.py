"""diffusers-format models in and out of sciddpm, from local folders only (never the network).

- ``Pipeline.from_diffusers`` over :func:`~sciddpm.bridge.pipeline.pipeline_config`: a diffusers
  pipeline folder as a sciddpm pipeline that samples and trains;
- ``VAE.from_diffusers`` and ``{type = "vae", weights = "<AutoencoderKL folder>"}``: a pretrained
  ``AutoencoderKL`` as the ``vae`` encoder, same maths (:mod:`sciddpm.bridge.vae`);
- the ``diffusers_unet`` denoiser (:mod:`sciddpm.components.diffusers_unet`): a pretrained U-Net;
- :func:`~sciddpm.bridge.schedulers.scheduler_spec`: a ``scheduler_config.json`` as the sciddpm
  scheduler on the same process.
"""

from sciddpm.bridge.pipeline import pipeline_config
from sciddpm.bridge.schedulers import scheduler_spec

__all__ = ["pipeline_config", "scheduler_spec"]
