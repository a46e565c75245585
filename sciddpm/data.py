"""Built-in data sources (numpy arrays, scikit-learn digits, scikit-image patches) and batching.

Every source is map-style (``len``, ``source[i]`` → :class:`~sciddpm.interfaces.Sample`), so a
plain ``torch.utils.data.DataLoader`` works; :func:`collate` batches samples and
:func:`make_loader` builds a seeded, rank-sharded loader. Sources validate at the boundary:
rank, dtype and NaN/inf (without a mask) are errors that name the source, the sample and the fix.
Values stay in physical units: nothing is rescaled or clipped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sciddpm.interfaces import Conditioner, DataSource, Sample

__all__ = [
    "SKIMAGE_IMAGES",
    "ArraySource",
    "ArraySourceConfig",
    "DigitsSource",
    "DigitsSourceConfig",
    "SkimagePatches",
    "SkimagePatchesConfig",
    "collate",
    "digits_arrays",
    "make_loader",
    "spread_indices",
]

#: scikit-image images that ship inside the wheel (no pooch download needed).
SKIMAGE_IMAGES: tuple[str, ...] = (
    "astronaut", "brick", "camera", "cat", "cell", "chelsea", "clock", "coffee", "coins",
    "colorwheel", "grass", "gravel", "hubble_deep_field", "immunohistochemistry",
    "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "text",
)  # fmt: skip


# --------------------------------------------------------------------------- helpers


def _content_hash(*arrays: np.ndarray | None) -> str:
    """First 16 hex digits of the sha256 of the arrays' bytes (shape and dtype included)."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _check_samples(x: np.ndarray, where: str) -> None:
    """Rank ``(N, C, *spatial)`` with 1-3 spatial dims and a real numeric dtype."""
    if x.dtype == object:
        raise ValueError(f"{where}: holds Python objects (dtype=object); pass a numeric array")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or np.iscomplexobj(x):
        raise ValueError(f"{where}: dtype {x.dtype} is not a real numeric type; pass float or int data")
    if not 3 <= x.ndim <= 5:
        raise ValueError(
            f"{where}: expected shape (N, C, *spatial) with 1 to 3 spatial dims, got {tuple(x.shape)}; "
            "for single-channel data add a channel axis, e.g. x[:, None]"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{where}: contains no samples (shape {tuple(x.shape)})")


def _first_nonfinite(x: np.ndarray) -> int | None:
    """Index of the first sample holding NaN/inf, or None (one vectorised pass)."""
    if not np.issubdtype(x.dtype, np.floating):
        return None
    bad = ~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
    return int(np.argmax(bad)) if bad.any() else None


def _check_labels(labels: Any, n: int, where: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"{where}: labels must have shape ({n},) (one per sample), got {y.shape}")
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all() or (y != np.round(y)).any():
            raise ValueError(f"{where}: labels must be integer class indices, got non-integer values")
    elif not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{where}: labels must be integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if (y < 0).any():
        i = int(np.argmax(y < 0))
        raise ValueError(f"{where}: label {y[i]} of sample {i} is negative; class labels are 0..K-1")
    return y


def _to_tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


# --------------------------------------------------------------------------- arrays


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
        _check_samples(x, where)
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
            bad = _first_nonfinite(x)
            if bad is not None:
                raise ValueError(
                    f"{where}: sample {bad} contains NaN/inf; pass a mask ({mask_hint}) marking "
                    "the missing values, or clean the data"
                )
        self._labels: np.ndarray | None = None if labels is None else _check_labels(labels, n, where)
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
        if self._hash is None:
            mask = None if self._mask is None else self._mask.numpy()
            self._hash = _content_hash(self._x.numpy(), self._labels, mask)
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


# --------------------------------------------------------------------------- digits


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
        if self._hash is None:
            self._hash = _content_hash(self._x.numpy(), self._labels)
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


# --------------------------------------------------------------------------- scikit-image


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
        self._image = _to_tensor(img)
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
        if self._hash is None:
            self._hash = _content_hash(self._image.numpy())
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


# --------------------------------------------------------------------------- batching


def spread_indices(total: int, count: int, seed: int = 0) -> list[int]:
    """``min(count, total)`` distinct indices of ``range(total)``, seeded random, in increasing order.

    For statistics estimated from part of a source: the first ``count`` samples of a time-sorted
    source (a climate record, a microscopy time-lapse) would all come from its beginning.
    Increasing order keeps reads of chunked stores sequential.
    """
    if count >= total:
        return list(range(total))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(total, generator=g)[:count].tolist())


def collate(
    samples: Sequence[Sample], conditioner: Conditioner | None = None
) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
    """Batch samples into ``(x (B, C, *spatial), raw conditions, mask or None)``.

    Raw conditions are batched by ``conditioner.collate`` when given (a LongTensor for class
    labels), else returned as a list, or None when no sample has one. The mask is None when no
    sample has one; samples without a mask count as fully valid.
    """
    if not samples:
        raise ValueError("collate got an empty list of samples")
    x = torch.stack([s.x for s in samples])
    raws = [s.condition for s in samples]
    if conditioner is not None:
        cond = conditioner.collate(raws)
    else:
        cond = None if all(r is None for r in raws) else raws
    if all(s.mask is None for s in samples):
        mask = None
    else:
        mask = torch.stack(
            [torch.ones_like(s.x) if s.mask is None else s.mask.expand_as(s.x) for s in samples]
        )
    return x, cond, mask


def make_loader(
    source: DataSource,
    batch_size: int,
    *,
    conditioner: Conditioner | None = None,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
) -> torch.utils.data.DataLoader:
    """A seeded loader yielding :func:`collate` batches, sharded by ``rank`` of ``world_size``.

    The order is a function of ``(seed, epoch)`` only: call ``loader.sampler.set_epoch(epoch)``
    before each epoch, which also makes a resumed run see the same batches.
    """
    from torch.utils.data import DataLoader, DistributedSampler

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sampler = DistributedSampler(
        source,  # type: ignore[arg-type]
        num_replicas=world_size,
        rank=rank,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
    )
    return DataLoader(
        source,  # type: ignore[arg-type]
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=partial(collate, conditioner=conditioner),
    )
