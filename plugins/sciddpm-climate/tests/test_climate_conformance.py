"""Every component of the climate plugin passes sciddpm's conformance kit (sciddpm.testing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from climate_data import make_dataset
from sciddpm.registry import get_registry
from sciddpm.testing import check_component

from sciddpm_climate.source import XarraySource

SOURCE = {"variables": ["tas", "pr"], "static": ["orog"], "time_features": True, "patch": [8, 8]}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("climate") / "tiny.zarr"
    make_dataset(nt=6, nlat=8, nlon=16).to_zarr(path)
    return path


def _passed(outcomes, *not_run: str) -> None:
    assert {o.check for o in outcomes if o.status == "not run"} == set(not_run), outcomes


def test_the_plugin_registers_only_checked_components() -> None:
    names = {e.full_name for e in get_registry().entries() if e.plugin == "climate"}
    checked = {"climate/xarray", "climate/fields"} | {f"climate/{m}" for m in METRICS}
    assert names == checked


@pytest.mark.parametrize("coarsen", [None, 4])
def test_xarray_source(store: Path, coarsen: int | None) -> None:
    outcomes = check_component("data", "climate/xarray", path=str(store), coarsen=coarsen, **SOURCE)
    _passed(outcomes, "class_labels")


def test_fields_conditioner(store: Path) -> None:
    source = XarraySource.open(path=str(store), coarsen=4, **SOURCE)
    params = {
        "coarse_channels": 2,
        "static_channels": 1,
        "time_features": True,
        "dim": 8,
        "data_shape": [2, 8, 8],
    }
    _passed(check_component("conditioner", "climate/fields", inputs=source, **params))


def _fields(members: int | None, seed: int) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    coords = {"time": np.arange(3), "lat": np.linspace(-80, 80, 9), "lon": np.arange(16) * 22.5}
    if members is None:
        return xr.DataArray(
            rng.standard_normal((3, 9, 16)), dims=("time", "lat", "lon"), coords=coords, name="tas"
        )
    data = rng.standard_normal((members, 3, 9, 16))
    return xr.DataArray(data, dims=("realization", "time", "lat", "lon"), coords=coords, name="tas")


#: Each metric's "perfect" generated data: an ensemble whose members all equal the truth.
METRICS = ("crps", "spread_skill", "rank_histogram", "rmse", "bias", "zonal_spectrum", "power_spectrum")


@pytest.mark.parametrize("name", METRICS)
def test_metrics(name: str) -> None:
    truth = _fields(None, seed=1)
    ensemble = _fields(5, seed=2) + truth
    perfect = xr.concat([truth] * 5, dim="realization")
    outcomes = check_component("metric", f"climate/{name}", inputs=(ensemble, truth, perfect))
    assert all(o.status != "fail" for o in outcomes)
