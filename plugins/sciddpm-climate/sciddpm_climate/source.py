"""The ``climate/xarray`` data source: lazy, chunk-aware (time, patch) samples from xarray/zarr.

Two views of the same samples (see :class:`XarraySource`):

- map-style, what the core's Trainer uses: index ``i`` -> time ``i // P``, patch ``i % P`` of a fixed
  grid of ``P`` patch origins; an LRU cache of ``buffer_blocks`` decoded time blocks (one on-disk
  chunk of ``time_block`` steps x the full field each) serves neighbouring indices;
- :meth:`XarraySource.iter_samples`, for bulk throughput: time blocks in a seeded order, split
  between ranks, read ``buffer_blocks`` at a time into a shuffle buffer whose samples are yielded
  in a seeded random order, so every chunk read serves ``time_block x P`` samples.

Both yield exactly ``source[i]`` for the same ``i``. :meth:`XarraySource.epoch_order` is the index
order the iterator follows; the Trainer visits indices in that order too (``DataSource.epoch_order``),
so under the map-style view every block is read once per epoch, as in the iterator. Under DDP the
Trainer deals consecutive positions of one global order to the ranks, so ranks read the same
blocks; ``iter_samples(rank=, world_size=)`` gives each rank its own blocks instead.
"""

from __future__ import annotations

import glob as _glob
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sciddpm.interfaces import Conditioner, DataSource, Sample

from sciddpm_climate.axes import Axes, detect_axes, lon_order
from sciddpm_climate.geometry import grid_weights

__all__ = ["GridMismatchError", "XarraySource", "XarraySourceConfig", "open_dataset", "time_features"]


class GridMismatchError(ValueError):
    """Target and conditioning fields are on different grids."""


