"""Climate metrics against scoringrules and closed forms, with masks and latitude weights."""

from __future__ import annotations

import numpy as np
import pytest
import scoringrules as sr
import xarray as xr
from sciddpm.registry import get_registry

from sciddpm_climate.geometry import grid_weights
from sciddpm_climate.metrics import (
    crps_ensemble,
    radial_power_spectrum,
    rank_histogram,
    zonal_energy_spectrum,
)

LAT = np.linspace(-80, 80, 9)
LON = np.arange(16) * 22.5


def _fields(members: int | None, n_time: int = 4, seed: int = 0, scale: float = 1.0, center=None):
    rng = np.random.default_rng(seed)
    shape = (n_time, LAT.size, LON.size)
    coords = {"time": np.arange(n_time), "lat": LAT, "lon": LON}
    if members is None:
        return xr.DataArray(
            rng.standard_normal(shape), dims=("time", "lat", "lon"), coords=coords, name="tas"
        )
    data = rng.standard_normal((members, *shape)) * scale + (0 if center is None else center)
    return xr.DataArray(data, dims=("realization", "time", "lat", "lon"), coords=coords, name="tas")


def _metric(name: str, **params):
    return get_registry().build("metric", {"type": f"climate/{name}", **params})


def _wmean(a: np.ndarray, lat_axis: int) -> float:
    w = np.expand_dims(grid_weights(LAT), tuple(i for i in range(a.ndim) if i != lat_axis))
    w = np.broadcast_to(w, a.shape) * np.isfinite(a)
    return float(np.nansum(a * w) / w.sum())


def test_fair_crps_matches_scoringrules_and_is_area_weighted() -> None:
    ens, obs = _fields(7, seed=1), _fields(None, seed=2)
    pointwise = crps_ensemble(ens, obs)
    ref = sr.crps_ensemble(obs.values, np.moveaxis(ens.values, 0, -1), estimator="fair", backend="numpy")
    np.testing.assert_allclose(pointwise.values, ref, rtol=1e-10)
    obs_nan = obs.copy()
    obs_nan[0, 2, 3] = np.nan
    score = _metric("crps")(ens, obs_nan)
    ref_nan = ref.copy()
    ref_nan[0, 2, 3] = np.nan
    assert score == pytest.approx(_wmean(ref_nan, lat_axis=1), rel=1e-10)
    # A Dataset gives one value per variable; a member's NaN masks the point too.
    ens_nan = ens.copy()
    ens_nan[3, 0, 2, 3] = np.nan
    out = _metric("crps")(ens_nan.to_dataset(), obs.to_dataset())
    assert out == {"tas": pytest.approx(score, rel=1e-10)}


def test_spread_skill_closed_forms() -> None:
    # Exchangeable: truth and members drawn from the same N(mu, 1): expected ratio 1.
    rng = np.random.default_rng(0)
    mu = rng.standard_normal((200, LAT.size, LON.size)) * 3
    ens, obs = _fields(5, 200, seed=1, center=mu), _fields(None, 200, seed=2) + mu
    assert _metric("spread_skill")(ens, obs) == pytest.approx(1.0, abs=0.03)
    # Under-dispersed members (std s): ratio = sqrt(1 + 1/M) s / sqrt(1 + s^2 / M).
    m, s = 5, 0.5
    ens = _fields(m, 200, seed=3, scale=s, center=mu)
    expected = np.sqrt(1 + 1 / m) * s / np.sqrt(1 + s**2 / m)
    assert _metric("spread_skill")(ens, obs) == pytest.approx(expected, rel=0.04)


def test_rank_histogram_flat_for_exchangeable_and_u_shaped_when_underdispersed() -> None:
    ens, obs = _fields(4, 300, seed=4), _fields(None, 300, seed=5)
    hist = rank_histogram(ens, obs, "lat")
    assert hist.shape == (5,) and hist.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(hist, 0.2, atol=0.02)
    out = _metric("rank_histogram")(ens, obs)
    assert out["deviation"] < 0.1 and out["rank_0"] == pytest.approx(hist[0])
    narrow = rank_histogram(_fields(4, 300, seed=4, scale=0.3), obs, "lat")
    assert narrow[0] > 0.35 and narrow[-1] > 0.35 and narrow[2] < 0.1
    # Ties (discrete data, e.g. zero precipitation) are broken at random: still flat.
    zeros = rank_histogram(_fields(4, 50) * 0, _fields(None, 50) * 0, "lat")
    np.testing.assert_allclose(zeros, 0.2, atol=0.03)


def test_rmse_and_bias_latitude_weighted_with_mask() -> None:
    ref = _fields(None, seed=6)
    err = xr.DataArray(np.linspace(-1, 2, LAT.size), dims="lat", coords={"lat": LAT})
    gen = ref + err
    ref_nan = ref.where(~((ref.lat == LAT[0]) & (ref.lon == 0)))
    w = grid_weights(LAT)
    assert _metric("rmse")(gen, ref) == pytest.approx(np.sqrt(np.sum(w * err.values**2) / w.sum()))
    assert _metric("bias")(gen, ref) == pytest.approx(np.sum(w * err.values) / w.sum())
    e = np.broadcast_to(err.values[None, :, None], ref.shape).copy()
    e[np.isnan(ref_nan.values)] = np.nan
    assert _metric("bias")(gen, ref_nan) == pytest.approx(_wmean(e, lat_axis=1))
    # An ensemble is scored by its mean.
    ens = xr.concat([gen - 1, gen + 1], "realization")
    assert _metric("rmse")(ens, ref) == pytest.approx(_metric("rmse")(gen, ref))


def test_zonal_spectrum_parseval_and_peak() -> None:
    amp, k = 2.0, 3
    wave = amp * np.cos(k * np.deg2rad(LON))[None, :] * np.ones((LAT.size, 1))
    da = xr.DataArray(wave + 1.0, dims=("lat", "lon"), coords={"lat": LAT, "lon": LON})
    spec = zonal_energy_spectrum(da, "lat", "lon")
    assert spec.sel(wavenumber=k) == pytest.approx(amp**2 / 2) and spec.sel(wavenumber=0) == pytest.approx(
        1.0
    )
    noise = _fields(None, seed=7)
    s = zonal_energy_spectrum(noise, "lat", "lon")
    assert float(s.sum()) == pytest.approx(_wmean(noise.values**2, lat_axis=1))
    assert _metric("zonal_spectrum")(noise, noise) == 0.0
    assert _metric("zonal_spectrum")(noise * 2, noise) == pytest.approx(np.log10(4))


def test_radial_power_spectrum_peak_and_distance() -> None:
    _, x = np.meshgrid(np.arange(LAT.size), np.arange(LON.size), indexing="ij")
    wave = xr.DataArray(
        np.cos(2 * np.pi * 4 * x / LON.size), dims=("lat", "lon"), coords={"lat": LAT, "lon": LON}
    )
    spec = radial_power_spectrum(wave, "lat", "lon")
    assert int(np.argmax(spec.values)) == 4
    noise = _fields(None, seed=8)
    assert _metric("power_spectrum")(noise, noise) == 0.0
    assert _metric("power_spectrum")(noise * 10, noise) == pytest.approx(2.0)


def test_metric_input_errors() -> None:
    obs = _fields(None)
    with pytest.raises(ValueError, match="realization"):
        _metric("crps")(obs, obs)
    with pytest.raises(KeyError, match="lack variable"):
        _metric("rmse")(obs.rename("pr").to_dataset(), obs.to_dataset())
    with pytest.raises(TypeError, match="xarray"):
        _metric("rmse")(obs.values, obs)
