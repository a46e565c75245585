"""The ``array`` source: samples from a numpy array in memory or a ``.npy`` / ``.npz`` file.

Values stay in their physical units as float32. A mask (1 = valid, 0 = missing, fractions
allowed) marks missing values; without one, NaN/inf is an error naming the first bad sample.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sciddpm.data.checks import check_labels, check_samples, content_hash, first_nonfinite
from sciddpm.interfaces import DataSource, Sample

__all__ = ["ArraySource", "ArraySourceConfig"]


class ArraySourceConfig(BaseModel):
    """A ``.npy`` or ``.npz`` file of samples shaped ``(N, C, *spatial)``."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="Path to a .npy or .npz file; read with allow_pickle=False.")
    key: str | None = Field(
        default=None,
        description="Array name inside a .npz holding the samples; may be omitted when only one "
        "array remains besides labels_key and mask_key.",
    )
    labels_key: str | None = Field(
        default=None, description="Array name inside a .npz holding integer class labels, shape (N,)."
    )
    mask_key: str | None = Field(
        default=None,
        description="Array name inside a .npz holding the mask / loss weights (1 = valid, 0 = missing), "
        "shaped like the samples or (N, 1, *spatial).",
    )

    @field_validator("path")
    @classmethod
    def _suffix(cls, v: str) -> str:
        if Path(v).suffix.lower() not in (".npy", ".npz"):
            raise ValueError(f"path {v!r} must end in .npy or .npz (save with np.save or np.savez)")
        return v

    @model_validator(mode="after")
    def _keys_need_npz(self) -> ArraySourceConfig:
        if Path(self.path).suffix.lower() == ".npy":
            given = [k for k in ("key", "labels_key", "mask_key") if getattr(self, k) is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)} only apply to .npz files, but path {self.path!r} is a .npy; "
                    "save samples, labels and mask together with np.savez(path, x=..., y=..., mask=...)"
                )
        return self


