"""CorrDiff-style regression mean: it learns, saves/loads exactly, and the source takes residuals from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from climate_data import make_dataset

from sciddpm_climate.downscaling import coarse_field
from sciddpm_climate.regression import RegressionConfig, RegressionMean, train_regression
from sciddpm_climate.source import XarraySource

PARAMS = {"variables": ["tas"], "static": ["orog"], "patch": [8, 8], "coarsen": 4}


def _dataset():
    ds = make_dataset(nt=6, nlat=8, nlon=16, nan=False)
    # A fine-scale part that the orography determines: the regression can learn it, bilinear cannot.
    ds["tas"] = ds.tas * 0 + 280 - 0.01 * ds.orog
    return ds


def test_regression_learns_the_predictable_fine_scale_and_round_trips(tmp_path) -> None:
    ds = _dataset()
    src = XarraySource.from_dataset(ds, **PARAMS)
    cfg = RegressionConfig(channels=[8, 16], groups=4, steps=150, batch_size=4, lr=5e-3)
    model = train_regression(src, tmp_path / "reg", cfg)
    s = src[1]
    with torch.no_grad():
        pred = model(s.condition)
    bilinear = coarse_field(s.x, torch.ones_like(s.x), 4)
    err_model = (pred - s.x).abs().mean()
    err_bilinear = (bilinear - s.x).abs().mean()
    assert err_model < 0.5 * err_bilinear
    again = RegressionMean.load(tmp_path / "reg")
    with torch.no_grad():
        torch.testing.assert_close(again(s.condition), pred)
        batch = {k: torch.stack([src[i].condition[k] for i in (0, 1)]) for k in ("coarse", "static")}
        torch.testing.assert_close(again({**batch, "time": None})[1], pred)

    res = XarraySource.from_dataset(ds, residual=True, regression=str(tmp_path / "reg"), **PARAMS)
    r = res[1]
    torch.testing.assert_close(r.condition["mean"], pred)
    torch.testing.assert_close(r.x + r.condition["mean"], s.x, rtol=1e-5, atol=1e-4)
    # The ensemble writer adds the regression mean back: a zero residual is the mean itself.
    from sciddpm_climate.ensemble import ZarrEnsembleWriter

    ZarrEnsembleWriter(res, tmp_path / "e.zarr", 1, indices=[1]).write(0, torch.zeros(1, 1, 8, 8))
    ens = xr.open_zarr(tmp_path / "e.zarr", consolidated=False)
    np.testing.assert_allclose(ens.tas.values[0, 0], pred[0].numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="set residual = true"):
        XarraySource.from_dataset(ds, regression=str(tmp_path / "reg"), **PARAMS)
    with pytest.raises(ValueError, match="was trained on"):
        XarraySource.from_dataset(
            ds, residual=True, regression=str(tmp_path / "reg"), **{**PARAMS, "patch": [8, 16]}
        )
    with pytest.raises(FileNotFoundError, match=r"regression\.json is missing"):
        RegressionMean.load(tmp_path)
    assert np.isfinite(model.last_loss)


def test_a_regression_saved_by_0_1_still_loads_and_predicts_the_same() -> None:
    from pathlib import Path

    fixture = Path(__file__).parent / "fixtures" / "regression_v0_1"
    ds = make_dataset(nt=6, nlat=8, nlon=16, nan=False)
    src = XarraySource.from_dataset(ds, variables=["tas"], static=["orog"], patch=[8, 8], coarsen=4)
    model = RegressionMean.load(fixture)
    assert model.config.weight_decay == 0.01 and model.config.warmup_steps == 0  # the 0.1.0 behaviour
    with torch.no_grad():
        np.testing.assert_allclose(
            model(src[1].condition).numpy(), np.load(fixture / "expected_mean.npy"), rtol=1e-6
        )
