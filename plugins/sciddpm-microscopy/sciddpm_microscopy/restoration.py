"""Restoring an image with a conditional diffusion model: an ensemble, its mean and its uncertainty.

A restoration pipeline (``microscopy/restoration`` conditioner) draws ``members`` samples from
p(clean | input). Their mean is the posterior mean, the estimate with the lowest expected squared
error; averaging repeated generations raises the SNR of a diffusion restoration (Osuna-Vargas et
al. 2024). Their per-pixel standard deviation and central interval say where the model is unsure
(CARE reports a per-pixel scale for the same purpose, Weigert et al. 2018). An image larger than
the training patch is restored in overlapping tiles (:func:`sciddpm.pipeline.tiling.sample_tiled`),
so the network's memory does not grow with the image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sciddpm.pipeline import Pipeline
from sciddpm.pipeline.tiling import sample_tiled

__all__ = ["Restoration", "restore"]


@dataclass
class Restoration:
    """An ensemble restoration of one image, in the target's intensity units.

    ``mean``, ``std``, ``lower`` and ``upper`` are ``(C, *spatial)``; ``lower``/``upper`` bound the
    central ``level`` interval of the members (empirical quantiles, Hyndman & Fan type 6, the
    convention :func:`~sciddpm_microscopy.metrics.interval_coverage` scores). ``samples`` is the
    ensemble ``(members, C, *spatial)``.
    """

    mean: torch.Tensor
    std: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    samples: torch.Tensor
    level: float

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

        The channels are, for each statistic in that order, every image channel, named
        ``"DAPI mean"``, ``"DAPI std"``, ``"DAPI 5%"``, ``"DAPI 95%"`` (``channel_names`` default
        ``c0, c1, ...``); ``physical_sizes``/``units`` as the input's (``Image.physical_sizes``);
        the provenance marks the file as model output with ``info`` (``model``, ``scheduler``,
        ``steps``, ``seed``), the member count and the interval level. An existing file is
        replaced. Raises ValueError for another suffix or metadata that does not fit.
        """
        from sciddpm_microscopy.writing import synthetic_provenance, write_ome_tiff, write_ome_zarr

        names = (
            list(channel_names) if channel_names is not None else [f"c{i}" for i in range(self.mean.shape[0])]
        )
        tail = round(100 * (1 - self.level) / 2, 2)
        labels = ["mean", "std", f"{tail:g}%", f"{100 - tail:g}%"]
        stack = torch.cat([self.mean, self.std, self.lower, self.upper]).numpy()
        axes = "CYX" if self.mean.ndim == 3 else "CZYX"
        record = synthetic_provenance(info, members=int(self.samples.shape[0]), level=self.level)
        meta = {
            "channel_names": [f"{n} {label}" for label in labels for n in names],
            "physical_sizes": dict(physical_sizes or {}),
            "units": dict(units or {}),
            "provenance": record,
        }
        p = Path(path)
        if p.name.endswith(".zarr"):
            return write_ome_zarr(p, stack, axes, overwrite=True, **meta)
        if p.suffix in (".tif", ".tiff"):
            return write_ome_tiff(p, stack, axes, **meta)
        raise ValueError(f"{p}: save a restoration as OME-TIFF (.ome.tif) or OME-Zarr (.ome.zarr)")


def restore(
    pipe: Pipeline,
    image: Any,
    *,
    members: int = 8,
    steps: int = 30,
    scheduler: str | dict[str, Any] | None = None,
    seed: int = 0,
    level: float = 0.9,
    overlap: int | list[int] | None = None,
    batch_size: int = 8,
) -> Restoration:
    """Restore ``image`` (``(C_in, *spatial)`` or ``{"input": image}``, input units) with ``members`` samples.

    An image of the pipeline's patch size is sampled directly (``pipe.sample``, ``batch_size``
    members at a time); a larger one in tiles of the patch size ``overlap`` pixels apart from
    disjoint (default: a quarter of the patch). Member ``i`` depends only on ``(seed, i)``.
    Returns a :class:`Restoration`. Raises ValueError for ``members < 2`` (a spread needs two), a
    ``level`` outside (0, 1), or an image smaller than the patch or of another dimensionality.
    """
    if members < 2:
        raise ValueError(f"members must be >= 2 for a mean and a spread, got {members}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if isinstance(image, Mapping):
        image = image["input"]
    x = torch.as_tensor(np.asarray(image, dtype=np.float32))
    patch = tuple(pipe.data_shape[1:])
    spatial = tuple(x.shape[1:])
    if len(spatial) != len(patch):
        raise ValueError(
            f"image of shape {tuple(x.shape)} has {len(spatial)} spatial dims; the model's patch "
            f"{patch} has {len(patch)} (give (C, {', '.join('YX' if len(patch) == 2 else 'ZYX')}))"
        )
    if any(s < p for s, p in zip(spatial, patch, strict=True)):
        raise ValueError(f"image of spatial size {spatial} is smaller than the model's patch {patch}")
    if spatial == patch:
        samples = pipe.sample(
            members, {"input": x}, steps=steps, scheduler=scheduler, seed=seed, batch_size=batch_size
        )
    else:
        over = [p // 4 for p in patch] if overlap is None else overlap
        samples = sample_tiled(
            pipe, members, {"input": x}, spatial, overlap=over, steps=steps, scheduler=scheduler, seed=seed
        )
    alpha = (1 - level) / 2
    lower, upper = np.quantile(samples.double().numpy(), [alpha, 1 - alpha], axis=0, method="weibull")
    return Restoration(
        mean=samples.mean(0),
        std=samples.std(0),
        lower=torch.from_numpy(lower).float(),
        upper=torch.from_numpy(upper).float(),
        samples=samples,
        level=level,
    )
