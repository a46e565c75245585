"""The ``microscopy/image`` data source: patches of fluorescence images and stacks, clean and degraded.

A sample is one patch (2-D ``(C, Y, X)`` or 3-D ``(C, Z, Y, X)``) of a target image in its own
intensity units (camera ADU or photons, as the file stores them). Its condition, for restoration,
is the same patch of the low-quality input: a paired file matched by name (CARE's
``RawData.from_folder`` layout, Weigert et al. 2018) or, when a lab has only clean data, a
synthetic low-light acquisition of the clean patch (:mod:`sciddpm_microscopy.camera`). Without
either the source serves unconditional generation, or with ``classes`` class-conditional
generation (an image's class is its folder's name).

Construction scans each image once on a stride (about :data:`PERCENTILE_VALUES` values) for its
background and bright levels (1st and 99.9th percentiles per channel), saturation and a content
hash. Patch origins are drawn once, seeded, so ``source[i]`` is the same patch for the same ``i``
(the DataSource contract; the Trainer deals indices to ranks, so each rank reads its own
patches). An origin is kept only where the patch holds foreground, after CARE's
``no_background_patches`` rule (which takes a maximum filter over half the patch): in some channel
the maximum of the lightly smoothed patch, above background, reaches ``foreground`` of the
image's bright level above background. A sample reads only its region of a memory-mapped TIFF or
of the zarr chunks it touches.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sciddpm.data.checks import content_hash
from sciddpm.interfaces import DataSource, NativeWriter, Sample

from sciddpm_microscopy.camera import CameraConfig, degrade
from sciddpm_microscopy.reading import Image, find_images, read_image

__all__ = ["ImageSource", "ImageSourceConfig", "PairMismatchError"]

#: Percentile of an image that stands for its bright structure (CARE's ``percentile=99.9``).
BRIGHT_PERCENTILE = 99.9
#: Percentile of an image that stands for its background and camera offset.
BACKGROUND_PERCENTILE = 1.0
#: Values an image's percentiles are estimated from (a strided subset of larger images).
PERCENTILE_VALUES = 4_000_000
#: Length units of OME/NGFF pixel sizes, in metres (UDUNITS-2 names, as ``read_image`` gives them).
METRES = {
    "angstrom": 1e-10, "nanometer": 1e-9, "micrometer": 1e-6, "millimeter": 1e-3, "centimeter": 1e-2,
    "meter": 1.0,
}  # fmt: skip


class PairMismatchError(ValueError):
    """An input image does not match its target: shape, axes or physical pixel size."""


class ImageSourceConfig(BaseModel):
    """Fluorescence images or stacks (OME-TIFF, TIFF, OME-Zarr, .npy), as patches for training."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="The target (clean, high-SNR) images: a file, a folder or a glob.")
    input: str | None = Field(
        None,
        description="The paired low-quality inputs (a folder or glob); each matched to the target "
        "with the same file name. None = no pairs (see `degrade`).",
    )
    degrade: CameraConfig | None = Field(
        None,
        description="Make each sample's input by imaging the clean patch with this simulated "
        "low-light camera (when no pairs exist).",
    )
    axes: str | None = Field(
        None, description='Axes of every file, e.g. "ZYX" or "CYX"; None = from the OME metadata.'
    )
    patch: list[int] | None = Field(
        None,
        description="Patch size [Y, X] (2-D) or [Z, Y, X] (3-D) in pixels; None = whole images "
        "(all of one shape).",
    )
    patches_per_image: int = Field(16, ge=1, description="Patches drawn from each image (and time point).")
    foreground: float = Field(
        0.4,
        ge=0,
        le=1,
        description="Keep a patch only if its smoothed maximum reaches this fraction of the image's "
        "99.9th percentile (CARE's threshold); 0 = keep every patch.",
    )
    max_tries: int = Field(200, ge=1, description="Random origins tried per patch before giving up.")
    classes: list[str] | None = Field(
        None,
        description="Class names for class-conditional generation (a cell line, a marker): each "
        "image's class is the name of the folder it is in; samples carry the class index. Not with "
        "`input` or `degrade`.",
    )
    seed: int = Field(0, description="Seed of the patch origins and of the synthetic camera noise.")

    @field_validator("axes")
    @classmethod
    def _axes(cls, v: str | None) -> str | None:
        return None if v is None else v.upper()

    @field_validator("patch")
    @classmethod
    def _patch(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not 2 <= len(v) <= 3 or min(v) < 1):
            raise ValueError(f"patch must be [Y, X] or [Z, Y, X] of positive sizes, got {v}")
        return v


