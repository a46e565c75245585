"""Axis detection and normalisation, area weights, and circular padding with the core U-Net."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from climate_data import make_dataset, normalised
from sciddpm.registry import get_registry

from sciddpm_climate.axes import AxisError, detect_axes, lon_order
from sciddpm_climate.geometry import UNET_PADDING, area_weights, cell_edges, grid_weights, unet_padding
from sciddpm_climate.source import XarraySource


def test_descending_lat_lon180_noleap_are_normalised() -> None:
    ds = make_dataset(descending=True, lon180=True, calendar="noleap", nan=False)
    src = XarraySource.from_dataset(ds, variables=["tas", "pr"])
    ref = normalised(ds)
    assert np.all(np.diff(src.lat) > 0) and np.allclose(src.lat, ref.lat)
    assert np.all((src.lon >= 0) & (src.lon < 360)) and np.allclose(src.lon, ref.lon)
    for t in range(ds.sizes["time"]):
        expected = np.stack([ref.tas.isel(time=t).values, ref.pr.isel(time=t).values])
        np.testing.assert_array_equal(src[t].x.numpy(), expected)
    # noleap calendar: 2001-12-30 + 2 days 00:00 is 1 January, year fraction 0, day fraction 0.
    long = make_dataset(nt=12, calendar="noleap")
    feats = XarraySource.from_dataset(long, variables=["tas"], time_features=True).time_feats
    # Order: sin/cos of the year fraction, then sin/cos of the day fraction.
    np.testing.assert_allclose(feats[8], [0.0, 1.0, 0.0, 1.0], atol=1e-6)
    year = 2 * np.pi * 0.5 / 365  # 12:00 on 1 January of a 365-day year
    np.testing.assert_allclose(feats[10], [np.sin(year), np.cos(year), 0.0, -1.0], atol=1e-6)


def test_detection_by_attributes_and_names() -> None:
    ds = make_dataset().rename({"lat": "latitude", "lon": "longitude"})
    assert detect_axes(ds).lat == "latitude" and detect_axes(ds).lon == "longitude"
    # Attributes win over names: a dim called "y" with standard_name latitude.
    ds2 = make_dataset().rename({"lat": "y", "lon": "x"})
    ax = detect_axes(ds2)
    assert (ax.lat, ax.lon, ax.time) == ("y", "x", "time")
    ds3 = make_dataset(levels=[850.0, 500.0])
    assert detect_axes(ds3).level == "plev"


def test_non_cf_store_needs_and_accepts_explicit_names(tmp_path) -> None:
    rng = np.random.default_rng(0)
    ds = xr.Dataset(
        {"field": (("step", "row", "col"), rng.standard_normal((4, 6, 8)).astype(np.float32))},
        coords={"row": np.linspace(-75, 75, 6), "col": np.arange(8) * 45.0, "step": np.arange(4)},
    )
    path = tmp_path / "noncf.zarr"
    ds.to_zarr(path)
    with pytest.raises(AxisError) as err:
        XarraySource.from_dataset(ds)
    msg = str(err.value)
    assert "['step', 'row', 'col']" in msg and "lat=" in msg and "lon=" in msg
    src = XarraySource.open(path=str(path), lat="row", lon="col", time="step")
    assert len(src) == 4 and src.sample_shape == (1, 6, 8)
    np.testing.assert_array_equal(src[3].x[0].numpy(), ds.field.isel(step=3).values)


def test_area_weights_closed_form_symmetry_and_mean() -> None:
    np.testing.assert_allclose(cell_edges([-60, 0, 60]), [-90, -30, 30, 90])
    # Bands [-90,-30], [-30,30], [30,90]: sin differences 0.5, 1, 0.5 -> mean-1 weights 0.75, 1.5, 0.75.
    np.testing.assert_allclose(area_weights([-60, 0, 60]), [0.75, 1.5, 0.75])
    lat = np.linspace(-89.5, 89.5, 180)
    w = area_weights(lat)
    assert w.mean() == pytest.approx(1.0) and np.allclose(w, w[::-1])
    # 1-degree cells: relative area is exactly sin(lat+0.5) - sin(lat-0.5) over the mean.
    exact = np.sin(np.deg2rad(lat + 0.5)) - np.sin(np.deg2rad(lat - 0.5))
    np.testing.assert_allclose(w, exact / exact.mean(), rtol=1e-12)
    np.testing.assert_allclose(area_weights(lat[::-1]), w[::-1])  # descending input, same cells
    # Grids including the poles (ERA5-style -90..90): cells at the poles are half-height caps.
    wp = area_weights(np.linspace(-90, 90, 181))
    assert wp[0] == pytest.approx(wp[-1]) and wp[0] < wp[1] / 2
    # A regional grid is not stretched to the poles.
    reg = grid_weights(np.linspace(30, 60, 31))
    assert reg.mean() == pytest.approx(1.0) and reg[0] > reg[-1]
    with pytest.raises(ValueError, match="monotonic"):
        area_weights([0, 10, 5])


def _unet(padding):
    spec = {
        "type": "unet", "channels": [8, 16, 16], "blocks_per_level": 1, "groups": 4, "heads": 1,
        "mid_attention": False, "dims": 2, "in_channels": 2, "padding": padding,
    }  # fmt: skip
    torch.manual_seed(0)
    net = get_registry().build("denoiser", spec).eval()
    with torch.no_grad():  # zero-initialised output layers would make every output 0
        for p in net.parameters():
            if bool((p == 0).all()):
                p.normal_(0.0, 0.2)
    return net


def test_circular_longitude_padding_commutes_with_shifts() -> None:
    assert unet_padding() == UNET_PADDING == ["reflect", "circular"]
    net = _unet(unet_padding())
    x = torch.randn(1, 2, 8, 16)
    noise = torch.tensor([0.3])
    shift = net.multiple  # the U-Net's total downsampling
    with torch.no_grad():
        out = net(x, noise)
        assert out.abs().mean() > 1e-2
        for k in (shift, 2 * shift):
            shifted = net(torch.roll(x, k, dims=-1), noise)
            torch.testing.assert_close(shifted, torch.roll(out, k, dims=-1), atol=1e-5, rtol=1e-5)
    # Control: with zero padding in longitude the property does not hold.
    zeros = _unet(["reflect", "zeros"])
    with torch.no_grad():
        diff = zeros(torch.roll(x, shift, dims=-1), noise) - torch.roll(zeros(x, noise), shift, dims=-1)
    assert diff.abs().max() > 1e-3


def test_longitude_order_global_and_regional_across_the_prime_meridian() -> None:
    order, lon = lon_order(np.arange(-180, 180, 30.0))
    np.testing.assert_array_equal(lon, np.arange(0, 360, 30.0))
    # Europe, -10..30: kept contiguous across 0 rather than split to 0..30 + 350..355.
    order, lon = lon_order(np.arange(-10, 31, 5.0))
    np.testing.assert_array_equal(lon, [350, 355, 0, 5, 10, 15, 20, 25, 30])
    np.testing.assert_array_equal(order, np.arange(9))
    # A regional domain not crossing 0 is simply sorted.
    np.testing.assert_array_equal(lon_order([250.0, 240.0, 230.0])[1], [230, 240, 250])
    with pytest.raises(AxisError, match="repeat"):
        lon_order([-180.0, 0.0, 180.0])