class ArraySource(DataSource):
    """Samples from a numpy array: a ``.npy``/``.npz`` file or, via :meth:`from_array`, memory.

    ``x`` is ``(N, C, *spatial)`` with 1-3 spatial dims, kept in its physical units as float32.
    A mask is a per-value loss weight (1 = valid, 0 = missing; fractional weights are kept).
    With a mask, NaN/inf entries get weight 0 too, and every zero-weight entry of ``x``
    is set to 0 so fill values (-9999, 1e20) never reach the network; without a mask, NaN/inf is
    an error naming the first bad sample.
    """

    config: ArraySourceConfig | None

    def __init__(self, config: ArraySourceConfig) -> None:
        self.config = config
        x, labels, mask = self._read(config)
        self._setup(x, labels, mask, name=config.path, mask_hint="mask_key=...")

    @classmethod
    def from_array(cls, x: Any, labels: Any = None, mask: Any = None) -> ArraySource:
        """A source over an in-memory array ``x`` of shape ``(N, C, *spatial)``.

        ``labels``: optional integer classes ``(N,)``; ``mask``: optional validity mask shaped
        like ``x`` or ``(N, 1, *spatial)``. Torch tensors are accepted too.
        """
        self = cls.__new__(cls)
        self.config = None
        as_np = lambda a: a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a  # noqa: E731
        x, labels, mask = as_np(x), as_np(labels), as_np(mask)
        self._setup(np.asarray(x), labels, mask, name="<in-memory array>", mask_hint="mask=...")
        return self

    @staticmethod
    def _read(config: ArraySourceConfig) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        path = Path(config.path)
        where = f"array source {config.path!r}"
        if not path.is_file():
            raise FileNotFoundError(f"{where}: no such file (resolved to {path.resolve()})")
        try:
            loaded = np.load(path, allow_pickle=False)
        except ValueError as e:
            if "allow_pickle" in str(e) or "Object arrays" in str(e):
                raise ValueError(
                    f"{where}: the file holds a Python object array, which sciddpm refuses to unpickle "
                    "(loading pickles can run arbitrary code); save a numeric array instead, e.g. "
                    "np.save(path, x.astype(np.float32))"
                ) from e
            raise ValueError(f"{where}: cannot be read as a numpy file: {e}") from e
        if isinstance(loaded, np.ndarray):
            return loaded, None, None
        with loaded as npz:
            names = list(npz.files)

            def get(k: str | None, what: str) -> np.ndarray | None:
                if k is None:
                    return None
                if k not in names:
                    raise KeyError(f"{where}: no array {k!r} for {what}; the file holds {names}")
                try:
                    return npz[k]
                except ValueError as e:
                    raise ValueError(
                        f"{where}: array {k!r} holds Python objects, which sciddpm refuses to unpickle; "
                        "store numeric arrays only"
                    ) from e

            key = config.key
            if key is None:
                rest = [k for k in names if k not in (config.labels_key, config.mask_key)]
                if len(rest) != 1:
                    raise ValueError(
                        f"{where}: holds arrays {names}; say which one holds the samples with key=..."
                    )
                key = rest[0]
            x = get(key, "the samples (key)")
            return x, get(config.labels_key, "labels_key"), get(config.mask_key, "mask_key")  # type: ignore[return-value]

    def _setup(self, x: np.ndarray, labels: Any, mask: Any, *, name: str, mask_hint: str) -> None:
        where = f"array source {name!r}"
        self.name = name
        check_samples(x, where)
        n = x.shape[0]
        x = np.array(x, dtype=np.float32)  # a copy: we may zero masked entries
        if mask is not None:
            m = np.asarray(mask)
            if (
                m.ndim != x.ndim
                or m.shape[0] != n
                or m.shape[2:] != x.shape[2:]
                or m.shape[1] not in (1, x.shape[1])
            ):
                raise ValueError(
                    f"{where}: mask shape {tuple(m.shape)} must equal the samples' {tuple(x.shape)} "
                    f"or be {(n, 1, *x.shape[2:])} (one mask for all channels)"
                )
            m = np.broadcast_to(m.astype(np.float32), x.shape)
            if not np.isfinite(m).all() or (m < 0).any():
                raise ValueError(f"{where}: mask values must be finite and >= 0 (1 = valid, 0 = missing)")
            m = np.where(np.isfinite(x), m, np.float32(0.0))
            x[m == 0] = 0.0
            self._mask: torch.Tensor | None = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))
        else:
            self._mask = None
            bad = first_nonfinite(x)
            if bad is not None:
                raise ValueError(
                    f"{where}: sample {bad} contains NaN/inf; pass a mask ({mask_hint}) marking "
                    "the missing values, or clean the data"
                )
        self._labels: np.ndarray | None = None if labels is None else check_labels(labels, n, where)
        self.num_classes = 0 if self._labels is None else int(self._labels.max()) + 1
        self._x = torch.from_numpy(x)
        self.sample_shape = tuple(x.shape[1:])
        self._hash: str | None = None

    def __len__(self) -> int:
        return self._x.shape[0]

    def __getitem__(self, index: int) -> Sample:
        return Sample(
            x=self._x[index],
            condition=None if self._labels is None else int(self._labels[index]),
            mask=None if self._mask is None else self._mask[index],
        )

    def describe(self) -> Mapping[str, Any]:
        """Provenance: the file (or in-memory origin), shape, classes, mask and a content hash of the data."""
        if self._hash is None:
            mask = None if self._mask is None else self._mask.numpy()
            self._hash = content_hash(self._x.numpy(), self._labels, mask)
        info: dict[str, Any] = {
            "type": "array",
            "path": None if self.config is None else self.config.path,
            "origin": self.name,
            "samples": len(self),
            "sample_shape": list(self.sample_shape),
            "dtype": "float32",
            "num_classes": self.num_classes,
            "masked": self._mask is not None,
            "sha256": self._hash,
        }
        if self._mask is not None:
            info["valid_fraction"] = float(self._mask.mean())
        return info
