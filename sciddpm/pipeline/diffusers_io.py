"""``Pipeline.from_diffusers`` and ``Pipeline.to_diffusers``: the pipeline's side of the diffusers bridge.

A mixin, so the pipeline module keeps to composition and sampling; the reading, renaming and
writing live in :mod:`sciddpm.bridge`. Where a diffusers U-Net is sciddpm's own ``unet`` in
another layout (``UNet2DModel`` with ``scale_shift`` embeddings, as :meth:`to_diffusers` writes
it), it comes back as that ``unet``, so sciddpm -> diffusers -> sciddpm restores the same network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

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
        from sciddpm.bridge.export import NULL_CLASS
        from sciddpm.bridge.files import MODEL_CONFIG, read_json, read_weights
        from sciddpm.bridge.keys import from_diffusers as renamed
        from sciddpm.bridge.unet import shift_rotation, unet_links

        config, data_shape, classes = pipeline_config(path, data_range, native=True)
        pipe = cls.from_config(config, data_shape=data_shape, num_classes=classes, fit=False)  # type: ignore[attr-defined]
        if config["encoder"]["type"] == "vae":
            pipe.encoder.load_weights(config["encoder"]["weights"])
        if config["denoiser"]["type"] == "unet":
            tensors = read_weights(Path(path) / "unet")
            table = tensors.pop("class_embedding.weight", None)
            state = pipe.denoiser.state_dict()
            state.update(renamed(unet_links(pipe.denoiser), tensors, state, f"the unet in {str(path)!r}"))
            if not config["scheduler"].get("discrete_betas"):
                # A continuous-time sciddpm model exported with the +1 shift folded in: unfold it.
                w = state["noise_mlp.0.weight"].double()
                state["noise_mlp.0.weight"] = (w @ shift_rotation(w.shape[1]).T).float()
            if table is not None:  # the class vectors are the table's rows: vector_proj is the identity
                state["vector_proj.weight"] = torch.eye(len(state["vector_proj.bias"]))
                state["vector_proj.bias"] = torch.zeros_like(state["vector_proj.bias"])
                null = read_json(Path(path) / "unet" / MODEL_CONFIG, "the unet").get(NULL_CLASS)
                with torch.no_grad():
                    pipe.conditioner.embedding.weight[: len(table)] = table
                    pipe.conditioner.embedding.weight[len(table) :] = torch.tensor(null) if null else 0.0
            pipe.denoiser.load_state_dict(state)
            pipe.ema.load_state_dict(pipe.trainable.state_dict())
        return pipe.eval()

    def to_diffusers(self, path: str | Path, sampler: str | None = None, use_ema: bool = True) -> Path:
        """Write this pipeline as a diffusers pipeline folder; see :func:`sciddpm.bridge.export.to_diffusers`.

        Raises ValueError listing every part without a diffusers counterpart (3-D data, circular
        padding, climate conditioning, EDM or flow processes, ...), FileExistsError for a folder
        that already holds a pipeline.
        """
        from sciddpm.bridge.export import to_diffusers

        return to_diffusers(self, path, sampler, use_ema)