@dataclass(frozen=True)
class _Frame:
    """One image (one time point of a file): where to read it and its (C, Z, Y, X) shape."""

    image: Image
    t: int | None
    shape: tuple[int, int, int, int]

    def read(self, region: tuple[slice, slice, slice]) -> np.ndarray:
        """``(C, Z, Y, X)`` float32 of the region ``(z, y, x)``, reading only that region."""
        index: list[Any] = []
        kept = []
        for axis in self.image.axes:
            if axis == "T":
                index.append(self.t)
            elif axis in "ZYX":
                index.append(region["ZYX".index(axis)])
                kept.append(axis)
            else:
                index.append(slice(None))
                kept.append(axis)
        block = np.asarray(self.image.data[tuple(index)], dtype=np.float32)
        for axis in "CZ":
            if axis not in kept:
                block = block[None]
                kept.insert(0, axis)
        return np.transpose(block, [kept.index(a) for a in "CZYX"])


def _frames(image: Image) -> list[_Frame]:
    sizes = dict(zip(image.axes, image.data.shape, strict=True))
    if "Y" not in sizes or "X" not in sizes:
        raise ValueError(
            f"{image.path}: axes {image.axes!r} (shape {image.data.shape}) have no Y and X; an image "
            "needs both: give `axes` with them, e.g. 'CYX' or 'ZYX'"
        )
    shape = (sizes.get("C", 1), sizes.get("Z", 1), sizes["Y"], sizes["X"])
    if "T" not in sizes:
        return [_Frame(image, None, shape)]
    return [_Frame(image, t, shape) for t in range(sizes["T"])]


def _overview(frame: _Frame) -> np.ndarray:
    """The frame read on a stride that keeps about :data:`PERCENTILE_VALUES` values (all of a small one)."""
    c, z, y, x = frame.shape
    step = max(1, int(np.ceil((c * z * y * x / PERCENTILE_VALUES) ** 0.5)))
    return frame.read((slice(None), slice(None, None, step), slice(None, None, step)))


@dataclass(frozen=True)
class _Levels:
    """What one scan of a frame's overview tells: per-channel background and bright levels, saturation."""

    background: np.ndarray  # (C,) the 1st percentile: camera offset plus background
    bright: np.ndarray  # (C,) the 99.9th percentile: bright structure
    saturated: float  # fraction of overview pixels at the integer type's maximum (0 for floats)
    digest: str  # content hash of the overview

    @classmethod
    def scan(cls, frame: _Frame) -> _Levels:
        """Read the frame's overview once and summarise it."""
        view = _overview(frame)
        flat = view.reshape(view.shape[0], -1)
        dtype = frame.image.data.dtype
        top = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else None
        return cls(
            background=np.nanpercentile(flat, BACKGROUND_PERCENTILE, axis=1),
            bright=np.nanpercentile(flat, BRIGHT_PERCENTILE, axis=1),
            saturated=0.0 if top is None else float(np.mean(flat == top)),
            digest=content_hash(view),
        )


def _where(frame: _Frame) -> str:
    return str(frame.image.path) + ("" if frame.t is None else f" (T={frame.t})")


def _metres(image: Image, axis: str) -> float:
    """The physical size of one pixel along ``axis`` in metres (micrometres when no unit is stated)."""
    unit = image.units.get(axis, "micrometer")
    return image.physical_sizes[axis] * METRES.get(unit, float("nan"))


