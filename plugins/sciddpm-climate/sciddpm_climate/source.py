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

The source composes helpers that do the other jobs: :mod:`sciddpm_climate.reading` decodes the
dataset (channels, time blocks, static fields, statistics), :mod:`sciddpm_climate.downscaling`
builds the coarse condition and residual of a ``coarsen`` source, and :mod:`sciddpm_climate.native`
writes generated samples back in the dataset's layout.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sciddpm.interfaces import Conditioner, DataSource, Sample

from sciddpm_climate import downscaling, native, reading
from sciddpm_climate.axes import Axes, GridMismatchError, detect_axes
from sciddpm_climate.geometry import grid_weights
from sciddpm_climate.reading import Block, open_dataset, time_features
from sciddpm_climate.regression import RegressionMean

# GridMismatchError, open_dataset and time_features are defined in axes and reading (which the
# other modules use without importing this one) and are importable from here too.
__all__ = ["GridMismatchError", "XarraySource", "XarraySourceConfig", "open_dataset", "time_features"]


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
            self.ds = reading.select_times(self.ds, self.axes.time, config.time_range, self.origin)
        self._setup_grid()
        self.variables, self.channels = reading.select_channels(
            self.ds, self.axes, config.variables, config.static, config.levels, self.origin
        )
        self._setup_patches()
        self._setup_conditions(static_dataset)
        self._setup_downscaling(coarse_dataset)
        self._cache: OrderedDict[int, Block] = OrderedDict()
        self._stats: dict[str, dict[str, float]] | None = None
        self._digest: str | None = None

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

    def _setup_grid(self) -> None:
        ds, ax = self.ds, self.axes
        self.lat, self.lon, self.lat_order, self.lon_order = reading.normalised_grid(ds, ax)
        self.weights = grid_weights(self.lat).astype(np.float32)
        self._lat_identity = bool(np.all(self.lat_order == np.arange(self.lat.size)))
        self._lon_identity = bool(np.all(self.lon_order == np.arange(self.lon.size)))
        self.n_times = int(ds.sizes[ax.time]) if ax.time is not None else 1

    def _setup_patches(self) -> None:
        cfg = self.config
        H, W = self.lat.size, self.lon.size
        h, w = cfg.patch or (H, W)
        if h > H or w > W:
            raise ValueError(f"patch {[h, w]} is larger than the grid ({H}, {W}) (lat, lon)")
        downscaling.check_downscaling_options(cfg.coarsen, cfg.residual, cfg.regression, (h, w))
        sh, sw = cfg.stride or (h, w)
        self.patch = (h, w)
        self.origins_lat, self.origins_lon = _origins(H, h, sh), _origins(W, w, sw)
        self.patches_per_time = len(self.origins_lat) * len(self.origins_lon)
        self.sample_shape = (len(self.channels), h, w)
        chunk = reading.store_time_chunk(self.ds[self.variables[0]], self.axes.time)
        self.time_block = cfg.time_block or chunk or 16
        self.n_blocks = -(-self.n_times // self.time_block)

    def _setup_conditions(self, static_dataset: Any) -> None:
        cfg = self.config
        self.static_fields: np.ndarray | None = None
        if cfg.static:
            sds = static_dataset
            if sds is None and cfg.static_path is not None:
                sds = open_dataset(cfg.static_path)
            sds = self.ds if sds is None else sds
            overrides = {"lat": cfg.lat, "lon": cfg.lon}
            self.static_fields = reading.static_fields(
                sds, cfg.static, self.lat, self.lon, overrides, self.variables
            )
        self.time_feats: np.ndarray | None = None
        if cfg.time_features:
            if self.axes.time is None:
                raise ValueError("time_features=True needs a time axis; the dataset has none")
            self.time_feats = time_features(self.ds[self.axes.time].values)

    def _setup_downscaling(self, coarse_dataset: Any) -> None:
        cfg = self.config
        self.coarse_source: XarraySource | None = None
        if coarse_dataset is not None or cfg.coarse_path is not None:
            if cfg.coarsen is None:
                raise ValueError("a coarse dataset needs coarsen = the grid ratio (e.g. 4)")
            # Read with the target's axes, levels, times and time blocks, so that sample t's block
            # is block t // time_block of both; area weights are the target's business.
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
            downscaling.check_coarse_alignment(self, self.coarse_source, cfg.coarsen)
        self.regression: RegressionMean | None = None
        if cfg.regression is not None:
            self.regression = downscaling.load_regression(
                cfg.regression, self.sample_shape, self.channel_names
            )
        self.downscaling: downscaling.DownscalingCondition | None = None
        if cfg.coarsen:
            self.downscaling = downscaling.DownscalingCondition(
                cfg.coarsen,
                self.weights,
                residual=cfg.residual,
                coarse_window=None if self.coarse_source is None else self.coarse_source.window,
                regression=self.regression,
            )

    # ------------------------------------------------------------------ reading

    def _read_block(self, b: int) -> Block:
        """Decode time block ``b`` for every channel: one chunk-aligned read per variable."""
        times = slice(b * self.time_block, min((b + 1) * self.time_block, self.n_times))
        lat_order = None if self._lat_identity else self.lat_order
        lon_order = None if self._lon_identity else self.lon_order
        return reading.read_block(
            self.ds, self.axes, self.variables, self.channels, times, lat_order, lon_order
        )

    def _block(self, b: int) -> Block:
        blk = self._cache.get(b)
        if blk is None:
            blk = self._read_block(b)
            self._cache[b] = blk
            while len(self._cache) > self.config.buffer_blocks:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(b)
        return blk

    def window(self, t: int, lat: slice, lon: slice) -> tuple[np.ndarray, np.ndarray]:
        """Values ``(C, h, w)`` float32 (missing set to 0) and validity (bool) of time step ``t``.

        ``lat``/``lon`` slice the normalised grid; the read goes through the block cache.
        """
        blk = self._block(t // self.time_block)
        win = (t % self.time_block, slice(None), lat, lon)
        return blk.x[win], blk.valid[win]

    def locate(self, index: int) -> tuple[int, int, int]:
        """``(time index, lat origin, lon origin)`` of sample ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples")
        t, p = divmod(index, self.patches_per_time)
        i, j = divmod(p, len(self.origins_lon))
        return t, self.origins_lat[i], self.origins_lon[j]

    def _sample(self, blk: Block, index: int) -> Sample:
        t, y0, x0 = self.locate(index)
        h, w = self.patch
        tl = t - (t // self.time_block) * self.time_block
        win = (tl, slice(None), slice(y0, y0 + h), slice(x0, x0 + w))
        x = torch.from_numpy(np.ascontiguousarray(blk.x[win]))
        mask = blk.valid[win].astype(np.float32)
        if self.config.area_weighted:
            mask *= self.weights[y0 : y0 + h, None]
        static = (
            None
            if self.static_fields is None
            else torch.from_numpy(np.ascontiguousarray(self.static_fields[:, y0 : y0 + h, x0 : x0 + w]))
        )
        feats = None if self.time_feats is None else torch.from_numpy(self.time_feats[t])
        coarse = mean = None
        if self.downscaling is not None:
            x, coarse, mean = self.downscaling.apply(x, blk.valid[win], t, y0, x0, static, feats)
        condition = None
        if self.static_fields is not None or self.time_feats is not None or self.downscaling is not None:
            condition = {"coarse": coarse, "static": static, "time": feats}
            if mean is not None:
                condition["mean"] = mean
        return Sample(x=x, condition=condition, mask=torch.from_numpy(mask))

    def coarse(self, x: torch.Tensor, valid: np.ndarray | torch.Tensor, y0: int = 0) -> torch.Tensor:
        """The coarse condition of a ``(C, h, w)`` patch at latitude row ``y0``: see ``coarsen``.

        Block means are weighted by cell area and validity (NaN points, 0 in ``x``, count for
        nothing); :meth:`sciddpm_climate.downscaling.DownscalingCondition.of_target` does the work.
        """
        if self.downscaling is None:
            raise ValueError("this source has no coarse condition: set coarsen (e.g. 4)")
        return self.downscaling.of_target(x, valid, y0)

    def __len__(self) -> int:
        return self.n_times * self.patches_per_time

    def __getitem__(self, index: int) -> Sample:
        index = int(index)
        if index < 0:
            index += len(self)
        t = self.locate(index)[0]
        return self._sample(self._block(t // self.time_block), index)

    # ------------------------------------------------------------------ bulk iteration

    def _plan(
        self, epoch: int, seed: int | None, rank: int, world_size: int, buffer_blocks: int | None
    ) -> list[tuple[list[int], np.ndarray]]:
        return reading.epoch_plan(
            self.n_times, self.time_block, self.patches_per_time, epoch=epoch,
            seed=self.config.seed if seed is None else seed, rank=rank, world_size=world_size,
            buffer_blocks=buffer_blocks or self.config.buffer_blocks,
        )  # fmt: skip

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

    @property
    def channel_units(self) -> list[str | None]:
        """The ``units`` attribute of each channel's variable (CF), None where it has none."""
        return [self.ds[v].attrs.get("units") for v, _ in self.channels]

    def statistics(self) -> dict[str, dict[str, float]]:
        """Per-channel count, mean, std, min, max over every valid value, one block at a time.

        Streaming and NaN-aware: block moments are merged with Chan, Golub & LeVeque (1979), so
        memory is one block whatever the store size. Computed once and kept (and put in the card),
        with :meth:`content_hash` from the same pass.
        """
        if self._stats is None:
            digest = hashlib.sha256()
            # What the values mean: channel names, the grid and the times, then static fields.
            header = {"channels": self.channel_names, "shape": [self.n_times, self.lat.size, self.lon.size]}
            digest.update(json.dumps(header, sort_keys=True).encode())
            digest.update(np.ascontiguousarray(self.lat, dtype="<f8").tobytes())
            digest.update(np.ascontiguousarray(self.lon, dtype="<f8").tobytes())
            digest.update(np.asarray(self.ds[self.axes.time].values).astype("U64").tobytes())
            if self.static_fields is not None:
                digest.update(np.ascontiguousarray(self.static_fields, dtype="<f4").tobytes())

            def hashed() -> Iterator[Block]:
                for b in range(self.n_blocks):
                    blk = self._read_block(b)
                    # Each time step's values (float32 little-endian) and validity mask, in time
                    # order, so the hash does not depend on how times are grouped into blocks.
                    for x, valid in zip(blk.x, blk.valid, strict=True):
                        digest.update(np.ascontiguousarray(x, dtype="<f4").tobytes())
                        digest.update(np.ascontiguousarray(valid, dtype=np.uint8).tobytes())
                    yield blk

            self._stats = reading.block_statistics(hashed(), self.channel_names)
            self._digest = digest.hexdigest()
        return self._stats

    def content_hash(self) -> str:
        """sha256 of the modelled channels' values (float32) and validity masks, in time order, with
        the channel names, the lat/lon grid, the times and the static fields.

        The same selection hashes alike however it is chunked or grouped into time blocks; a changed
        value, name, coordinate or time changes it. A separate coarse dataset (``coarse_path``) is
        not part of it. Computed in the pass of :meth:`statistics` (one read of the data); raises
        RuntimeError if that pass did not run.
        """
        self.statistics()
        if self._digest is None:
            raise RuntimeError("the statistics pass did not compute the content hash")
        return self._digest

    def describe(self) -> Mapping[str, Any]:
        """Provenance: the store, variables, grid (axes, extent, resolution), time range, patches,
        statistics and the content hash of the data served."""
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
            "content_hash": self.content_hash(),
        }

    # ------------------------------------------------------------------ native output

    def native_writer(
        self, path: str, n: int, *, index: int | None = None, info: Mapping[str, Any] | None = None
    ) -> Any:
        """A resumable zarr writer of ``n`` members for ``path``s ending in ``.zarr`` (else None).

        See :func:`sciddpm_climate.native.native_writer`.
        """
        return native.native_writer(self, path, n, index=index, info=info)

    def domain_metrics(self) -> list[str]:
        """Fair CRPS and the spread-skill ratio (WeatherBench 2's ensemble scores): ``sciddpm evaluate``."""
        return ["climate/crps", "climate/spread_skill"]

    def metric_inputs(self, members: Any, truth: Any, index: int) -> tuple[Any, Any]:
        """Members ``(M, C, h, w)`` and truth ``(C, h, w)`` as Datasets on sample ``index``'s patch and time.

        The climate metrics then weight by area and name the variables. For a residual source both
        stay residuals (CRPS and spread-skill do not change when the same field is added to both).
        """
        t, y0, x0 = self.locate(index)
        time = None if self.axes.time is None else self.ds[self.axes.time].values[t]
        coarse = np.zeros(tuple(truth.shape), np.float32) if self.config.residual else None
        ens, obs = (
            self.to_native(np.asarray(v, np.float32), origin=(y0, x0), time=time, coarse=coarse)
            for v in (members, truth[None])
        )
        return ens, obs.isel(realization=0, drop=True)

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

        Names, units and attributes are the source's, marked synthetic; a residual source adds
        ``coarse`` back. See :func:`sciddpm_climate.native.to_native`.
        """
        return native.to_native(self, x, origin=origin, time=time, model=model, coarse=coarse)
