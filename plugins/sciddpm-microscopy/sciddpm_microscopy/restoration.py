"""Restoring an image with a conditional diffusion model: an ensemble, its mean and its uncertainty.

A restoration pipeline (``microscopy/restoration`` conditioner) draws ``members`` samples from
p(clean | input). Their mean is the posterior mean, the estimate with the lowest expected squared
error; averaging repeated generations raises the SNR of a diffusion restoration (Osuna-Vargas et
al. 2024). Their per-pixel standard deviation and central interval say where the model is unsure
(CARE reports a per-pixel scale for the same purpose, Weigert et al. 2018). An image larger than
the training patch is restored in overlapping tiles (:func:`sciddpm.pipeline.tiling.sample_tiled`),
so the network's memory does not grow with the image, and one larger than a block block by block
(:func:`sciddpm.pipeline.tiling.sample_blocks`), so the sampler's does not either; a smaller one is
mirrored out to the patch and cropped back.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from sciddpm.pipeline import Pipeline
from sciddpm.pipeline.tiling import sample_blocks, sample_tiled

from sciddpm_microscopy.calibration import Calibration, stretch

__all__ = ["Restoration", "model_sha256", "restore", "widest_level"]


def widest_level(members: int) -> float:
    """The widest central interval ``M`` members bound: ``(M - 1) / (M + 1)``, between their min and max.

    Of ``M`` samples and a truth exchangeable with them, the truth is outside the samples' range
    with probability ``2 / (M + 1)`` (each of the ``M + 1`` ranks is equally likely).
    """
    return (members - 1) / (members + 1)


@dataclass
class Restoration:
    """An ensemble restoration of one image, in the target's intensity units.

    ``mean``, ``std``, ``lower`` and ``upper`` are ``(C, *spatial)``; ``lower``/``upper`` bound the
    central ``level`` interval of the members (empirical quantiles, Hyndman & Fan type 6, the
    convention :func:`~sciddpm_microscopy.metrics.interval_coverage` scores), or, restored with
    a calibration (``run["calibration"]``), that interval stretched about the mean by its scale.
    ``samples`` is the ensemble ``(members, C, *spatial)`` (None when restored with
    ``keep_samples=False``); ``run`` records how it was drawn
    (scheduler, steps, seed, members, input normalisation, the model's sha256), for the provenance
    of :meth:`save`, which adds ``level``.
    """

    mean: torch.Tensor
    std: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    samples: torch.Tensor | None
    level: float
    run: dict[str, Any] = field(default_factory=dict)

    def save(
        self,
        path: str | Path,
        *,
        channel_names: Sequence[str] | None = None,
        physical_sizes: Mapping[str, float] | None = None,
        units: Mapping[str, str] | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write mean, std, lower and upper as one OME-TIFF (``*.tif``) or OME-Zarr (``*.zarr``) image.

        The channels are, for each statistic in that order, every image channel, named e.g.
        ``"DAPI mean"``, ``"DAPI std"``, ``"DAPI 5%"``, ``"DAPI 95%"`` (the interval's real ends;
        ``channel_names`` default ``c0, c1, ...``); ``physical_sizes``/``units`` as the input's
        (``Image.physical_sizes``). The provenance marks the file as model output and records
        :attr:`run` (what :func:`restore` did); ``info`` adds to it (``model``: which model). An
        existing file is replaced; missing folders are made. Raises ValueError for another suffix
        or metadata that does not fit.
        """
        from sciddpm_microscopy.writing import synthetic_provenance, write_ome_tiff, write_ome_zarr

        p = Path(path)
        zarr_store = p.name.endswith(".zarr")
        if not zarr_store and p.suffix not in (".tif", ".tiff"):
            raise ValueError(f"{p}: save a restoration as OME-TIFF (.ome.tif) or OME-Zarr (.ome.zarr)")
        names = list(channel_names) if channel_names is not None else [f"c{i}" for i in range(len(self.mean))]
        tail = 100 * (1 - self.level) / 2
        kind = " calibrated" if "calibration" in self.run else ""
        labels = ["mean", "std", f"{tail:.3g}%{kind}", f"{100 - tail:.3g}%{kind}"]
        stack = torch.cat([self.mean, self.std, self.lower, self.upper]).numpy()
        axes = "CYX" if self.mean.ndim == 3 else "CZYX"
        meta = {
            "channel_names": [f"{n} {label}" for label in labels for n in names],
            "physical_sizes": dict(physical_sizes or {}),
            "units": dict(units or {}),
            "provenance": synthetic_provenance({**self.run, "level": self.level, **dict(info or {})}),
        }
        p.parent.mkdir(parents=True, exist_ok=True)
        if zarr_store:
            return write_ome_zarr(p, stack, axes, overwrite=True, **meta)
        return write_ome_tiff(p, stack, axes, **meta)


def _as_image(image: Any, dims: int) -> torch.Tensor:
    """``(C, *spatial)`` float32 of an array, tensor, ``{"input": ...}`` or a read ``Image``."""
    if isinstance(image, Mapping):
        image = image["input"]
    if hasattr(image, "to_axes"):  # a sciddpm_microscopy.reading.Image
        image = image.to_axes("CYX" if dims == 2 else "CZYX")
    return torch.as_tensor(np.asarray(image, dtype=np.float32))


def model_sha256(pipe: Pipeline) -> str:
    """sha256 of every tensor of ``pipe``'s state (names and bytes, in name order): which model this is."""
    digest = hashlib.sha256()
    for name, tensor in sorted(pipe.state_dict().items()):
        digest.update(name.encode())
        t = tensor.detach().cpu()
        t = t.view(torch.int16) if t.dtype == torch.bfloat16 else t  # numpy has no bfloat16
        digest.update(np.ascontiguousarray(t.numpy()).tobytes())
    return digest.hexdigest()


def _to_training_range(conditioner: Any, x: torch.Tensor) -> torch.Tensor:
    """``x (C, *spatial)`` mapped so its own low/high percentiles land on the fitted ones.

    The conditioner then normalises it exactly as CARE normalises each image by its percentiles.
    """
    from sciddpm_microscopy.normalization import fit_percentiles

    cfg = conditioner.config
    lo, hi = fit_percentiles([x.numpy()], 1, cfg.low, cfg.high, cfg.max_values, 0, "the input image")
    shape = (-1,) + (1,) * (x.ndim - 1)
    lo_t, hi_t = (torch.from_numpy(v).view(shape) for v in (lo, hi))
    fit_lo, fit_hi = (
        v.detach().double().cpu().view(shape) for v in (conditioner.input_low, conditioner.input_high)
    )
    return ((x.double() - lo_t) / (hi_t - lo_t) * (fit_hi - fit_lo) + fit_lo).float()


def restore(
    pipe: Pipeline,
    image: Any,
    *,
    members: int = 8,
    steps: int = 30,
    scheduler: str | dict[str, Any] | None = None,
    seed: int = 0,
    level: float | None = None,
    overlap: int | list[int] | None = None,
    batch_size: int = 8,
    calibration: Calibration | None = None,
    input_percentiles: Literal["fitted", "per_image"] = "fitted",
    block: int | Sequence[int] | None = None,
    margin: int | Sequence[int] | None = None,
    keep_samples: bool = True,
    progress: bool | None = None,
) -> Restoration:
    """Restore ``image`` with ``members`` samples of the model's posterior.

    ``image`` is the input in its file's intensity units: ``(C_in, *spatial)`` (array or tensor;
    ``(*spatial)`` for one channel), ``{"input": image}`` or an
    :class:`~sciddpm_microscopy.reading.Image`. The outputs are torch tensors. An image of the
    pipeline's patch size is sampled directly (``pipe.sample``); a larger one in tiles of the patch
    size, ``overlap`` pixels apart from disjoint (default: a quarter of the patch); a smaller one is
    mirrored out to the patch and the result cropped. An image larger than a ``block`` (default
    eight patches a side in 2-D, three in 3-D) is restored block by block
    (:func:`sciddpm.pipeline.tiling.sample_blocks`, each block grown by ``margin`` pixels, default
    one patch, from position-keyed noise), so the working memory is that of one block whatever the
    image's size; the image's own arrays (input, mean, std, interval and, unless
    ``keep_samples=False``, the members) are what grows with it. ``batch_size`` members are sampled
    at a time. Member ``i`` depends only on ``(seed, i)``; a block-wise restoration draws from
    another noise (the position-keyed field), so an image one pixel larger than a block gets other
    members than one that fits, and its members depend on the block size and margin too.
    ``progress`` shows a bar over tile evaluations (None: on a terminal only; for a patch-sized
    image, over sampler steps when True). ``level`` is the central interval
    (default :func:`widest_level`, the members' min to max). A ``calibration``
    (:func:`~sciddpm_microscopy.calibration.calibrate`, measured with these members, steps and
    sampler) stretches the interval about the mean so it covers its level on held-out data, and
    sets ``level`` to its own. ``input_percentiles="per_image"`` normalises the input by its own
    low/high percentiles, as CARE does at prediction (Weigert et al. 2018), instead of those fitted
    on the training inputs: an input differing by a camera gain or offset restores as it would at
    the training data's (another laser power or exposure also changes the noise, which no scaling
    undoes); the output stays in the training targets' units. Returns a :class:`Restoration`.

    Raises ValueError for ``members < 2``, a ``level`` outside (0, 1) or wider than the members
    can bound (it needs ``2 / (1 - level) - 1`` of them: 19 for 0.9), NaN or inf in the image, or
    an image of another dimensionality than the patch, an unknown ``input_percentiles``, a
    ``block`` or ``margin`` of another length than the patch's dims, a block under one pixel or a
    negative margin and, per image, a constant input channel.
    """
    if input_percentiles not in ("fitted", "per_image"):
        raise ValueError(f"input_percentiles must be 'fitted' or 'per_image', got {input_percentiles!r}")
    if members < 2:
        raise ValueError(f"members must be >= 2 for a mean and a spread, got {members}")
    if level is None:
        level = calibration.level if calibration is not None else widest_level(members)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    needed = math.ceil(2 / (1 - level) - 1 - 1e-9)
    if members < needed:
        raise ValueError(
            f"a central {level:g} interval needs at least {needed} members, got {members}; draw more "
            f"or leave level unset (the {members} members' range is the {widest_level(members):.3g} interval)"
        )
    patch = tuple(pipe.data_shape[1:])
    x = _as_image(image, len(patch))
    if x.ndim == len(patch):  # one channel given without its axis: (Y, X) or (Z, Y, X)
        x = x[None]
    if not torch.isfinite(x).all():
        raise ValueError("the image to restore holds NaN or inf; fill or crop those pixels first")
    spatial = tuple(x.shape[1:])
    if x.ndim - 1 != len(patch):
        raise ValueError(
            f"image of shape {tuple(x.shape)} has {x.ndim - 1} spatial dims; the model's patch "
            f"{patch} has {len(patch)} (give (C, {', '.join('YX' if len(patch) == 2 else 'ZYX')}))"
        )
    trained = pipe.config.model_dump(mode="json")["scheduler"]
    run = {
        "scheduler": scheduler or trained,
        "steps": steps,
        "seed": seed,
        "members": members,
        "input_percentiles": input_percentiles,
        "model_sha256": model_sha256(pipe),
    }
    if calibration is not None:  # before minutes of sampling, not after
        calibration.check(run, level)
    alpha = (1 - level) / 2
    if input_percentiles == "per_image":
        x = _to_training_range(pipe.conditioner, x)
    # Mirror an axis shorter than the patch out to it ("symmetric" works for any shortfall).
    padded = tuple(max(s, p) for s, p in zip(spatial, patch, strict=True))
    if padded != spatial:
        pad = [(0, 0)] + [(0, q - s) for s, q in zip(spatial, padded, strict=True)]
        x = torch.from_numpy(np.pad(x.numpy(), pad, mode="symmetric"))
    # Eight patches a side in 2-D, three in 3-D: a grown block of a few million pixels either way.
    blocks = _per_dim(block, [(8 if len(patch) == 2 else 3) * q for q in patch], "block")
    margins = _per_dim(margin, list(patch), "margin")
    if min(blocks) < 1 or min(margins) < 0:
        raise ValueError(f"block must be >= 1 and margin >= 0 pixels, got block {blocks}, margin {margins}")
    over = [q // 4 for q in patch] if overlap is None else overlap
    if padded == patch:
        parts: Any = [(_whole(padded), pipe.sample(
            members, {"input": x}, steps=steps, scheduler=scheduler, seed=seed, batch_size=batch_size,
            progress=bool(progress),
        ))]  # fmt: skip
    elif all(s <= b for s, b in zip(padded, blocks, strict=True)):
        parts = [(_whole(padded), sample_tiled(
            pipe, members, {"input": x}, padded, overlap=over, steps=steps, scheduler=scheduler,
            seed=seed, batch_size=batch_size, progress=progress,
        ))]  # fmt: skip
    else:
        run["block"], run["margin"] = blocks, margins
        parts = sample_blocks(
            pipe, members, {"input": x}, padded, block=blocks, margin=margins, overlap=over, steps=steps,
            scheduler=scheduler, seed=seed, batch_size=batch_size, progress=progress,
        )  # fmt: skip
    c_out = pipe.data_shape[0]
    mean, std, low, high = (torch.empty((c_out, *padded)) for _ in range(4))
    samples = torch.empty((members, c_out, *padded)) if keep_samples else None
    for region, part in parts:  # one block's statistics at a time: memory of a block, not the image
        at = (slice(None), *region)
        mean[at], std[at] = part.mean(0), part.std(0)
        lower, upper = np.quantile(part.double().numpy(), [alpha, 1 - alpha], axis=0, method="weibull")
        low[at], high[at] = torch.from_numpy(lower), torch.from_numpy(upper)
        if samples is not None:
            samples[(slice(None), *at)] = part
    crop = (slice(None), *(slice(0, s) for s in spatial))
    mean, std, low, high = (v[crop] for v in (mean, std, low, high))
    if samples is not None:
        samples = samples[(slice(None), *crop)]
    if calibration is not None:
        low, high = stretch(mean, low, high, calibration.scale)
        run["calibration"] = {"scale": calibration.scale, "images": calibration.images}
    return Restoration(mean=mean, std=std, lower=low, upper=high, samples=samples, level=level, run=run)


def _whole(shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(0, s) for s in shape)


def _per_dim(value: int | Sequence[int] | None, default: Sequence[int], name: str) -> list[int]:
    """``value`` as one int per spatial dim (``default`` for None); ValueError for another length."""
    if value is None:
        return list(default)
    out = [int(value)] * len(default) if isinstance(value, numbers.Integral) else [int(v) for v in value]
    if len(out) != len(default):
        raise ValueError(f"{name} {value} needs one number or {len(default)}, one per spatial dim")
    return out
