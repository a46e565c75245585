"""A diffusers pipeline folder (``model_index.json``) as a sciddpm :class:`~sciddpm.pipeline.Pipeline`.

:func:`pipeline_config` reads the folder into the pipeline config that rebuilds it — the ``range``
or ``vae`` encoder, the ``diffusers_unet`` denoiser, the ``none`` or ``class_label`` conditioner and
the scheduler that reproduces diffusers' process (:func:`~sciddpm.bridge.schedulers.scheduler_spec`)
— which ``Pipeline.from_diffusers`` builds with the pretrained weights in place, ready to sample or
to train further. Unconditional and class-conditional U-Net pipelines (``DDPMPipeline``,
``DDIMPipeline``, their latent versions with an ``AutoencoderKL``) are read; text-conditioned ones
are refused with what to do instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sciddpm.bridge.files import MODEL_CONFIG, read_json
from sciddpm.bridge.schedulers import scheduler_spec
from sciddpm.bridge.unet import native_fields, original_class_width, time_embedding_width
from sciddpm.bridge.vae import vae_fields

__all__ = ["pipeline_config"]

INDEX = "model_index.json"
SCHEDULER_CONFIG = "scheduler_config.json"
UNETS = ("UNet2DModel", "UNet2DConditionModel")


def _part(index: dict[str, Any], name: str) -> str | None:
    """The diffusers class of component ``name`` in ``model_index.json`` (None when absent)."""
    entry = index.get(name)
    if isinstance(entry, list) and len(entry) == 2 and entry[1] is not None:
        return str(entry[1])
    return None


def pipeline_config(
    path: str | Path, data_range: tuple[float, float] | None = None, native: bool | str = False
) -> tuple[dict[str, Any], tuple[int, ...], int | None]:
    """``(pipeline config, data_shape, num_classes)`` of the diffusers pipeline folder ``path``.

    ``data_range`` is the physical ``(lo, hi)`` the model sees as ``(-1, 1)`` (None: the range a
    sciddpm export recorded in ``model_index.json``, else ``(0, 1)``). The denoiser is a
    ``diffusers_unet`` naming the folder, or with ``native`` and a U-Net sciddpm's ``unet``
    computes (:func:`~sciddpm.bridge.unet.native_fields`, T = 1000) that ``unet``, whose weights
    the caller loads; ``native="originals"`` also sizes a class conditioner as a sciddpm export's
    originals need (:func:`~sciddpm.bridge.unet.read_native`). Raises
    FileNotFoundError for a missing ``model_index.json`` or component folder, ValueError for a
    pipeline sciddpm cannot assemble (naming the component and what to do).
    """
    path = Path(path).resolve()  # run files and stored configs name it from anywhere
    index = read_json(path / INDEX, f"the diffusers pipeline {str(path)!r}")
    if data_range is None:
        data_range = tuple(index.get("_sciddpm_data_range") or (0.0, 1.0))  # type: ignore[assignment]
    unet_cls = _part(index, "unet")
    if unet_cls not in UNETS:
        found = sorted(k for k in index if not k.startswith("_"))
        raise ValueError(
            f"{str(path)!r} has no U-Net (components: {found}); sciddpm assembles pipelines around a "
            f"{' or '.join(UNETS)}"
        )
    if unet_cls == "UNet2DConditionModel" or _part(index, "text_encoder"):
        raise ValueError(
            f"{str(path)!r} is text-conditioned: build a pipeline with the 'clip' conditioner and "
            f"{{type = 'diffusers_unet', weights = '{path / 'unet'}'}} as the denoiser instead"
        )
    vae_key = "vae" if _part(index, "vae") else "vqvae"
    vae_cls = _part(index, vae_key)
    if vae_cls not in (None, "AutoencoderKL"):
        raise ValueError(f"{str(path)!r} has a {vae_cls}; sciddpm reads only an AutoencoderKL as its vae")
    unet_cfg = read_json(path / "unet" / MODEL_CONFIG, "the pipeline's unet")
    spec, prediction = scheduler_spec(
        read_json(path / "scheduler" / SCHEDULER_CONFIG, "the pipeline's scheduler")
    )

    size = unet_cfg.get("sample_size", 32)
    spatial = [int(size)] * 2 if isinstance(size, int) else [int(s) for s in size]
    if vae_cls is None:
        encoder: dict[str, Any] = {"type": "range", "data_range": list(data_range)}
        channels = int(unet_cfg.get("in_channels", 3))
    else:
        fields = vae_fields(path / vae_key)
        encoder = {"type": "vae", "weights": str(path / vae_key), "data_range": list(data_range)}
        channels = fields["in_channels"]
        spatial = [s * 2 ** (len(fields["channels"]) - 1) for s in spatial]
    classes = unet_cfg.get("num_class_embeds") if unet_cfg.get("class_embed_type") is None else None
    if unet_cfg.get("class_embed_type") is not None:
        raise ValueError(
            f"the unet in {str(path)!r} has class_embed_type={unet_cfg['class_embed_type']!r}; sciddpm reads "
            "class-conditional U-Nets with a plain class embedding table only"
        )
    conditioner: dict[str, Any] = {"type": "none"}
    if classes:
        conditioner = {
            "type": "class_label",
            "num_classes": int(classes),
            "dim": time_embedding_width(unet_cfg),
        }
    denoiser: dict[str, Any] = {
        "type": "diffusers_unet",
        "weights": str(path / "unet"),
        "prediction": prediction,
        "train_steps": spec["train_steps"],
    }
    fields, _ = native_fields(unet_cfg)
    if native and fields is not None and spec["train_steps"] == 1000:
        denoiser = {"type": "unet", **fields, "prediction": prediction}
        if classes and native == "originals":  # the class vectors' own width, as exported
            dim = original_class_width(path / "unet")
            conditioner["dim"] = dim or conditioner["dim"]
    elif not spec.get("discrete_betas", False):
        raise ValueError(
            f"{str(path)!r} holds a sciddpm model trained on the continuous-time schedule, which only "
            "sciddpm's own unet (Pipeline.from_diffusers) runs; diffusers_unet needs discrete betas"
        )
    config = {"encoder": encoder, "denoiser": denoiser, "conditioner": conditioner, "scheduler": spec}
    return config, (channels, *spatial), int(classes) if classes else None
