"""Reading for the ``climate/xarray`` source: opening a dataset, decoding it, and the order of reads.

Stateless helpers of :class:`~sciddpm_climate.source.XarraySource`: opening a store lazily, the
normalised grid (latitude ascending, longitude wrapped to [0, 360)), the time range, the channel
layout (variables times levels), one chunk-aligned time block decoded onto that grid, the
chunk-aware order in which an epoch reads the blocks, the static fields checked against the
grid, time features, and streaming per-channel statistics. The source owns the state (the
block cache, the patches); these functions only read and compute.
"""

from __future__ import annotations

import glob as _glob
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from sciddpm_climate.axes import Axes, GridMismatchError, detect_axes, lon_order

__all__ = [
    "Block",
    "Grid",
    "block_statistics",
    "epoch_plan",
    "normalised_grid",
    "open_dataset",
    "read_block",
    "select_channels",
    "select_times",
    "static_fields",
    "store_time_chunk",
    "time_features",
]

#: A channel: (variable name, index into the level coordinate, or None for a variable without levels).
Channel = tuple[str, int | None]


def open_dataset(path: str) -> Any:
    """Open a zarr store, netCDF file or glob lazily (no data read) as an ``xarray.Dataset``.

    Raises FileNotFoundError for a missing path or a glob that matches nothing.
    """
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


def select_times(ds: Any, time: str | None, bounds: list[str], origin: str) -> Any:
    """``ds`` cut to the times in ``[first, last]`` of ``bounds`` (dates as strings, inclusive).

    Raises ValueError without a ``time`` dimension, for bounds that are not two dates, or when
    they select nothing (naming ``origin`` and its time span).
    """
    if len(bounds) != 2 or time is None:
        raise ValueError(
            f"time_range must be [first, last] dates on a dataset with a time axis, got {bounds} "
            f"(time axis: {time})"
        )
    times = ds[time]
    ds = ds.sel({time: slice(*bounds)})
    if ds.sizes[time] == 0:
        raise ValueError(
            f"time_range {bounds} selects no time of {origin!r}, whose times run from "
            f"{times.values[0]} to {times.values[-1]}"
        )
    return ds


class Grid(NamedTuple):
    """The normalised grid and the permutations that take the stored grid to it.

    ``lat`` ``(H,)`` ascending and ``lon`` ``(W,)`` in [0, 360), degrees, float64;
    ``lat_order``/``lon_order`` index the stored latitudes/longitudes.
    """

    lat: np.ndarray
    lon: np.ndarray
    lat_order: np.ndarray
    lon_order: np.ndarray


def normalised_grid(ds: Any, axes: Axes) -> Grid:
    """The normalised :class:`Grid` of ``ds``; ValueError without coordinate values or with repeats."""
    lat = np.asarray(ds[axes.lat].values, np.float64) if axes.lat in ds.coords else None
    lon = np.asarray(ds[axes.lon].values, np.float64) if axes.lon in ds.coords else None
    if lat is None or lon is None:
        raise ValueError(
            f"dimensions {axes.lat!r} and {axes.lon!r} need coordinate values in degrees "
            "(assign them with ds.assign_coords)"
        )
    lat_order = np.argsort(lat, kind="stable")
    if np.any(np.diff(lat[lat_order]) == 0):
        raise ValueError(f"latitude {axes.lat!r} has repeated values")
    lon_perm, lon_sorted = lon_order(lon)
    return Grid(lat[lat_order], lon_sorted, lat_order, lon_perm)


@dataclass
class Block:
    """One decoded time block: values with missing set to 0, and the validity mask.

    ``x`` is ``(T_b, C, H, W)`` float32 in the variables' own units on the normalised grid;
    ``valid`` is the same shape, bool, False where the data were NaN.
    """

    x: np.ndarray
    valid: np.ndarray


