"""Downscaling: coarse-grained conditions, their standardisation, and ensembles of any size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from climate_data import make_dataset, normalised
from sciddpm.pipeline import Pipeline

from sciddpm_climate.conditioning import FieldsConditioner, FieldsConditionerConfig
from sciddpm_climate.downscaling import block_mean, coarse_field, upsample
from sciddpm_climate.source import GridMismatchError, XarraySource


def test_block_mean_is_the_weighted_mean_of_each_block() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 12))
    w = rng.uniform(0, 1, (2, 8, 12)) * (rng.uniform(size=(2, 8, 12)) > 0.3)
    w[0, :4, :4] = 0  # an empty block
    mean, den = block_mean(torch.tensor(x), torch.tensor(w), 4)
    xb = x.reshape(2, 2, 4, 3, 4).transpose(0, 1, 3, 2, 4).reshape(2, 2, 3, 16)
    wb = w.reshape(2, 2, 4, 3, 4).transpose(0, 1, 3, 2, 4).reshape(2, 2, 3, 16)
    with np.errstate(invalid="ignore"):
        ref = (xb * wb).sum(-1) / wb.sum(-1)
    np.testing.assert_allclose(mean.numpy(), np.nan_to_num(ref), rtol=1e-10)
    np.testing.assert_allclose(den.numpy(), wb.mean(-1), rtol=1e-10)
    with pytest.raises(ValueError, match=r"\(8, 12\) field does not divide into 5 x 5"):
        block_mean(torch.tensor(x), torch.tensor(w), 5)


def test_bilinear_upsampling_reproduces_a_linear_field_inside() -> None:
    # Block means of a linear field are its values at the block centres; bilinear interpolation
    # between centres gives the field back exactly, except in the half block at each edge (held).
    i, j = np.meshgrid(np.arange(16.0), np.arange(24.0), indexing="ij")
    field = torch.tensor(3.0 * i - 2.0 * j + 7.0)
    back = coarse_field(field, torch.ones_like(field), 4)
    torch.testing.assert_close(back[2:-2, 2:-2], field[2:-2, 2:-2])
    assert upsample(torch.zeros(3, 2, 5), 4).shape == (3, 8, 20)
    # NaN-aware: missing points (0 in x, weight 0) do not pull the coarse field towards 0.
    masked = field.clone()
    weight = torch.ones_like(field)
    masked[:4, :4], weight[:4, :4] = 0.0, 0.0
    filled = coarse_field(masked, weight, 4)
    assert filled[:4, :4].min() > 0
    # Missing blocks are left out of the interpolation: a constant ocean stays constant at the coast.
    # Cold sea in the first block row, warm in the last, land between: the sea next to each coast
    # keeps its own value (a filled land block would pull both towards the mean, 290).
    sea = torch.full((16, 24), 280.0)
    sea[12:] = 300.0
    land = torch.ones_like(sea)
    land[4:12] = 0.0
    out = coarse_field(sea * land, land, 4)
    torch.testing.assert_close(out[:4], sea[:4])
    torch.testing.assert_close(out[12:], sea[12:])


def _source(**kw):
    ds = make_dataset(nt=4, nlat=8, nlon=16, nan=True)
    return XarraySource.from_dataset(ds, variables=["tas", "pr"], patch=[8, 8], coarsen=4, **kw)


def test_source_gives_the_coarse_field_of_its_own_target() -> None:
    src = _source(static=["orog"])
    s = src[3]
    coarse = s.condition["coarse"]
    assert coarse.shape == s.x.shape == (2, 8, 8)
    _, y0, _ = src.locate(3)
    valid = (s.mask > 0).numpy()
    w = valid * src.weights[y0 : y0 + 8, None]
    mean, _ = block_mean(s.x.double(), torch.tensor(w, dtype=torch.float64), 4)
    # Beyond the outermost block centres bilinear holds the edge value: the corner is its block's mean.
    torch.testing.assert_close(coarse[:, 0, 0].double(), mean[:, 0, 0], rtol=1e-5, atol=1e-5)
    assert s.condition["static"].shape == (1, 8, 8) and s.condition["time"] is None
    assert src.describe()["coarsen"] == 4
    with pytest.raises(ValueError, match="multiple of 3"):
        XarraySource.from_dataset(make_dataset(nlat=8, nlon=16), patch=[8, 8], coarsen=3)


def test_conditioner_standardises_coarse_and_static_fields_and_checks_the_source() -> None:
    src = _source(static=["orog"])
    cond = FieldsConditioner(
        FieldsConditionerConfig(coarse_channels=2, static_channels=1, data_shape=[2, 8, 8])
    )
    cond.fit(src)
    stats = src.statistics()
    torch.testing.assert_close(
        cond.field_mean[:2], torch.tensor([stats["tas"]["mean"], stats["pr"]["mean"]], dtype=torch.float32)
    )
    torch.testing.assert_close(
        cond.field_mean[2], torch.tensor(src.static_fields.mean(), dtype=torch.float32)
    )
    raws = [src[i].condition for i in range(3)]
    c = cond(raws, 3).concat
    assert c.shape == (3, 3, 8, 8)
    ref = (raws[1]["coarse"][0] - stats["tas"]["mean"]) / stats["tas"]["std"]
    torch.testing.assert_close(c[1, 0], ref, rtol=1e-5, atol=1e-5)
    assert cond.null(2).concat.shape == (2, 3, 8, 8)
    wrong = FieldsConditioner(FieldsConditionerConfig(static_channels=1, data_shape=[2, 8, 8]))
    with pytest.raises(ValueError, match=r"coarse_channels=0.*gives 2 coarse channel"):
        wrong.fit(src)


def test_ensembles_of_any_size_from_one_coarse_condition() -> None:
    src = _source(time_features=True)
    run = {
        "encoder": {"type": "standardize"},
        "denoiser": {"type": "unet", "channels": [8, 16], "blocks_per_level": 1, "groups": 4, "heads": 1,
                     "mid_attention": False, "padding": ["reflect", "circular"]},
        "conditioner": {"type": "climate/fields", "coarse_channels": 2, "time_features": True, "dim": 8},
    }  # fmt: skip
    torch.manual_seed(0)
    pipe = Pipeline.from_config(run, src)
    assert pipe.denoiser.in_channels == 2 and pipe.conditioner.concat_channels == 2
    cond = src[5].condition
    ens = pipe.sample(7, cond, steps=2, seed=0, batch_size=3)
    assert ens.shape == (7, 2, 8, 8) and torch.isfinite(ens).all()
    torch.testing.assert_close(pipe.sample(2, cond, steps=2, seed=0), ens[:2])


def test_separate_coarse_dataset_is_upsampled_and_its_grid_checked() -> None:
    ds = make_dataset(nt=4, nlat=8, nlon=16, nan=False)
    coarse = ds[["tas", "pr"]].coarsen(lat=4, lon=4).mean()  # (2, 4) grid, same times
    src = XarraySource.from_dataset(
        ds, coarse_dataset=coarse, variables=["tas", "pr"], patch=[8, 8], coarsen=4, time_block=2
    )
    s = src[3]  # time 1, lon origin 8
    ref_coarse = normalised(coarse).isel(time=1)
    want = upsample(torch.tensor(np.stack([ref_coarse.tas.values, ref_coarse.pr.values]))[:, :, 2:4], 4)
    torch.testing.assert_close(s.condition["coarse"], want.float())
    with pytest.raises(GridMismatchError) as err:
        XarraySource.from_dataset(
            ds, coarse_dataset=ds.coarsen(lat=2, lon=2).mean(), variables=["tas"], coarsen=4
        )
    assert "(4, 8)" in str(err.value) and "(8, 16)" in str(err.value) and "(2, 4)" in str(err.value)
    with pytest.raises(ValueError, match="multiples of 4"):
        XarraySource.from_dataset(
            ds, coarse_dataset=coarse, variables=["tas"], patch=[8, 8], stride=[2, 2], coarsen=4
        )
    with pytest.raises(ValueError, match="needs coarsen"):
        XarraySource.from_dataset(ds, coarse_dataset=coarse, variables=["tas"])


def test_residual_source_models_target_minus_coarse_and_adds_it_back(tmp_path) -> None:
    from sciddpm_climate.ensemble import ZarrEnsembleWriter

    full, res = _source(), _source(residual=True)
    a, b = full[5], res[5]
    valid = b.mask > 0
    torch.testing.assert_close(b.x[valid] + b.condition["coarse"][valid], a.x[valid])
    assert (b.x[~valid] == 0).all() and res.describe()["residual"] is True
    native = res.to_native(b.x[None], origin=res.locate(5)[1:], coarse=b.condition["coarse"])
    np.testing.assert_allclose(native.tas.values[0][valid[0].numpy()], a.x[0][valid[0]].numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="pass coarse="):
        res.to_native(b.x[None])
    writer = ZarrEnsembleWriter(res, tmp_path / "r.zarr", 2, indices=[5])
    writer.write(0, torch.stack([b.x, torch.zeros_like(b.x)]))
    import xarray as xr

    ens = xr.open_zarr(tmp_path / "r.zarr", consolidated=False)
    # Member 1 is a zero residual: the coarse field itself, NaN where the data are missing.
    got = ens.pr.isel(realization=1, time=0).values
    want = np.where(valid[1].numpy(), b.condition["coarse"][1].numpy(), np.nan)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(ValueError, match="name the data sample"):
        ZarrEnsembleWriter(res, tmp_path / "s.zarr", 2)
    with pytest.raises(ValueError, match="set coarsen too"):
        XarraySource.from_dataset(make_dataset(), residual=True)
