"""``sciddpm demo climate``: the synthetic store is CF and realistic; the demo writes its outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from sciddpm.cli import main

from sciddpm_climate.demo import make_demo_dataset, run_demo


def test_synthetic_dataset_has_the_advertised_structure() -> None:
    ds = make_demo_dataset(years=1)
    assert ds.attrs["Conventions"] == "CF-1.8" and ds.tas.attrs["units"] == "K"
    assert (
        ds.lat.attrs["units"] == "degrees_north" and ds.sftlf.attrs["standard_name"] == "land_area_fraction"
    )
    land = ds.sftlf.values > 50
    assert 0.2 < land.mean() < 0.4
    # A land mask of NaNs in the ocean variable, nowhere else.
    np.testing.assert_array_equal(np.isnan(ds.tos.values).all(0), land)
    assert not np.isnan(ds.tas.values).any()
    # Latitudinal gradient, and a seasonal cycle of opposite phase in the two hemispheres.
    zonal = ds.tas.mean(("time", "lon"))
    assert zonal.sel(lat=0, method="nearest") > zonal.sel(lat=70, method="nearest") + 20
    monthly = ds.tas.groupby("time.month").mean()
    north = monthly.sel(lat=slice(40, 70)).mean(("lat", "lon"))
    south = monthly.sel(lat=slice(-70, -40)).mean(("lat", "lon"))
    assert north.sel(month=7) > north.sel(month=1) + 5 and south.sel(month=1) > south.sel(month=7) + 2
    # Lapse rate: over land, anomalies from the zonal mean fall with altitude.
    anomaly = (ds.tas.mean("time") - zonal).values[land]
    assert np.corrcoef(anomaly, ds.orog.values[land])[0, 1] < -0.3
    # Red spectrum: more energy at large scales than small ones.
    spec = np.abs(np.fft.rfft(ds.tas.isel(time=0).values - zonal.values[:, None], axis=1)) ** 2
    assert spec[:, 1:4].mean() > 10 * spec[:, 20:].mean()


@pytest.mark.parametrize("regression_steps", [0, 2])
def test_demo_writes_store_ensemble_figure_and_metrics(tmp_path, regression_steps) -> None:
    held = ["2003-01-01", "2003-01-02"]
    report = run_demo(
        tmp_path, steps=2, members=2, held_out=held, sample_steps=2, progress=False,
        regression_steps=regression_steps,
    )  # fmt: skip
    assert (tmp_path / "regression" / "regression.json").is_file() == bool(regression_steps)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["crps"] == report["crps"] and set(saved["crps"]) == {"tas", "tos"}
    for key in ("crps", "bilinear_mae", "spread_skill"):
        assert all(np.isfinite(v) and v > 0 for v in saved[key].values())
    assert (tmp_path / "downscaling.png").read_bytes()[:4] == b"\x89PNG"
    store = xr.open_zarr(tmp_path / "fields.zarr")
    assert store.tas.encoding["chunks"][0] == 32
    ens = xr.open_zarr(tmp_path / "ensemble.zarr", consolidated=False)
    assert dict(ens.tas.sizes) == {"realization": 2, "time": 2, "lat": 32, "lon": 64}
    assert int(ens.completed.sum()) == 4 and ens.attrs["synthetic"] == "yes"
    # The land mask is respected: the ensemble's tos is NaN exactly where the truth is.
    land = store.sftlf.values > 50
    np.testing.assert_array_equal(np.isnan(ens.tos.values).all(axis=(0, 1)), land)
    assert (tmp_path / "model" / "run.toml").is_file()


def test_cli_demo_names(capsys) -> None:
    assert main(["demo", "nosuch"]) == 1
    err = capsys.readouterr().err
    assert "no demo 'nosuch'" in err and "digits" in err and "climate" in err