def select_channels(
    ds: Any,
    axes: Axes,
    variables: Sequence[str] | None,
    static: Sequence[str],
    levels: Sequence[float] | None,
    origin: str,
) -> tuple[list[str], list[Channel]]:
    """``(variables, channels)`` of ``ds``: the modelled variables and one channel per (variable, level).

    ``variables`` None takes every data variable on the (time, lat, lon) grid except ``static``;
    ``levels`` None keeps every level of a variable with a level axis. ``origin`` names the
    dataset in errors. Raises KeyError for a variable or level not in ``ds``, ValueError for a
    variable with other dimensions, none on the grid, or no time axis where the dataset has one
    (a time-invariant field belongs in ``static``).
    """
    names = list(ds.data_vars)
    grid = {axes.lat, axes.lon}
    if variables is None:
        chosen = [
            v for v in names if grid <= set(ds[v].dims) and v not in static
            and (axes.time is None or axes.time in ds[v].dims)
        ]  # fmt: skip
        if not chosen:
            raise ValueError(
                f"no data variable of {origin!r} lies on the ({axes.lat}, {axes.lon}) grid; "
                f"its variables are {names}"
            )
    else:
        missing = [v for v in variables if v not in ds.data_vars]
        if missing:
            raise KeyError(
                f"variable(s) {missing} not found in {origin!r}; the dataset's variables are {names}"
            )
        chosen = list(variables)
    allowed = {d for d in (axes.time, axes.level, axes.lat, axes.lon) if d is not None}
    channels: list[Channel] = []
    for v in chosen:
        dims = set(ds[v].dims)
        if axes.time is not None and axes.time not in dims and grid <= dims:
            # A time-invariant field would be read at every time step as if it varied; it is a
            # condition, not something to generate.
            raise ValueError(
                f"variable {v!r} has dimensions {ds[v].dims}, without the time axis {axes.time!r}: a "
                f"time-invariant field cannot be a modelled variable; give it as a condition instead, "
                f"static = [{v!r}] (and leave it out of variables)"
            )
        if not grid <= dims or not dims <= allowed:
            raise ValueError(
                f"variable {v!r} has dimensions {ds[v].dims}; a modelled variable needs "
                f"({axes.lat}, {axes.lon}), optionally {axes.time} and {axes.level or 'a level axis'}, "
                "and no others "
                "(select the rest away with ds.isel/sel first)"
            )
        if axes.level is not None and axes.level in dims:
            for k in _level_indices(ds, axes.level, levels):
                channels.append((v, k))
        else:
            channels.append((v, None))
    return chosen, channels


def _level_indices(ds: Any, level: str, levels: Sequence[float] | None) -> list[int]:
    values = np.asarray(ds[level].values, np.float64)
    if levels is None:
        return list(range(values.size))
    out = []
    for want in levels:
        hit = np.nonzero(np.isclose(values, want))[0]
        if hit.size == 0:
            raise KeyError(f"level {want} not in {level!r}; available levels are {values.tolist()}")
        out.append(int(hit[0]))
    return out


def store_time_chunk(var: Any, time: str | None) -> int | None:
    """Time steps per on-disk chunk of the DataArray ``var`` along dimension ``time``; None if unknown."""
    if time is None:
        return None
    dims = list(var.dims)
    chunks = (
        var.encoding.get("chunks") or var.encoding.get("chunksizes") or var.encoding.get("preferred_chunks")
    )
    if isinstance(chunks, Mapping):
        return int(chunks.get(time)) if chunks.get(time) else None
    if chunks and len(chunks) == len(dims):
        return int(chunks[dims.index(time)])
    if var.chunks:  # dask-backed (open_mfdataset)
        return int(var.chunks[dims.index(time)][0])
    return None


def read_block(
    ds: Any,
    axes: Axes,
    variables: Sequence[str],
    channels: Sequence[Channel],
    times: slice,
    lat_order: np.ndarray | None,
    lon_order: np.ndarray | None,
) -> Block:
    """Decode time steps ``times`` of every channel: one chunk-aligned read per variable.

    ``lat_order``/``lon_order`` permute the stored grid into the normalised one (None: already
    in order). Without a time axis the block has one time step whatever ``times``.
    """
    parts = []
    for v in variables:
        da = ds[v]
        tdim = axes.time if axes.time is not None else "__time__"
        da = da.isel({tdim: times}) if axes.time is not None else da.expand_dims(tdim)
        levels = [k for (name, k) in channels if name == v and k is not None]
        if levels:
            da = da.isel({axes.level: levels}).transpose(tdim, axes.level, axes.lat, axes.lon)
            a = np.asarray(da.values, dtype=np.float32)
        else:
            a = np.asarray(da.transpose(tdim, axes.lat, axes.lon).values, dtype=np.float32)[:, None]
        if lat_order is not None:
            a = a[:, :, lat_order]
        if lon_order is not None:
            a = a[:, :, :, lon_order]
        parts.append(a)
    x = np.concatenate(parts, axis=1) if len(parts) > 1 else np.ascontiguousarray(parts[0])
    valid = np.isfinite(x)
    if not valid.all():
        x[~valid] = 0.0
    return Block(x, valid)


