"""``Pipeline.from_diffusers`` and ``Pipeline.to_diffusers``: the pipeline's side of the diffusers bridge.

A mixin, so the pipeline module keeps to composition and sampling; the reading, renaming and
writing live in :mod:`sciddpm.bridge`. Where a diffusers U-Net is sciddpm's own ``unet`` in
another layout (``UNet2DModel`` with ``scale_shift`` embeddings, as :meth:`to_diffusers` writes
it), it comes back as that ``unet``, so sciddpm -> diffusers -> sciddpm restores the same network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["DiffusersIO"]


class DiffusersIO:
    """Reading and writing diffusers pipeline folders (mixed into :class:`~sciddpm.pipeline.Pipeline`)."""

    @classmethod
    def from_diffusers(cls, path: str | Path, data_range: tuple[float, float] | None = None) -> Any:
        """A pipeline from a local diffusers pipeline folder (``model_index.json``), weights loaded.

        ``data_range`` is the physical ``(lo, hi)`` diffusers' model sees as ``(-1, 1)``; samples
        come back in those units. None: the range a sciddpm export recorded, else ``(0, 1)``. The
        EMA copy starts as the pretrained weights. A U-Net sciddpm's
        ``unet`` computes becomes that ``unet`` (a class embedding moves to the ``class_label``
        conditioner, through an identity ``vector_proj``); any other is wrapped as ``diffusers_unet``.
        Raises as :func:`sciddpm.bridge.pipeline_config` (FileNotFoundError, ValueError naming what
        cannot be assembled), ValueError naming a tensor that does not fit, and ConfigError when
        the conditioner cannot take the U-Net's class embedding. See docs/diffusers.md.
        """
        from sciddpm.bridge import pipeline_config
        from sciddpm.bridge.unet import StaleOriginals, read_native

        for originals in (True, False):  # a sciddpm export's own tensors, unless they went stale
            config, data_shape, classes = pipeline_config(
                path, data_range, native="originals" if originals else True
            )
            pipe = cls.from_config(config, data_shape=data_shape, num_classes=classes, fit=False)  # type: ignore[attr-defined]
            if config["denoiser"]["type"] != "unet":
                break
            continuous = not config["scheduler"].get("discrete_betas")
            try:
                read_native(Path(path) / "unet", pipe.denoiser, pipe.conditioner, continuous, originals)
            except StaleOriginals:
                continue  # trained further in diffusers: its weights win
            pipe.ema.load_state_dict(pipe.trainable.state_dict())
            break
        if config["encoder"]["type"] == "vae":
            pipe.encoder.load_weights(config["encoder"]["weights"])
        return pipe.eval()

    def to_diffusers(self, path: str | Path, sampler: str | None = None, use_ema: bool = True) -> Path:
        """Write this pipeline as a diffusers pipeline folder; see :func:`sciddpm.bridge.export.to_diffusers`.

        Raises ValueError listing every part without a diffusers counterpart (3-D data, circular
        padding, climate conditioning, EDM or flow processes, ...), FileExistsError for a folder
        that already holds a pipeline.
        """
        from sciddpm.bridge.export import to_diffusers

        return to_diffusers(self, path, sampler, use_ema)
