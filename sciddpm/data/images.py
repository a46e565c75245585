"""The ``skimage`` source: random patches of an image bundled with scikit-image (no download).

Patch ``i`` is fixed by the seed; values are the image's own (uint8 read as float, or float).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sciddpm.data.checks import content_hash, to_tensor
from sciddpm.interfaces import DataSource, Sample

__all__ = ["SKIMAGE_IMAGES", "SkimagePatches", "SkimagePatchesConfig"]

#: scikit-image images that ship inside the wheel (no pooch download needed).
SKIMAGE_IMAGES: tuple[str, ...] = (
    "astronaut", "brick", "camera", "cat", "cell", "chelsea", "clock", "coffee", "coins",
    "colorwheel", "grass", "gravel", "hubble_deep_field", "immunohistochemistry",
    "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "text",
)  # fmt: skip


class SkimagePatchesConfig(BaseModel):
    """Random patches of an image bundled with scikit-image."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(
        default="cell", description=f"Name of a bundled scikit-image image: {', '.join(SKIMAGE_IMAGES)}."
    )
    patch: list[int] | int = Field(
        default=32, description="Patch size: one int for square patches or [height, width]."
    )
    count: int = Field(default=1000, ge=1, description="Number of patches (the source's length).")
    seed: int = Field(default=0, description="Seed of the patch positions; patch i is fixed given it.")

    @field_validator("image")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in SKIMAGE_IMAGES:
            raise ValueError(
                f"unknown scikit-image image {v!r}; available offline: {', '.join(SKIMAGE_IMAGES)}"
            )
        return v

    @field_validator("patch")
    @classmethod
    def _patch(cls, v: list[int] | int) -> list[int] | int:
        sizes = [v] if isinstance(v, int) else v
        if isinstance(v, list) and len(v) != 2:
            raise ValueError(f"patch {v} must be one int or [height, width]")
        if any(s < 1 for s in sizes):
            raise ValueError(f"patch {v} must be positive")
        return v


class SkimagePatches(DataSource):
    """``count`` random patches of a scikit-image image in its original units.

    Greyscale images give ``(1, h, w)``, colour images ``(3, h, w)`` (channels first);
    uint8 images keep their 0..255 values as float32. The position of patch ``i`` is drawn
    from a generator seeded with ``(seed, i)``, so it does not depend on ``count``.
    """

    def __init__(self, config: SkimagePatchesConfig | None = None) -> None:
        self.config = config or SkimagePatchesConfig()
        c = self.config
        img = np.asarray(getattr(_skimage_data(), c.image)())
        img = img[None] if img.ndim == 2 else np.moveaxis(img, -1, 0)
        self.rgb = img.shape[0] == 3  # scikit-image's colour images are RGB
        self._image = to_tensor(img)
        ph, pw = (c.patch, c.patch) if isinstance(c.patch, int) else c.patch
        _, h, w = self._image.shape
        if ph > h or pw > w:
            raise ValueError(
                f"skimage source {c.image!r}: patch {ph}x{pw} is larger than the {h}x{w} image; "
                f"use patch <= [{h}, {w}]"
            )
        self._patch = (ph, pw)
        self.sample_shape = (self._image.shape[0], ph, pw)
        self._hash: str | None = None

    def __len__(self) -> int:
        return self.config.count

    def _corner(self, index: int) -> tuple[int, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} patches")
        index %= len(self)
        (ph, pw), (_, h, w) = self._patch, self._image.shape
        rng = np.random.default_rng((self.config.seed, index))
        return int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))

    def __getitem__(self, index: int) -> Sample:
        top, left = self._corner(index)
        ph, pw = self._patch
        return Sample(x=self._image[:, top : top + ph, left : left + pw].clone())

    def describe(self) -> Mapping[str, Any]:
        """Provenance: the scikit-image image, patch size, seed and a content hash of the image."""
        if self._hash is None:
            self._hash = content_hash(self._image.numpy())
        c = self.config
        return {
            "type": "skimage",
            "dataset": f"skimage.data.{c.image}",
            "image_shape": list(self._image.shape),
            "patch": list(self._patch),
            "seed": c.seed,
            "samples": len(self),
            "sample_shape": list(self.sample_shape),
            "sha256": self._hash,
        }


def _skimage_data() -> Any:
    try:
        import skimage.data
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the skimage data source needs scikit-image: pip install 'sciddpm[data]'") from e
    return skimage.data