def epoch_plan(
    n_times: int,
    time_block: int,
    per_time: int,
    *,
    epoch: int,
    seed: int,
    rank: int,
    world_size: int,
    buffer_blocks: int,
) -> list[tuple[list[int], np.ndarray]]:
    """One epoch of one rank: groups of ``buffer_blocks`` time blocks, each with its sample indices.

    Sample ``i`` is time ``i // per_time``; block ``b`` holds times ``[b * time_block, (b + 1) *
    time_block)``. The blocks are permuted with ``(seed, epoch)`` and dealt round-robin to ranks;
    each group's indices are shuffled. Raises ValueError unless ``0 <= rank < world_size``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank={rank} world_size={world_size}")
    n_blocks = -(-n_times // time_block)
    rng = np.random.default_rng([seed, epoch])
    # Blocks, not samples, are dealt to ranks: shards are disjoint and each rank reads only its chunks.
    blocks = rng.permutation(n_blocks)[rank::world_size]
    plan = []
    for g in range(0, len(blocks), buffer_blocks):
        group = [int(b) for b in blocks[g : g + buffer_blocks]]
        idx = np.concatenate([
            np.arange(b * time_block * per_time, min((b + 1) * time_block, n_times) * per_time) for b in group
        ])  # fmt: skip
        plan.append((group, idx[np.random.default_rng([seed, epoch, rank, g]).permutation(idx.size)]))
    return plan


def static_fields(
    sds: Any,
    names: Sequence[str],
    lat: np.ndarray,
    lon: np.ndarray,
    overrides: Mapping[str, str | None],
    target: Sequence[str],
) -> np.ndarray:
    """``(S, H, W)`` float32 static fields ``names`` of ``sds`` on the normalised grid, NaN set to 0.

    ``lat``/``lon`` are the target's normalised coordinates (degrees); ``overrides`` name the
    lat/lon dimensions of ``sds``; ``target`` (the modelled variables) only words the error.
    Raises KeyError for a missing field, :class:`GridMismatchError` when ``sds`` is on another
    grid, ValueError for a field with dimensions besides (lat, lon).
    """
    missing = [v for v in names if v not in sds.data_vars]
    if missing:
        raise KeyError(
            f"static variable(s) {missing} not found; the dataset's variables are {list(sds.data_vars)}"
        )
    s_axes = detect_axes(sds, overrides)
    s_lat = np.sort(np.asarray(sds[s_axes.lat].values, np.float64))
    s_lon = lon_order(sds[s_axes.lon].values)[1]
    if (s_lat.size, s_lon.size) != (lat.size, lon.size) or not (
        np.allclose(s_lat, lat) and np.allclose(s_lon, lon)
    ):
        raise GridMismatchError(
            f"static fields {list(names)} are on a ({s_lat.size}, {s_lon.size}) (lat, lon) grid but the "
            f"target variables {list(target)} are on ({lat.size}, {lon.size})"
            + ("" if (s_lat.size, s_lon.size) != (lat.size, lon.size) else " with other coordinates")
            + "; regrid the static fields to the target grid first (e.g. ds.interp_like)"
        )
    fields = []
    for v in names:
        da = sds[v]
        extra = [d for d in da.dims if d not in (s_axes.lat, s_axes.lon)]
        if extra:
            raise ValueError(f"static variable {v!r} has extra dimensions {extra}; select them away")
        a = np.asarray(da.transpose(s_axes.lat, s_axes.lon).values, np.float32)
        a = a[np.argsort(sds[s_axes.lat].values, kind="stable")][:, lon_order(sds[s_axes.lon].values)[0]]
        fields.append(np.nan_to_num(a, nan=0.0))
    return np.stack(fields)


def block_statistics(blocks: Iterable[Block], names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per-channel count, mean, std, min, max over every valid value of ``blocks``, keyed by ``names``.

    Streaming and NaN-aware: block moments are merged with Chan, Golub & LeVeque (1979), so
    memory is one block whatever the number of blocks. Values in the data's units.
    """
    c = len(names)
    count, mean, m2 = np.zeros(c), np.zeros(c), np.zeros(c)
    lo, hi = np.full(c, np.inf), np.full(c, -np.inf)
    for blk in blocks:
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
    return {
        name: {"count": int(count[i]), "mean": float(mean[i]), "std": float(std[i]),
               "min": float(lo[i]), "max": float(hi[i])}
        for i, name in enumerate(names)
    }  # fmt: skip
