"""Sizing components from the data: the config fields the data and conditioner determine, checked.

``Pipeline.from_config`` and the plugin conformance kit fill in channel counts, spatial dims and
conditioning widths with :func:`complete_spec`, and check the denoiser against the encoder's
output with :func:`check_denoiser`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sciddpm.config import ComponentSpec, ConfigError
from sciddpm.interfaces import Denoiser
from sciddpm.registry import Registry

__all__ = ["check_denoiser", "complete_spec"]


def complete_spec(
    registry: Registry, kind: str, spec: ComponentSpec, wanted: Mapping[str, Any]
) -> ComponentSpec:
    """``spec`` with the config fields the data determines (``wanted``) set, where the component has them.

    A field left unset (None or 0) takes the wanted value; one set to the same value is kept.
    Raises ConfigError naming the field when the user set it to a value that contradicts the data.
    """
    entry = registry.get(kind, spec.type)
    fields = entry.config_class().model_fields
    params = spec.params
    for name, value in wanted.items():
        if name not in fields or value is None:
            continue
        current = params.get(name, fields[name].default)
        if current in (None, 0) or current == value:
            params[name] = value
        elif value not in (None, 0):
            raise ConfigError(
                [
                    (
                        f"pipeline.{kind}.{name}",
                        f"is {current!r} but the data/conditioner gives {value!r}; "
                        "remove the field to let the pipeline fill it in",
                    )
                ]
            )
    return ComponentSpec(type=spec.type, **params)


def check_denoiser(denoiser: Denoiser, latent: tuple[int, ...]) -> None:
    """Raise ValueError unless ``denoiser`` takes the encoder's ``latent`` shape (channels, spatial dims)."""
    dims = getattr(denoiser, "spatial_dims", len(latent) - 1)
    channels = getattr(denoiser, "in_channels", latent[0])
    if dims != len(latent) - 1 or channels != latent[0]:
        raise ValueError(
            f"denoiser expects {channels} channels and {dims} spatial dims, but the encoder produces "
            f"samples of shape {latent} ({latent[0]} channels, {len(latent) - 1} spatial dims)"
        )
