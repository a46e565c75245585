"""Resumable ensemble output: generated members written one by one into a zarr store.

The store is laid out in full when first opened (coordinates, attributes, empty data chunks of
one member x one time each) with a ``completed`` flag per (member[, time]). Each sample's data are
written first and its flag second, so after an interruption the flags name exactly the samples
that are complete; a rerun skips them and redoes any sample whose data were half written. The
core drives it through ``DataSource.native_writer`` and ``Pipeline.sample_into``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from sciddpm.interfaces import NativeWriter, Sample

from sciddpm_climate.axes import Axes

__all__ = ["EnsembleSource", "ZarrEnsembleWriter"]

MEMBER = "realization"
FLAG = "completed"


class EnsembleSource(Protocol):
    """What the writer reads of its data source (an :class:`~sciddpm_climate.source.XarraySource`).

    ``config.residual``: whether samples are residuals of ``condition["coarse"]`` (or
    ``condition["mean"]``); ``axes`` and ``ds``: dimension names and the ``xarray.Dataset``
    (time values and attributes); ``sample_shape``: ``(C, h, w)``; ``locate(i)``: ``(time index,
    lat origin, lon origin)`` of sample ``i``; ``source[i]``: the data sample (mask 0 where
    missing); ``to_native``: see :func:`sciddpm_climate.native.to_native`.
    """

    config: Any
    axes: Axes
    ds: Any
    sample_shape: tuple[int, int, int]

    def locate(self, index: int) -> tuple[int, int, int]:
        """``(time index, lat origin, lon origin)`` of data sample ``index``."""

    def __getitem__(self, index: int) -> Sample: ...

    def to_native(
        self,
        x: Any,
        *,
        origin: Sequence[int] = (0, 0),
        time: Any = None,
        model: str | None = None,
        coarse: Any = None,
    ) -> Any:
        """Generated samples as an ``xarray.Dataset`` on the source's grid, with its attributes."""


