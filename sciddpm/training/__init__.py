"""Training: the shared optimisation stage, the diffusion trainer, checkpoints and distributed runs.

- :mod:`~sciddpm.training.stage`: :class:`~sciddpm.training.stage.Stage`, the optimiser loop every
  trainer shares (warm-up + cosine LR, clipping, non-finite guard, EMA, progress, resumable state);
- :mod:`~sciddpm.training.trainer`: the diffusion trainer, ``train(run, out)``;
- :mod:`~sciddpm.training.encoder`: ``train_encoder``, an autoencoder stage on its own;
- :mod:`~sciddpm.training.checkpoint`: atomic, checksummed, rotated checkpoints;
- :mod:`~sciddpm.training.distributed`: the device and the ``torchrun`` process group.

The stage and the distributed helpers import nothing of the pipeline, so components train with them.
"""

from sciddpm.training.encoder import train_encoder
from sciddpm.training.stage import EMA, NonFiniteLossError, Stage, StepResult, lr_at
from sciddpm.training.trainer import Trainer, train

__all__ = ["EMA", "NonFiniteLossError", "Stage", "StepResult", "Trainer", "lr_at", "train", "train_encoder"]
