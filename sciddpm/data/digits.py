"""The ``digits`` source: scikit-learn's bundled 8x8 handwritten digits, with labels, optionally resampled.

Values are the digits' physical ink counts 0..16; the train/test split is a fixed, seeded 80/20.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sciddpm.data.checks import content_hash
from sciddpm.interfaces import DataSource, Sample

__all__ = ["DigitsSource", "DigitsSourceConfig", "digits_arrays"]


class DigitsSourceConfig(BaseModel):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, values 0..16, 10 classes)."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(default=8, ge=2, description="Side length after bilinear resampling (8 = native).")
    split: Literal["all", "train", "test"] = Field(
        default="all", description="Which part of a fixed, seeded 80/20 train/test split to use."
    )
    seed: int = Field(default=0, description="Seed of the train/test permutation.")
    classes: list[int] | None = Field(
        default=None, description="Keep only these digits (labels keep their values 0..9)."
    )

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("classes is empty; list some digits 0..9 or leave it unset for all")
        bad = [c for c in v if not 0 <= c <= 9]
        if bad:
            raise ValueError(f"classes {bad} are not digits; valid classes are 0..9")
        return sorted(set(v))


def digits_arrays(
    size: int = 8,
    split: Literal["all", "train", "test"] = "all",
    seed: int = 0,
    classes: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits as ``(x (N, 1, size, size) float32 in 0..16, labels (N,) int64)``.

    The split is a seeded permutation, first 80% train and last 20% test; resampling is
    bilinear (``align_corners=False``), which keeps values within 0..16.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images.astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    if split != "all":
        perm = np.random.default_rng(seed).permutation(len(y))
        n_train = round(0.8 * len(y))
        idx = np.sort(perm[:n_train] if split == "train" else perm[n_train:])
        x, y = x[idx], y[idx]
    if classes is not None:
        keep = np.isin(y, list(classes))
        x, y = x[keep], y[keep]
    if size != x.shape[-1]:
        t = torch.nn.functional.interpolate(
            torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False
        )
        x = t.numpy()
    return np.ascontiguousarray(x), y


class DigitsSource(DataSource):
    """scikit-learn's handwritten digits, ``(1, size, size)`` in physical units 0..16, with labels."""

    num_classes = 10

    def __init__(self, config: DigitsSourceConfig | None = None) -> None:
        self.config = config or DigitsSourceConfig()
        c = self.config
        x, self._labels = digits_arrays(c.size, c.split, c.seed, c.classes)
        self._x = torch.from_numpy(x)
        self.sample_shape = tuple(x.shape[1:])
        self._hash: str | None = None

    def __len__(self) -> int:
        return self._x.shape[0]

    def __getitem__(self, index: int) -> Sample:
        return Sample(x=self._x[index], condition=int(self._labels[index]))

    def describe(self) -> Mapping[str, Any]:
        """Provenance of the digits: scikit-learn's (UCI, CC BY 4.0).

        Also the size, split, seed, classes and a content hash.
        """
        if self._hash is None:
            self._hash = content_hash(self._x.numpy(), self._labels)
        c = self.config
        return {
            "type": "digits",
            "dataset": "sklearn.datasets.load_digits (UCI optical recognition of handwritten digits)",
            "licence": "CC BY 4.0 (UCI ML repository)",
            "size": c.size,
            "split": c.split,
            "seed": c.seed,
            "classes": c.classes,
            "samples": len(self),
            "sample_shape": list(self.sample_shape),
            "units": "ink counts 0..16",
            "num_classes": self.num_classes,
            "sha256": self._hash,
        }