class ZarrEnsembleWriter(NativeWriter):
    """Writes ``members`` ensemble members of generated fields into the zarr store ``path``.

    Without ``indices`` a sample is one member over the whole patch at ``origin`` (no time). With
    ``indices`` (data samples of ``source`` at one patch origin, e.g. held-out times), the store
    has a ``time`` dimension too and sample ``k`` is member ``k // T`` at time ``indices[k % T]``
    (``T = len(indices)``): draw ``members * T`` samples with the matching conditions; points
    missing (NaN) in a data sample stay NaN in its members (a fixed land mask in an ocean field,
    known to a downscaling model; ``mask_missing=False`` keeps the generated values). ``info``
    (``model``, ``seed``, ``steps``, ``scheduler``, ``guidance``) is recorded in the attributes;
    reopening a store written with other settings, members or grid is an error rather than a
    silent mix.
    """

    def __init__(
        self,
        source: EnsembleSource,
        path: str | Path,
        members: int,
        *,
        indices: Sequence[int] | None = None,
        origin: Sequence[int] = (0, 0),
        info: Mapping[str, Any] | None = None,
        mask_missing: bool = True,
    ) -> None:
        if members < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        self.source, self.path, self.members = source, str(path), int(members)
        self.info = {k: v for k, v in (info or {}).items() if v is not None}
        self.indices = None if indices is None else [int(i) for i in indices]
        if self.indices is not None:
            if not self.indices:
                raise ValueError("indices must name at least one data sample")
            places = {tuple(source.locate(i)[1:]) for i in self.indices}
            if len(places) > 1:
                raise ValueError(
                    f"the data samples {self.indices} lie at different patch origins {sorted(places)}; "
                    "an ensemble store holds one region: write one store per region"
                )
            origin = places.pop()
        elif source.config.residual:
            raise ValueError(
                "the data source models residuals of a coarse field: name the data sample(s) whose "
                "coarse field the members refine (--data-index / indices)"
            )
            if source.axes.time is None and len(self.indices) > 1:
                raise ValueError(f"the data source has no time axis; give one index, not {self.indices}")
        self.origin = tuple(int(o) for o in origin)
        self.mask_missing = mask_missing
        self.times = 1 if self.indices is None else len(self.indices)
        self.tdim = source.axes.time or "time"
        if Path(self.path).exists():
            self._check_existing()
        else:
            self._create()

    # ------------------------------------------------------------------ layout

    def _native(self, x: torch.Tensor | np.ndarray, t: int | None, coarse: Any = None) -> Any:
        """``to_native`` of members ``x`` at time slot ``t`` (None: no time), with the run's attrs."""
        time = None
        if t is not None and self.source.axes.time is not None:
            time = self.source.ds[self.source.axes.time].values[self.source.locate(self.indices[t])[0]]
        if coarse is None and self.source.config.residual:
            coarse = np.zeros(np.shape(x)[1:], np.float32)  # the template's layout only
        ds = self.source.to_native(
            x, origin=self.origin, time=time, model=self.info.get("model"), coarse=coarse
        )
        ds.attrs.update({f"sciddpm_{k}": v if isinstance(v, (int, float)) else str(v)
                         for k, v in self.info.items()})  # fmt: skip
        if time is not None:
            ds = ds.expand_dims(self.tdim, axis=1)
        return ds

    def _template(self) -> Any:
        import dask.array as da
        import xarray as xr

        c, h, w = self.source.sample_shape
        one = self._native(np.zeros((1, c, h, w), np.float32), None if self.indices is None else 0)
        data = {}
        for name, var in one.data_vars.items():
            shape = tuple(self.members if d == MEMBER else self.times if d == self.tdim else s
                          for d, s in zip(var.dims, var.shape, strict=True))  # fmt: skip
            chunks = tuple(1 if d in (MEMBER, self.tdim) else s for d, s in zip(var.dims, shape, strict=True))
            data[name] = (var.dims, da.full(shape, np.nan, dtype=np.float32, chunks=chunks), var.attrs)
        coords: dict[str, Any] = {
            k: v for k, v in one.coords.items() if MEMBER not in v.dims and k != self.tdim
        }
        coords[MEMBER] = (MEMBER, np.arange(self.members), dict(one[MEMBER].attrs))
        flag_dims: tuple[str, ...] = (MEMBER,)
        if self.indices is not None and self.source.axes.time is not None:
            tvals = self.source.ds[self.source.axes.time]
            steps = [self.source.locate(i)[0] for i in self.indices]
            coords[self.tdim] = (self.tdim, tvals.values[steps], dict(tvals.attrs))
            flag_dims = (MEMBER, self.tdim)
        flags = np.zeros([self.members, self.times][: len(flag_dims)], np.int8)
        coords[FLAG] = (flag_dims, flags, {"long_name": "1 where the sample is completely written"})
        return xr.Dataset(data, coords=coords, attrs=one.attrs)

    def _create(self) -> None:
        template = self._template()
        # Chunks of one sample: each member (and time) is written, and redone, on its own.
        encoding = {v: {"chunks": template[v].data.chunksize} for v in template.data_vars}
        template.to_zarr(self.path, mode="w-", compute=False, encoding=encoding, consolidated=False)
        # compute=False leaves dask variables unwritten (their chunks read as NaN) but writes the
        # in-memory coordinates, the flags included.

    def _check_existing(self) -> None:
        import xarray as xr

        have = xr.open_zarr(self.path, consolidated=False)
        want = self._template()
        problems = []
        if FLAG not in have.coords:
            problems.append(f"it has no {FLAG!r} flags (not written by this writer)")
        for dim in (MEMBER, self.tdim, *want[next(iter(want.data_vars))].dims[-2:]):
            if dim in want.dims and have.sizes.get(dim) != want.sizes[dim]:
                problems.append(f"{dim} has {have.sizes.get(dim)} entries, this run gives {want.sizes[dim]}")
        if set(have.data_vars) != set(want.data_vars):
            problems.append(f"variables {sorted(have.data_vars)} != {sorted(want.data_vars)}")
        for key in [f"sciddpm_{k}" for k in ("model", "seed", "steps", "scheduler", "guidance")]:
            if key in want.attrs and str(have.attrs.get(key)) != str(want.attrs[key]):
                problems.append(f"{key} is {have.attrs.get(key)!r}, this run has {want.attrs[key]!r}")
        if not problems:
            for name in want.coords:
                if (
                    name not in (FLAG, MEMBER)
                    and name in have.coords
                    and not np.array_equal(np.asarray(have[name].values), np.asarray(want[name].values))
                ):
                    problems.append(f"coordinate {name!r} differs")
        if problems:
            raise ValueError(
                f"{self.path} exists but was written by another run: {'; '.join(problems)}. "
                "Choose a new --out, or delete the store to start again"
            )

    # ------------------------------------------------------------------ NativeWriter

    def _flags(self) -> np.ndarray:
        import zarr

        return np.asarray(zarr.open_group(self.path, mode="r")[FLAG][...]).reshape(self.members, self.times)

    def completed(self) -> set[int]:
        """Indices of the members already written completely, read from the store's flags."""
        m, t = np.nonzero(self._flags())
        return {int(a) * self.times + int(b) for a, b in zip(m, t, strict=True)}

    def write(self, start: int, samples: torch.Tensor) -> None:
        """Write members ``start ..`` (physical units), then flag each complete."""
        import zarr

        total = self.members * self.times
        if start < 0 or start + len(samples) > total:
            raise ValueError(
                f"samples {start}..{start + len(samples) - 1} are outside the store's {total} samples"
            )
        group = zarr.open_group(self.path, mode="r+")
        for row, k in enumerate(range(start, start + len(samples))):
            m, t = divmod(k, self.times)
            member = samples[row : row + 1].clone()
            coarse = None
            if self.indices is not None:
                data = self.source[self.indices[t]]
                if self.mask_missing and data.mask is not None:
                    member[:, data.mask == 0] = float("nan")
                if self.source.config.residual:
                    coarse = data.condition.get("mean", data.condition["coarse"])
            ds = self._native(member, None if self.indices is None else t, coarse)
            region: dict[str, slice] = {MEMBER: slice(m, m + 1)}
            if self.indices is not None and self.source.axes.time is not None:
                region[self.tdim] = slice(t, t + 1)
            ds = ds.drop_vars(list(ds.coords))
            ds.to_zarr(self.path, region=region, consolidated=False)
            # The flag is written only after the data: an interruption in between redoes the sample.
            if self.indices is None or self.source.axes.time is None:
                group[FLAG][m] = 1
            else:
                group[FLAG][m, t] = 1
