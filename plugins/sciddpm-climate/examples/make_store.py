"""Write a small synthetic CF zarr store for examples/fields.toml: python make_store.py fields.zarr"""

from __future__ import annotations

import sys

import numpy as np
import xarray as xr


def main(path: str, n_time: int = 64) -> None:
    rng = np.random.default_rng(0)
    lat = np.linspace(88.75, -88.75, 72)  # descending, as in ERA5
    lon = np.arange(144) * 2.5 - 180.0  # [-180, 180): the source wraps it to [0, 360)
    time = xr.date_range("2000-01-01", periods=n_time, freq="6h", calendar="noleap", use_cftime=True)
    season = np.cos(2 * np.pi * np.arange(n_time) / (4 * 365))[:, None, None]
    la, lo = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    tas = 288 - 40 * np.sin(la) ** 2 + 10 * season * np.sin(la) + rng.standard_normal((n_time, *la.shape))
    pr = rng.gamma(1.5, 2e-5, (n_time, *la.shape))
    orog = np.clip(2000 * np.sin(3 * lo) * np.cos(2 * la), 0, None)
    tas[:, orog > 1500] = np.nan  # missing values travel as a mask
    ds = xr.Dataset(
        {
            "tas": (
                ("time", "lat", "lon"),
                tas.astype(np.float32),
                {"units": "K", "standard_name": "air_temperature"},
            ),
            "pr": (("time", "lat", "lon"), pr.astype(np.float32), {"units": "kg m-2 s-1"}),
            "orog": (
                ("lat", "lon"),
                orog.astype(np.float32),
                {"units": "m", "standard_name": "surface_altitude"},
            ),
        },
        coords={
            "time": time,
            "lat": ("lat", lat, {"units": "degrees_north", "standard_name": "latitude"}),
            "lon": ("lon", lon, {"units": "degrees_east", "standard_name": "longitude"}),
        },
        attrs={"title": "synthetic example fields", "Conventions": "CF-1.8"},
    )
    ds.chunk({"time": 16}).to_zarr(path, mode="w")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "fields.zarr")