class ImageSource(DataSource):
    """Patches of fluorescence images with their low-quality inputs (paired or synthetic).

    ``sample_shape`` is ``(C, *patch)``; ``source[i].x`` the clean patch in the file's intensity
    units (float32), ``source[i].condition`` ``{"input": patch}``, the input patch on the same grid,
    or with ``classes`` the class index of the image's folder (``num_classes``), or None. Channel
    names and physical pixel sizes come from the first target file (``channel_names``,
    ``physical_sizes``). Raises ValueError (naming the file) for unreadable files, mixed channel
    counts or dimensionality, a patch larger than an image, and :class:`PairMismatchError` for an
    input whose shape or pixel size differs from its target's.
    """

    def __init__(self, config: ImageSourceConfig) -> None:
        self.config = config
        targets = find_images(config.path)
        self.images = [read_image(p, axes=config.axes) for p in targets]
        self.inputs = self._match_inputs(targets) if config.input is not None else None
        self.labels = self._labels(targets)
        self.num_classes = len(config.classes or [])
        self.frames = [f for img in self.images for f in _frames(img)]
        self._frame_labels = (
            []
            if self.labels is None
            else [label for img, label in zip(self.images, self.labels, strict=True) for _ in _frames(img)]
        )
        self.input_frames = None if self.inputs is None else [f for i in self.inputs for f in _frames(i)]
        first = self.images[0]
        channels = {f.shape[0] for f in self.frames}
        if len(channels) > 1:
            raise ValueError(f"the images under {config.path!r} have different channel counts {channels}")
        self.dims = 3 if any(f.shape[1] > 1 for f in self.frames) else 2
        self.patch = self._patch_size()
        self.sample_shape = (self.frames[0].shape[0], *self.patch)
        self.channel_names = first.channel_names
        self.physical_sizes = dict(first.physical_sizes)
        # One strided scan per frame serves the foreground rule, the camera's scale, saturation
        # and the content hash: construction reads about PERCENTILE_VALUES values of each image.
        self.levels = [_Levels.scan(f) for f in self.frames]
        input_levels = [] if self.input_frames is None else [_Levels.scan(f) for f in self.input_frames]
        self.saturation = {}
        for frame, levels in zip(
            self.frames + (self.input_frames or []), self.levels + input_levels, strict=True
        ):
            if levels.saturated > 0:
                self.saturation[_where(frame)] = levels.saturated
                warnings.warn(
                    f"{_where(frame)}: {levels.saturated:.2%} of pixels (of a strided scan) are at the "
                    "maximum of their integer type (saturated); their true intensity is unknown and the "
                    "model learns the clipped value",
                    stacklevel=2,
                )
        self._digest = content_hash(np.array([lv.digest for lv in self.levels + input_levels]))
        self._origins = self._draw_origins()

    def _labels(self, targets: list[Path]) -> list[int] | None:
        """The class index of each target file: its folder's name in ``classes``."""
        classes = self.config.classes
        if classes is None:
            return None
        if self.config.input is not None or self.config.degrade is not None:
            raise ValueError(
                "`classes` (class-conditional generation) cannot be combined with `input` or `degrade` "
                "(restoration); train one or the other"
            )
        if len(set(classes)) != len(classes) or not classes:
            raise ValueError(f"classes must be distinct folder names, got {classes}")
        unknown = sorted({t.parent.name for t in targets} - set(classes))
        if unknown:
            raise ValueError(
                f"images under {self.config.path!r} are in folder(s) {unknown}, which are not in classes "
                f"{classes}; an image's class is the name of its folder"
            )
        return [classes.index(t.parent.name) for t in targets]

    def _match_inputs(self, targets: list[Path]) -> list[Image]:
        assert self.config.input is not None
        if self.config.degrade is not None:
            raise ValueError("give either `input` (paired files) or `degrade` (synthetic inputs), not both")
        by_name = {p.name: p for p in find_images(self.config.input)}
        missing = [t.name for t in targets if t.name not in by_name]
        if missing:
            raise PairMismatchError(
                f"no input under {self.config.input!r} has the name of target(s) {missing[:5]}; inputs "
                "are matched to targets by file name"
            )
        inputs = [read_image(by_name[t.name], axes=self.config.axes) for t in targets]
        for target, inp in zip(self.images, inputs, strict=True):
            t_shape = dict(zip(target.axes, target.data.shape, strict=True))
            i_shape = dict(zip(inp.axes, inp.data.shape, strict=True))
            same_grid = set(target.physical_sizes) == set(inp.physical_sizes) and all(
                math.isclose(_metres(target, a), _metres(inp, a), rel_tol=1e-5) for a in target.physical_sizes
            )
            if t_shape != i_shape or not same_grid:
                raise PairMismatchError(
                    f"input {inp.path} (shape {i_shape}, pixel sizes {inp.physical_sizes} {inp.units}) does "
                    f"not match target {target.path} (shape {t_shape}, pixel sizes {target.physical_sizes} "
                    f"{target.units})"
                )
        return inputs

    def _patch_size(self) -> tuple[int, ...]:
        spatial = [f.shape[1:] if self.dims == 3 else f.shape[2:] for f in self.frames]
        if self.config.patch is None:
            if len(set(spatial)) > 1:
                raise ValueError(
                    f"the images under {self.config.path!r} have different sizes {sorted(set(spatial))}; "
                    "set `patch` to train on patches"
                )
            return tuple(spatial[0])
        patch = tuple(self.config.patch)
        if len(patch) != self.dims:
            raise ValueError(
                f"patch {list(patch)} has {len(patch)} sizes but the images are {self.dims}-D; give "
                f"{'[Z, Y, X]' if self.dims == 3 else '[Y, X]'}"
            )
        factor = self.config.degrade.downsample if self.config.degrade is not None else 1
        for frame, size in zip(self.frames, spatial, strict=True):
            if any(p > s for p, s in zip(patch, size, strict=True)):
                raise ValueError(
                    f"patch {list(patch)} is larger than image {frame.image.path} of size {list(size)}"
                )
        if any(p % factor for p in patch):
            raise ValueError(f"degrade.downsample = {factor} must divide the patch size {list(patch)}")
        return patch

    def _draw_origins(self) -> list[tuple[int, tuple[int, ...]]]:
        rng = np.random.default_rng(self.config.seed)
        origins: list[tuple[int, tuple[int, ...]]] = []
        for k, frame in enumerate(self.frames):
            spatial = frame.shape[1:] if self.dims == 3 else frame.shape[2:]
            for _ in range(self.config.patches_per_image):
                for _ in range(self.config.max_tries):
                    origin = tuple(
                        int(rng.integers(0, s - p + 1)) for s, p in zip(spatial, self.patch, strict=True)
                    )
                    if self.config.foreground == 0 or self._is_foreground(k, origin):
                        break
                else:
                    raise ValueError(
                        f"no patch of {_where(frame)} reached foreground = {self.config.foreground} of its "
                        f"bright level (99.9th percentile {self.levels[k].bright.tolist()} above background "
                        f"{self.levels[k].background.tolist()}) in {self.config.max_tries} tries; lower "
                        "`foreground` (0 keeps every patch)"
                    )
                origins.append((k, origin))
        return origins

    def _region(self, origin: tuple[int, ...]) -> tuple[slice, slice, slice]:
        spans = [slice(o, o + p) for o, p in zip(origin, self.patch, strict=True)]
        return tuple([slice(None)] * (3 - len(spans)) + spans)  # type: ignore[return-value]

    def _is_foreground(self, frame: int, origin: tuple[int, ...]) -> bool:
        """Whether a channel's smoothed patch maximum above background reaches ``foreground`` of its range."""
        from scipy.ndimage import gaussian_filter

        block = self.frames[frame].read(self._region(origin))
        # Smoothing first, so that one bright noise pixel does not make a background patch count.
        smooth = gaussian_filter(block, sigma=[0, *([1.0] * 3)] if self.dims == 3 else [0, 0, 1.0, 1.0])
        peak = smooth.reshape(smooth.shape[0], -1).max(axis=1)
        lv = self.levels[frame]
        return bool(np.any(peak - lv.background >= self.config.foreground * (lv.bright - lv.background)))

    def __len__(self) -> int:
        return len(self._origins)

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} of a source with {len(self)} samples")
        index %= len(self)
        k, origin = self._origins[index]
        region = self._region(origin)
        clean = self._finite(self.frames[k], self.frames[k].read(region), index)
        condition = None
        if self.input_frames is not None:
            condition = self._finite(self.input_frames[k], self.input_frames[k].read(region), index)
        elif self.config.degrade is not None:
            condition = self._synthetic_input(clean, k, index)
        if self.dims == 2:  # (C, 1, Y, X) -> (C, Y, X)
            clean = clean[:, 0]
            condition = None if condition is None else condition[:, 0]
        if self.labels is not None:  # class-conditional generation: the frame's file's class
            return Sample(x=torch.from_numpy(np.ascontiguousarray(clean)), condition=self._frame_labels[k])
        image = None if condition is None else {"input": torch.from_numpy(np.ascontiguousarray(condition))}
        return Sample(x=torch.from_numpy(np.ascontiguousarray(clean)), condition=image)

    @staticmethod
    def _finite(frame: _Frame, block: np.ndarray, index: int) -> np.ndarray:
        if not np.isfinite(block).all():
            raise ValueError(
                f"sample {index} of microscopy/image reads NaN or inf from {_where(frame)}; fill or crop "
                "the missing region (this source has no mask for missing pixels)"
            )
        return block

    def _synthetic_input(self, clean: np.ndarray, frame: int, index: int) -> np.ndarray:
        """The patch imaged by the configured camera.

        Each channel is first scaled so that its image's background (1st percentile: the camera
        offset) is 0 and its bright level (99.9th percentile) is 1, so ``photons`` counts the
        signal above background.
        """
        cfg = self.config.degrade
        assert cfg is not None
        lv = self.levels[frame]
        shape = (-1,) + (1,) * (clean.ndim - 1)
        span = np.maximum(lv.bright - lv.background, np.finfo(np.float32).tiny).reshape(shape)
        rng = np.random.default_rng([self.config.seed, index])
        noisy = degrade((clean - lv.background.reshape(shape)) / span, cfg, rng, spatial_dims=self.dims)
        if cfg.downsample > 1:  # back onto the target's grid, so it concatenates with x_t
            f = cfg.downsample
            noisy = noisy.repeat(f, axis=-1).repeat(f, axis=-2)
            if self.dims == 3:
                noisy = noisy.repeat(f, axis=-3)
        return noisy.astype(np.float32)

    def native_writer(
        self, path: str, n: int, *, index: int | None = None, info: dict[str, Any] | None = None
    ) -> NativeWriter | None:
        """A resumable OME-Zarr writer of ``n`` generated patches at ``path`` (``*.zarr``), else None.

        Each sample becomes one OME-Zarr image (see
        :class:`~sciddpm_microscopy.writing.OmeZarrEnsembleWriter`) with the source's channel
        names and physical pixel sizes and provenance naming the run (``info``) and, when given,
        the data sample ``index`` whose input the samples restore.
        """
        from sciddpm_microscopy.writing import OmeZarrEnsembleWriter

        if not str(path).rstrip("/").endswith(".zarr"):
            return None
        sizes = {a: v for a, v in self.physical_sizes.items() if a in "ZYX"[3 - self.dims :]}
        units = {a: u for a, u in self.images[0].units.items() if a in sizes}
        run = {**(info or {}), "data_index": index, "source": self.config.path}
        return OmeZarrEnsembleWriter(
            path,
            n,
            self.sample_shape,
            channel_names=self.channel_names,
            physical_sizes=sizes,
            units=units,
            info=run,
        )

    def domain_metrics(self) -> list[dict[str, Any]]:
        """For restoration data (paired or degraded): PSNR, SSIM, FRC and coverage, for ``sciddpm evaluate``.

        PSNR, SSIM and FRC (in the images' physical units) score the ensemble mean against the
        target, CARE's conventions; coverage is of the central 50 % interval (3 members bound it)
        with the Spearman correlation of error and spread. Generation data (classes): none.
        """
        if self.input_frames is None and self.config.degrade is None:
            return []
        axes = "ZYX"[3 - self.dims :]
        pixel = [float(self.physical_sizes.get(a, 1.0)) for a in axes]
        return [
            {"type": "microscopy/psnr", "spatial_dims": self.dims},
            {"type": "microscopy/ssim", "spatial_dims": self.dims},
            {"type": "microscopy/frc", "spatial_dims": self.dims, "pixel_size": pixel},
            {"type": "microscopy/coverage", "level": 0.5},
        ]

    def describe(self) -> dict[str, Any]:
        """Provenance for the model card: files, axes, patches, pairing or camera, saturation, content hash.

        The hash is of the strided scan of every image (and input) the source made at construction.
        """
        return {
            "type": "microscopy/image",
            "path": self.config.path,
            "files": [str(img.path) for img in self.images],
            "input": self.config.input,
            "degrade": None if self.config.degrade is None else self.config.degrade.model_dump(),
            "axes": self.images[0].axes,
            "channel_names": self.channel_names,
            "physical_sizes": self.physical_sizes,
            "samples": len(self),
            "sample_shape": list(self.sample_shape),
            "saturated_fraction": self.saturation,
            "classes": self.config.classes,
            "seed": self.config.seed,
            "content_hash": self._digest,
        }