class XarraySourceConfig(BaseModel):
    """Gridded fields from a zarr store, netCDF file(s) or an in-memory ``xarray.Dataset``."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(
        None,
        description="A zarr store (directory or *.zarr), a netCDF file or a glob of netCDF files; "
        "None when the dataset is given from Python (XarraySource.from_dataset).",
    )
    variables: list[str] | None = Field(
        None,
        description="Data variables to model, one channel each (one per level for variables with a "
        "level axis); None = every variable on the (time, lat, lon) grid except the static ones.",
    )
    levels: list[float] | None = Field(
        None, description="Vertical levels to keep (values of the level coordinate); None = all."
    )
    lat: str | None = Field(None, description="Name of the latitude dimension; None = detect (CF).")
    lon: str | None = Field(None, description="Name of the longitude dimension; None = detect (CF).")
    time: str | None = Field(None, description="Name of the time dimension; None = detect (CF).")
    level: str | None = Field(None, description="Name of the vertical level dimension; None = detect.")
    time_range: list[str] | None = Field(
        None,
        description='Keep the times in [first, last] (inclusive, dates as strings, e.g. ["1979-01-01", '
        '"2015-12-31"]) to split training and held-out periods; None = all.',
    )
    patch: list[int] | None = Field(
        None, description="Patch size [n_lat, n_lon] of a sample; None = the full field."
    )
    stride: list[int] | None = Field(
        None, description="Step between patch origins [lat, lon]; None = the patch size (tiles)."
    )
    static: list[str] = Field(
        [], description="Time-independent variables (orography, land-sea mask) given as conditioning."
    )
    static_path: str | None = Field(
        None, description="Store holding the static variables when they are not in the main one."
    )
    time_features: bool = Field(
        False, description="Condition on sin/cos of the time of year and time of day (4 numbers)."
    )
    coarsen: int | None = Field(
        None,
        ge=2,
        description="Downscaling: condition on the target coarse-grained by this factor (area-weighted "
        "block means of f x f cells) and interpolated back to the fine grid bilinearly, as "
        'condition["coarse"] (C, h, w); the patch must divide by it. None = no coarse condition.',
    )
    coarse_path: str | None = Field(
        None,
        description="Downscaling from a separate coarse dataset (same variables and times, on the "
        "target grid coarsened by `coarsen`) instead of coarse-graining the target; from Python: "
        "XarraySource.from_dataset(ds, coarse_dataset=...).",
    )
    residual: bool = Field(
        False,
        description="Downscaling: model the target minus its coarse condition (the fine-scale "
        "residual of the bilinear interpolation) instead of the target; to_native(coarse=) and the "
        "ensemble writer add the coarse field back. Needs coarsen.",
    )
    regression: str | None = Field(
        None,
        description="CorrDiff-style: a regression mean saved by sciddpm_climate.regression."
        "train_regression; with residual = true the residual is taken from its mean instead of the "
        "bilinear coarse field (condition['mean']).",
    )
    area_weighted: bool = Field(
        True, description="Multiply the loss mask by the latitude cell-area weights (mean 1)."
    )
    time_block: int | None = Field(
        None, ge=1, description="Time steps read at once; None = the store's time chunk (16 in memory)."
    )
    buffer_blocks: int = Field(
        4,
        ge=1,
        description="Time blocks in the shuffle buffer (iter_samples, epoch_order) and in the "
        "map-style view's cache; memory is about this many blocks.",
    )
    seed: int = Field(0, description="Seed of the iterator's block order and shuffle buffer.")

    @field_validator("patch", "stride")
    @classmethod
    def _pair(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(v) != 2 or min(v) < 1):
            raise ValueError(f"must be two positive sizes [n_lat, n_lon], got {v}")
        return v


def open_dataset(path: str) -> Any:
    """Open a zarr store, netCDF file or glob lazily (no data read)."""
    import xarray as xr

    p = Path(path)
    if any(c in path for c in "*?["):
        files = sorted(_glob.glob(path))
        if not files:
            raise FileNotFoundError(f"the glob {path!r} matches no files")
        return xr.open_mfdataset(
            files, combine="by_coords", data_vars="minimal", coords="minimal", compat="override"
        )
    if not p.exists():
        raise FileNotFoundError(f"no such store or file: {path!r} (resolved to {p.resolve()})")
    if p.is_dir() or p.suffix == ".zarr":
        # chunks=None: lazily indexed backend arrays, no dask graph per read; the time blocks
        # this source reads are aligned to the store's chunks.
        return xr.open_zarr(p, chunks=None, decode_timedelta=False)
    return xr.open_dataset(p, chunks=None, decode_timedelta=False)


def time_features(times: Any) -> np.ndarray:
    """``(T, 4)`` float32: (sin, cos) of the fraction of the year, then of the day, any calendar.

    The year fraction uses the calendar's own year length (365 for ``noleap``, 360 for
    ``360_day``), so the seasonal phase is exact on model calendars.
    """
    import xarray as xr

    t = xr.DataArray(np.asarray(times), dims="time")
    if t.size == 0:
        return np.zeros((0, 4), np.float32)
    day_seconds = (t.dt.hour * 3600 + t.dt.minute * 60 + t.dt.second).values.astype(np.float64)
    year_days = t.dt.days_in_year.values.astype(np.float64)
    frac_year = (t.dt.dayofyear.values - 1 + day_seconds / 86400.0) / year_days
    frac_day = day_seconds / 86400.0
    ang = 2 * np.pi * np.stack([frac_year, frac_day], axis=1)
    return np.concatenate([np.sin(ang), np.cos(ang)], axis=1)[:, [0, 2, 1, 3]].astype(np.float32)


@dataclass
class _Block:
    """One decoded time block: values with missing set to 0, and the validity mask."""

    x: np.ndarray  # (T_b, C, H, W) float32
    valid: np.ndarray  # (T_b, C, H, W) bool


def _origins(size: int, patch: int, stride: int) -> list[int]:
    out = list(range(0, size - patch + 1, stride))
    if out[-1] + patch < size:  # reach the far edge too
        out.append(size - patch)
    return out


class XarraySource(DataSource):
    """Samples ``(C, n_lat, n_lon)`` of gridded fields, in physical units, read lazily.

    Channels are the variables (times their selected levels), in ``channels`` order. The grid is
    normalised: latitude ascending, longitude wrapped to [0, 360) and sorted. Missing values (NaN)
    get weight 0 in ``Sample.mask``, which is also multiplied by the latitude area weights (mean 1 over
    the globe) so the core's mask-weighted loss is area-weighted. ``Sample.condition`` is a dict
    ``{"static": (S, h, w), "time": (4,)}`` when static fields or time features are configured.
    """

    def __init__(
        self,
        config: XarraySourceConfig,
        dataset: Any = None,
        static_dataset: Any = None,
        coarse_dataset: Any = None,
    ) -> None:
        self.config = config
        if dataset is None and config.path is None:
            raise ValueError(
                "climate/xarray needs a path (zarr store, netCDF file or glob) or, from Python, "
                "XarraySource.from_dataset(ds)"
            )
        self.ds = dataset if dataset is not None else open_dataset(config.path)  # type: ignore[arg-type]
        self.origin = config.path or "<in-memory xarray.Dataset>"
        overrides = {"lat": config.lat, "lon": config.lon, "time": config.time, "level": config.level}
        self.axes: Axes = detect_axes(self.ds, overrides)
        if config.time_range is not None:
            self._select_times(config.time_range)
        self._setup_grid()
        self._setup_channels()
        self._setup_patches()
        self._setup_conditions(static_dataset)
        self._setup_coarse(coarse_dataset)
        self.regression = None
        if config.regression is not None:
            from sciddpm_climate.regression import RegressionMean

            self.regression = RegressionMean.load(config.regression)
            want = self.regression.meta
            if list(want["data_shape"]) != list(self.sample_shape) or want["channels"] != self.channel_names:
                raise ValueError(
                    f"the regression in {config.regression!r} was trained on {want['channels']} samples of "
                    f"shape {want['data_shape']}; this source gives {self.channel_names} of shape "
                    f"{list(self.sample_shape)}"
                )
        self._cache: OrderedDict[int, _Block] = OrderedDict()
        self._stats: dict[str, dict[str, float]] | None = None

    @classmethod
    def from_dataset(
        cls, ds: Any, static_dataset: Any = None, coarse_dataset: Any = None, **params: Any
    ) -> XarraySource:
        """A source over an ``xarray.Dataset`` (lazy or in memory); ``params`` are config fields."""
        return cls(
            XarraySourceConfig(**params),
            dataset=ds,
            static_dataset=static_dataset,
            coarse_dataset=coarse_dataset,
        )

    @classmethod
    def open(cls, path: str, **params: Any) -> XarraySource:
        """A source over a zarr store, netCDF file or glob; ``params`` are config fields."""
        return cls(XarraySourceConfig(path=str(path), **params))

    # ------------------------------------------------------------------ setup

    def _select_times(self, bounds: list[str]) -> None:
        if len(bounds) != 2 or self.axes.time is None:
            raise ValueError(
                f"time_range must be [first, last] dates on a dataset with a time axis, got {bounds} "
                f"(time axis: {self.axes.time})"
            )
        times = self.ds[self.axes.time]
        self.ds = self.ds.sel({self.axes.time: slice(*bounds)})
        if self.ds.sizes[self.axes.time] == 0:
            raise ValueError(
                f"time_range {bounds} selects no time of {self.origin!r}, whose times run from "
                f"{times.values[0]} to {times.values[-1]}"
            )

    def _setup_grid(self) -> None:
        ds, ax = self.ds, self.axes
        lat = np.asarray(ds[ax.lat].values, np.float64) if ax.lat in ds.coords else None
        lon = np.asarray(ds[ax.lon].values, np.float64) if ax.lon in ds.coords else None
        if lat is None or lon is None:
            raise ValueError(
                f"dimensions {ax.lat!r} and {ax.lon!r} need coordinate values in degrees "
                "(assign them with ds.assign_coords)"
            )
        self.lat_order = np.argsort(lat, kind="stable")
        self.lat = lat[self.lat_order]
        if np.any(np.diff(self.lat) == 0):
            raise ValueError(f"latitude {ax.lat!r} has repeated values")
        self.lon_order, self.lon = lon_order(lon)
        self.weights = grid_weights(self.lat).astype(np.float32)
        self._lat_identity = bool(np.all(self.lat_order == np.arange(lat.size)))
        self._lon_identity = bool(np.all(self.lon_order == np.arange(lon.size)))
        self.n_times = int(ds.sizes[ax.time]) if ax.time is not None else 1

    def _setup_channels(self) -> None:
        ds, ax, cfg = self.ds, self.axes, self.config
        names = list(ds.data_vars)
        grid = {ax.lat, ax.lon}
        if cfg.variables is None:
            variables = [
                v for v in names if grid <= set(ds[v].dims) and v not in cfg.static
                and (ax.time is None or ax.time in ds[v].dims)
            ]  # fmt: skip
            if not variables:
                raise ValueError(
                    f"no data variable of {self.origin!r} lies on the ({ax.lat}, {ax.lon}) grid; "
                    f"its variables are {names}"
                )
        else:
            missing = [v for v in cfg.variables if v not in ds.data_vars]
            if missing:
                raise KeyError(
                    f"variable(s) {missing} not found in {self.origin!r}; the dataset's variables are {names}"
                )
            variables = list(cfg.variables)
        allowed = {d for d in (ax.time, ax.level, ax.lat, ax.lon) if d is not None}
        self.channels: list[tuple[str, int | None]] = []  # (variable, level index)
        for v in variables:
            dims = set(ds[v].dims)
            if not grid <= dims or not dims <= allowed:
                raise ValueError(
                    f"variable {v!r} has dimensions {ds[v].dims}; a modelled variable needs "
                    f"({ax.lat}, {ax.lon}), optionally {ax.time} and {ax.level or 'a level axis'}, "
                    "and no others "
                    "(select the rest away with ds.isel/sel first)"
                )
            if ax.level is not None and ax.level in dims:
                for k in self._level_indices():
                    self.channels.append((v, k))
            else:
                self.channels.append((v, None))
        self.variables = variables
        self.sample_shape = (len(self.channels), 0, 0)  # patch filled in by _setup_patches

    def _level_indices(self) -> list[int]:
        values = np.asarray(self.ds[self.axes.level].values, np.float64)
        if self.config.levels is None:
            return list(range(values.size))
        out = []
        for want in self.config.levels:
            hit = np.nonzero(np.isclose(values, want))[0]
            if hit.size == 0:
                raise KeyError(
                    f"level {want} not in {self.axes.level!r}; available levels are {values.tolist()}"
                )
            out.append(int(hit[0]))
        return out

    def _setup_patches(self) -> None:
        cfg = self.config
        H, W = self.lat.size, self.lon.size
        h, w = cfg.patch or (H, W)
        if h > H or w > W:
            raise ValueError(f"patch {[h, w]} is larger than the grid ({H}, {W}) (lat, lon)")
        if cfg.regression is not None and not cfg.residual:
            raise ValueError("regression gives the mean a residual is taken from: set residual = true too")
        if cfg.residual and cfg.coarsen is None:
            raise ValueError("residual = true models the target minus its coarse field: set coarsen too")
        if cfg.coarsen is not None and (h % cfg.coarsen or w % cfg.coarsen):
            raise ValueError(
                f"patch {[h, w]} does not divide into coarsen={cfg.coarsen} blocks; choose a patch "
                f"that is a multiple of {cfg.coarsen} in both directions"
            )
        sh, sw = cfg.stride or (h, w)
        self.patch = (h, w)
        self.origins_lat, self.origins_lon = _origins(H, h, sh), _origins(W, w, sw)
        self.patches_per_time = len(self.origins_lat) * len(self.origins_lon)
        self.sample_shape = (len(self.channels), h, w)
        self.time_block = cfg.time_block or self._store_time_chunk() or 16
        self.n_blocks = -(-self.n_times // self.time_block)

    def _store_time_chunk(self) -> int | None:
        if self.axes.time is None:
            return None
        var = self.ds[self.variables[0]]
        dims = list(var.dims)
        chunks = (
            var.encoding.get("chunks")
            or var.encoding.get("chunksizes")
            or var.encoding.get("preferred_chunks")
        )
        if isinstance(chunks, Mapping):
            return int(chunks.get(self.axes.time)) if chunks.get(self.axes.time) else None
        if chunks and len(chunks) == len(dims):
            return int(chunks[dims.index(self.axes.time)])
        if var.chunks:  # dask-backed (open_mfdataset)
            return int(var.chunks[dims.index(self.axes.time)][0])
        return None

    def _setup_conditions(self, static_dataset: Any) -> None:
        cfg = self.config
        self.static_fields: np.ndarray | None = None
        if cfg.static:
            sds = static_dataset
            if sds is None and cfg.static_path is not None:
                sds = open_dataset(cfg.static_path)
            sds = self.ds if sds is None else sds
            missing = [v for v in cfg.static if v not in sds.data_vars]
            if missing:
                raise KeyError(
                    f"static variable(s) {missing} not found; the dataset's variables are "
                    f"{list(sds.data_vars)}"
                )
            s_axes = detect_axes(sds, {"lat": cfg.lat, "lon": cfg.lon})
            s_lat = np.sort(np.asarray(sds[s_axes.lat].values, np.float64))
            s_lon = lon_order(sds[s_axes.lon].values)[1]
            if (s_lat.size, s_lon.size) != (self.lat.size, self.lon.size) or not (
                np.allclose(s_lat, self.lat) and np.allclose(s_lon, self.lon)
            ):
                raise GridMismatchError(
                    f"static fields {cfg.static} are on a ({s_lat.size}, {s_lon.size}) (lat, lon) grid "
                    "but the "
                    f"target variables {self.variables} are on ({self.lat.size}, {self.lon.size})"
                    + (
                        ""
                        if (s_lat.size, s_lon.size) != (self.lat.size, self.lon.size)
                        else " with other coordinates"
                    )
                    + "; regrid the static fields to the target grid first (e.g. ds.interp_like)"
                )
            fields = []
            for v in cfg.static:
                da = sds[v]
                extra = [d for d in da.dims if d not in (s_axes.lat, s_axes.lon)]
                if extra:
                    raise ValueError(f"static variable {v!r} has extra dimensions {extra}; select them away")
                a = np.asarray(da.transpose(s_axes.lat, s_axes.lon).values, np.float32)
                a = a[np.argsort(sds[s_axes.lat].values, kind="stable")][
                    :, lon_order(sds[s_axes.lon].values)[0]
                ]
                fields.append(np.nan_to_num(a, nan=0.0))
            self.static_fields = np.stack(fields)
        self.time_feats: np.ndarray | None = None
        if cfg.time_features:
            if self.axes.time is None:
                raise ValueError("time_features=True needs a time axis; the dataset has none")
            self.time_feats = time_features(self.ds[self.axes.time].values)

    def _setup_coarse(self, coarse_dataset: Any) -> None:
        """A source over the separate coarse dataset, checked against the target grid and times."""
        cfg = self.config
        self.coarse_source: XarraySource | None = None
        if coarse_dataset is None and cfg.coarse_path is None:
            return
        f = cfg.coarsen
        if f is None:
            raise ValueError("a coarse dataset needs coarsen = the grid ratio (e.g. 4)")
        H, W = self.lat.size, self.lon.size
        params = cfg.model_dump(
            include={"levels", "lat", "lon", "time", "level", "time_range", "buffer_blocks"}
        )
        self.coarse_source = XarraySource(
            XarraySourceConfig(
                path=cfg.coarse_path, variables=self.variables, time_block=self.time_block,
                area_weighted=False, **params,
            ),
            dataset=coarse_dataset,
        )  # fmt: skip
        c = self.coarse_source
        if H % f or W % f or (c.lat.size, c.lon.size) != (H // f, W // f):
            raise GridMismatchError(
                f"the coarse dataset is on a ({c.lat.size}, {c.lon.size}) (lat, lon) grid but the target "
                f"grid ({H}, {W}) coarsened by {f} is ({H / f:g}, {W / f:g}); give a coarse dataset on "
                "that grid or change coarsen"
            )
        if c.n_times != self.n_times or (
            self.axes.time is not None
            and not np.array_equal(c.ds[c.axes.time].values, self.ds[self.axes.time].values)
        ):
            raise ValueError(
                f"the coarse dataset has {c.n_times} times and the target {self.n_times}, or other "
                "time values; give both the same times (time_range applies to both)"
            )
        off = [o for o in (*self.origins_lat, *self.origins_lon) if o % f]
        if off:
            raise ValueError(
                f"patch origins {off} do not fall on coarse cells of {f} x {f}: with a coarse dataset "
                f"the patch and stride must be multiples of {f} (grid {H} x {W})"
            )

    # ------------------------------------------------------------------ reading

    def _read_block(self, b: int) -> _Block:
        """Decode time block ``b`` for every channel: one chunk-aligned read per variable."""
        ax = self.axes
        t0, t1 = b * self.time_block, min((b + 1) * self.time_block, self.n_times)
        parts = []
        for v in self.variables:
            da = self.ds[v]
            tdim = ax.time if ax.time is not None else "__time__"
            da = da.isel({tdim: slice(t0, t1)}) if ax.time is not None else da.expand_dims(tdim)
            levels = [k for (name, k) in self.channels if name == v and k is not None]
            if levels:
                da = da.isel({ax.level: levels}).transpose(tdim, ax.level, ax.lat, ax.lon)
                a = np.asarray(da.values, dtype=np.float32)
            else:
                a = np.asarray(da.transpose(tdim, ax.lat, ax.lon).values, dtype=np.float32)[:, None]
            if not self._lat_identity:
                a = a[:, :, self.lat_order]
            if not self._lon_identity:
                a = a[:, :, :, self.lon_order]
            parts.append(a)
        x = np.concatenate(parts, axis=1) if len(parts) > 1 else np.ascontiguousarray(parts[0])
        valid = np.isfinite(x)
        if not valid.all():
            x[~valid] = 0.0
        return _Block(x, valid)

    def _block(self, b: int) -> _Block:
        blk = self._cache.get(b)
        if blk is None:
            blk = self._read_block(b)
            self._cache[b] = blk
            while len(self._cache) > self.config.buffer_blocks:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(b)
        return blk

    def locate(self, index: int) -> tuple[int, int, int]:
        """``(time index, lat origin, lon origin)`` of sample ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples")
        t, p = divmod(index, self.patches_per_time)
        i, j = divmod(p, len(self.origins_lon))
        return t, self.origins_lat[i], self.origins_lon[j]

    def _sample(self, blk: _Block, index: int) -> Sample:
        t, y0, x0 = self.locate(index)
        h, w = self.patch
        tl = t - (t // self.time_block) * self.time_block
        win = (tl, slice(None), slice(y0, y0 + h), slice(x0, x0 + w))
        x = torch.from_numpy(np.ascontiguousarray(blk.x[win]))
        mask = blk.valid[win].astype(np.float32)
        if self.config.area_weighted:
            mask *= self.weights[y0 : y0 + h, None]
        condition = None
        coarse = None if not self.config.coarsen else self._coarse_patch(x, blk.valid[win], t, y0, x0)
        static = (
            None
            if self.static_fields is None
            else torch.from_numpy(np.ascontiguousarray(self.static_fields[:, y0 : y0 + h, x0 : x0 + w]))
        )
        feats = None if self.time_feats is None else torch.from_numpy(self.time_feats[t])
        mean = coarse
        if self.regression is not None:
            with torch.no_grad():
                mean = self.regression({"coarse": coarse, "static": static, "time": feats})
        if self.config.residual:
            assert mean is not None
            # The fine-scale part only; missing points stay 0 (their loss weight is 0 anyway).
            x = torch.where(torch.from_numpy(blk.valid[win]), x - mean, torch.zeros_like(x))
        if self.static_fields is not None or self.time_feats is not None or self.config.coarsen:
            condition = {"coarse": coarse, "static": static, "time": feats}
            if self.regression is not None:
                condition["mean"] = mean
        return Sample(x=x, condition=condition, mask=torch.from_numpy(mask))

    def _coarse_patch(self, x: torch.Tensor, valid: np.ndarray, t: int, y0: int, x0: int) -> torch.Tensor:
        if self.coarse_source is None:
            return self.coarse(x, valid, y0)
        from sciddpm_climate.downscaling import fill_and_upsample

        f = self.config.coarsen
        assert f is not None
        c = self.coarse_source
        blk = c._block(t // self.time_block)
        h, w = self.patch
        win = (t % self.time_block, slice(None), slice(y0 // f, (y0 + h) // f), slice(x0 // f, (x0 + w) // f))
        mean = torch.from_numpy(np.ascontiguousarray(blk.x[win]))
        return fill_and_upsample(mean, torch.from_numpy(blk.valid[win].astype(np.float32)), f)

    def coarse(self, x: torch.Tensor, valid: np.ndarray | torch.Tensor, y0: int = 0) -> torch.Tensor:
        """The coarse condition of a ``(C, h, w)`` patch at latitude row ``y0``: see ``coarsen``.

        Block means are weighted by cell area and validity (NaN points, 0 in ``x``, count for
        nothing); :func:`sciddpm_climate.downscaling.coarse_field` does the work.
        """
        from sciddpm_climate.downscaling import coarse_field

        if not self.config.coarsen:
            raise ValueError("this source has no coarse condition: set coarsen (e.g. 4)")
        h = x.shape[-2]
        weight = torch.as_tensor(np.asarray(valid), dtype=torch.float32) * torch.from_numpy(
            self.weights[y0 : y0 + h, None]
        )
        return coarse_field(x, weight, self.config.coarsen)

    def __len__(self) -> int:
        return self.n_times * self.patches_per_time

    def __getitem__(self, index: int) -> Sample:
        index = int(index)
        if index < 0:
            index += len(self)
        t = self.locate(index)[0]
        return self._sample(self._block(t // self.time_block), index)

    # ------------------------------------------------------------------ bulk iteration

    def _block_indices(self, b: int) -> np.ndarray:
        t0, t1 = b * self.time_block, min((b + 1) * self.time_block, self.n_times)
        return np.arange(t0 * self.patches_per_time, t1 * self.patches_per_time)

    def _plan(
        self, epoch: int, seed: int | None, rank: int, world_size: int, buffer_blocks: int | None
    ) -> list[tuple[list[int], np.ndarray]]:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank} world_size={world_size}")
        seed = self.config.seed if seed is None else seed
        k = buffer_blocks or self.config.buffer_blocks
        rng = np.random.default_rng([seed, epoch])
        # Blocks, not samples, are dealt to ranks: shards are disjoint and each rank reads only its chunks.
        blocks = rng.permutation(self.n_blocks)[rank::world_size]
        plan = []
        for g in range(0, len(blocks), k):
            group = [int(b) for b in blocks[g : g + k]]
            idx = np.concatenate([self._block_indices(b) for b in group])
            plan.append((group, idx[np.random.default_rng([seed, epoch, rank, g]).permutation(idx.size)]))
        return plan

    def epoch_order(
        self, epoch: int = 0, seed: int | None = None, rank: int = 0, world_size: int = 1,
        buffer_blocks: int | None = None,
    ) -> np.ndarray:  # fmt: skip
        """Sample indices in the order :meth:`iter_samples` yields them for these arguments."""
        plan = self._plan(epoch, seed, rank, world_size, buffer_blocks)
        return np.concatenate([idx for _, idx in plan]) if plan else np.zeros(0, np.int64)

    def iter_samples(
        self, epoch: int = 0, seed: int | None = None, rank: int = 0, world_size: int = 1,
        buffer_blocks: int | None = None,
    ) -> Iterator[Sample]:  # fmt: skip
        """One epoch of this rank's shard, chunk-aware: yields ``self[i]`` for i in :meth:`epoch_order`.

        Time blocks are permuted with ``(seed, epoch)`` and dealt round-robin to ranks; each rank
        reads ``buffer_blocks`` blocks at a time (one chunk-aligned read per variable and block)
        and yields their samples shuffled. Memory is ``buffer_blocks`` blocks, whatever the store size.
        """
        per_block = self.patches_per_time * self.time_block
        for group, idx in self._plan(epoch, seed, rank, world_size, buffer_blocks):
            blocks = {b: self._read_block(b) for b in group}
            for i in idx:
                yield self._sample(blocks[int(i) // per_block], int(i))
            del blocks  # free this buffer before the next one is read: memory stays one buffer

    def iter_batches(
        self, batch_size: int, conditioner: Conditioner | None = None, **kwargs: Any
    ) -> Iterator[tuple[torch.Tensor, Any, torch.Tensor | None]]:
        """:meth:`iter_samples` batched by :func:`sciddpm.data.collate` (the last batch may be short)."""
        from sciddpm.data import collate

        batch: list[Sample] = []
        for s in self.iter_samples(**kwargs):
            batch.append(s)
            if len(batch) == batch_size:
                yield collate(batch, conditioner)
                batch = []
        if batch:
            yield collate(batch, conditioner)

    # ------------------------------------------------------------------ statistics and provenance

    @property
    def channel_names(self) -> list[str]:
        """``variable`` or ``variable@level`` per channel."""
        lv = self.ds[self.axes.level].values if self.axes.level is not None else None
        return [v if k is None else f"{v}@{lv[k]:g}" for v, k in self.channels]

    def statistics(self) -> dict[str, dict[str, float]]:
        """Per-channel count, mean, std, min, max over every valid value, one block at a time.

        Streaming and NaN-aware: block moments are merged with Chan, Golub & LeVeque (1979), so
        memory is one block whatever the store size. Computed once and kept (and put in the card).
        """
        if self._stats is not None:
            return self._stats
        c = len(self.channels)
        count, mean, m2 = np.zeros(c), np.zeros(c), np.zeros(c)
        lo, hi = np.full(c, np.inf), np.full(c, -np.inf)
        for b in range(self.n_blocks):
            blk = self._read_block(b)
            x = np.moveaxis(blk.x, 1, 0).reshape(c, -1).astype(np.float64)
            v = np.moveaxis(blk.valid, 1, 0).reshape(c, -1)
            n_b = v.sum(1)
            mean_b = (x * v).sum(1) / np.maximum(n_b, 1)
            m2_b = (((x - mean_b[:, None]) ** 2) * v).sum(1)
            n = count + n_b
            delta = mean_b - mean
            mean = mean + delta * n_b / np.maximum(n, 1)
            m2 = m2 + m2_b + delta**2 * count * n_b / np.maximum(n, 1)
            count = n
            lo = np.minimum(lo, np.where(v, x, np.inf).min(1))
            hi = np.maximum(hi, np.where(v, x, -np.inf).max(1))
        std = np.sqrt(m2 / np.maximum(count, 1))
        self._stats = {
            name: {"count": int(count[i]), "mean": float(mean[i]), "std": float(std[i]),
                   "min": float(lo[i]), "max": float(hi[i])}
            for i, name in enumerate(self.channel_names)
        }  # fmt: skip
        return self._stats

    def describe(self) -> Mapping[str, Any]:
        ax = self.axes
        return {
            "type": "climate/xarray",
            "origin": self.origin,
            "variables": self.variables,
            "channels": self.channel_names,
            "grid": {"lat": self.lat.size, "lon": self.lon.size},
            "axes": {"lat": ax.lat, "lon": ax.lon, "time": ax.time, "level": ax.level},
            "times": self.n_times,
            "time_range": self.config.time_range,
            "patch": list(self.patch),
            "samples": len(self),
            "sample_shape": list(self.sample_shape),
            "static": list(self.config.static),
            "time_features": self.config.time_features,
            "coarsen": self.config.coarsen,
            "residual": self.config.residual,
            "area_weighted": self.config.area_weighted,
            "statistics": self.statistics(),
        }

    # ------------------------------------------------------------------ native output

    def native_writer(
        self, path: str, n: int, *, index: int | None = None, info: Mapping[str, Any] | None = None
    ) -> Any:
        """A resumable zarr writer of ``n`` members for ``path``s ending in ``.zarr`` (else None).

        ``index``: the data sample the members are conditioned on; the store then covers its patch
        and has its time as a length-1 ``time`` dimension. See
        :class:`~sciddpm_climate.ensemble.ZarrEnsembleWriter`.
        """
        if not str(path).rstrip("/").endswith(".zarr"):
            return None
        from sciddpm_climate.ensemble import ZarrEnsembleWriter

        return ZarrEnsembleWriter(self, path, n, indices=None if index is None else [index], info=info)

    def to_native(
        self,
        x: Any,
        *,
        origin: Sequence[int] = (0, 0),
        time: Any = None,
        model: str | None = None,
        coarse: Any = None,
    ) -> Any:
        """Generated ``(N, C, h, w)`` (physical units) -> ``xarray.Dataset`` with a ``realization`` dim.

        Variables, coordinate names, units and attributes are the source's; the grid is the
        normalised one (latitude ascending, longitude in [0, 360)), cut at the patch ``origin``
        ``(lat index, lon index)``. ``time`` adds a scalar time coordinate; ``model`` names the model
        in the attributes, which say that the data are synthetic. A ``residual`` source's samples are
        residuals: ``coarse`` (the condition's coarse field, ``(C, h, w)``) is added back.
        """
        import xarray as xr

        import sciddpm_climate

        a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        if a.ndim == 3:
            a = a[None]
        if self.config.residual:
            if coarse is None:
                raise ValueError(
                    "this source models residuals (residual = true): pass coarse=the condition's coarse "
                    "field to add back, e.g. to_native(x, coarse=source[i].condition['coarse'])"
                )
            c_arr = coarse.detach().cpu().numpy() if isinstance(coarse, torch.Tensor) else np.asarray(coarse)
            a = a + c_arr
        c, h, w = a.shape[1:]
        if c != len(self.channels) or h > self.lat.size or w > self.lon.size:
            raise ValueError(
                f"to_native expects (N, {len(self.channels)}, h, w) with h <= {self.lat.size} and "
                f"w <= {self.lon.size}, got {a.shape}"
            )
        y0, x0 = origin
        if y0 + h > self.lat.size or x0 + w > self.lon.size:
            raise ValueError(
                f"a ({h}, {w}) patch at origin {tuple(origin)} leaves the "
                f"({self.lat.size}, {self.lon.size}) grid"
            )
        ax, ds = self.axes, self.ds
        coords: dict[str, Any] = {
            "realization": (
                "realization",
                np.arange(a.shape[0]),
                {"long_name": "ensemble member", "standard_name": "realization"},
            ),
            ax.lat: (ax.lat, self.lat[y0 : y0 + h], dict(ds[ax.lat].attrs)),
            ax.lon: (ax.lon, self.lon[x0 : x0 + w], dict(ds[ax.lon].attrs)),
        }
        data_vars: dict[str, Any] = {}
        for v in self.variables:
            idx = [i for i, (name, _) in enumerate(self.channels) if name == v]
            levels = [self.channels[i][1] for i in idx]
            attrs = dict(ds[v].attrs)
            if levels[0] is None:
                data_vars[v] = (("realization", ax.lat, ax.lon), a[:, idx[0]], attrs)
            else:
                lv = ds[ax.level]
                coords[ax.level] = (ax.level, np.asarray(lv.values)[levels], dict(lv.attrs))
                data_vars[v] = (("realization", ax.level, ax.lat, ax.lon), a[:, idx], attrs)
        if time is not None and ax.time is not None:
            coords[ax.time] = ((), time, dict(ds[ax.time].attrs))
        out = xr.Dataset(data_vars, coords=coords)
        out.attrs.update({k: v for k, v in ds.attrs.items() if k not in ("history",)})
        out.attrs.update({
            "synthetic": "yes",
            "comment": "Synthetic data generated by a diffusion model; these are not observations.",
            "source": f"sciddpm diffusion model {model or '(unnamed)'}",
            "sciddpm_model": model or "",
            "sciddpm_climate_version": sciddpm_climate.__version__,
            "data_origin": str(self.origin),
        })  # fmt: skip
        return out
