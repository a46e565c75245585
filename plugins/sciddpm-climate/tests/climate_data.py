"""Tiny synthetic CF datasets built in memory, shared by the climate tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr


def make_dataset(
    nt: int = 6,
    nlat: int = 8,
    nlon: int = 12,
    *,
    descending: bool = True,
    lon180: bool = True,
    calendar: str = "noleap",
    nan: bool = True,
    levels: list[float] | None = None,
    seed: int = 0,
) -> xr.Dataset:
    """Two variables (``tas``, ``pr``; plus ``ta`` on levels), CF attributes, optional NaN land."""
    rng = np.random.default_rng(seed)
    step = 180 / nlat
    lat = np.linspace(-90 + step / 2, 90 - step / 2, nlat)
    lat = lat[::-1] if descending else lat
    lon = np.arange(nlon) * 360 / nlon
    lon = np.where(lon >= 180, lon - 360, lon) if lon180 else lon
    time = xr.date_range(
        "2001-12-30", periods=nt, freq="6h", calendar=calendar, use_cftime=calendar != "standard"
    )
    tas = 280 + 10 * rng.standard_normal((nt, nlat, nlon)).astype(np.float32)
    pr = rng.gamma(2.0, 1e-5, (nt, nlat, nlon)).astype(np.float32)
    if nan:
        tas[:, 1, 2] = np.nan  # a missing point, e.g. land in an ocean field
    data: dict[str, Any] = {
        "tas": (("time", "lat", "lon"), tas, {"units": "K", "standard_name": "air_temperature"}),
        "pr": (("time", "lat", "lon"), pr, {"units": "kg m-2 s-1", "long_name": "precipitation"}),
        "orog": (("lat", "lon"), rng.uniform(0, 3000, (nlat, nlon)).astype(np.float32), {"units": "m"}),
    }
    coords: dict[str, Any] = {
        "time": ("time", time, {"standard_name": "time"}),
        "lat": ("lat", lat, {"units": "degrees_north", "standard_name": "latitude"}),
        "lon": ("lon", lon, {"units": "degrees_east", "standard_name": "longitude"}),
    }
    if levels is not None:
        coords["plev"] = ("plev", np.asarray(levels), {"units": "hPa", "positive": "down"})
        ta = 250 + rng.standard_normal((nt, len(levels), nlat, nlon)).astype(np.float32)
        data["ta"] = (("time", "plev", "lat", "lon"), ta, {"units": "K"})
    return xr.Dataset(data, coords=coords, attrs={"title": "tiny synthetic test data"})


def normalised(ds: xr.Dataset) -> xr.Dataset:
    """The reference normalisation, done with xarray: lat ascending, lon in [0, 360) sorted."""
    return ds.assign_coords(lon=np.mod(ds.lon, 360)).sortby("lat").sortby("lon")
