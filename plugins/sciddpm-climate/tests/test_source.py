"""The climate/xarray source: samples, masks, statistics, iteration, native output, errors, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from climate_data import make_dataset, normalised
from sciddpm.registry import reload_registry

from sciddpm_climate.geometry import grid_weights
from sciddpm_climate.source import GridMismatchError, XarraySource


def test_nan_becomes_zero_weight_times_area_weight() -> None:
    ds = make_dataset(nan=True)
    src = XarraySource.from_dataset(ds, variables=["tas", "pr"])
    ref = normalised(ds)
    s = src[0]
    expected = np.stack([ref.tas.isel(time=0).values, ref.pr.isel(time=0).values])
    valid = np.isfinite(expected)
    assert not valid.all() and torch.isfinite(s.x).all()
    np.testing.assert_array_equal(s.x.numpy()[valid], expected[valid])
    assert (s.x.numpy()[~valid] == 0).all()
    w = grid_weights(ref.lat.values)[:, None] * np.ones(ds.sizes["lon"])
    np.testing.assert_allclose(s.mask.numpy(), valid * w[None], rtol=1e-6)
    # The core's loss sum(err * mask) / sum(mask) is then the area-weighted mean over valid points.
    flat = XarraySource.from_dataset(ds, variables=["tas"], area_weighted=False)[0].mask
    np.testing.assert_array_equal(flat.numpy(), valid[:1].astype(np.float32))


def test_patches_levels_and_map_view() -> None:
    ds = make_dataset(nt=5, nlat=8, nlon=12, levels=[850.0, 500.0], nan=False)
    src = XarraySource.from_dataset(ds, variables=["tas", "ta"], levels=[500.0], patch=[4, 5], stride=[4, 4])
    assert src.channel_names == ["tas", "ta@500"]
    assert src.origins_lat == [0, 4] and src.origins_lon == [0, 4, 7]  # the last patch reaches the edge
    assert len(src) == 5 * 6 and src.sample_shape == (2, 4, 5)
    ref = normalised(ds)
    t, y0, x0 = src.locate(17)
    assert (t, y0, x0) == (2, 4, 7)
    win = {"time": t, "lat": slice(y0, y0 + 4), "lon": slice(x0, x0 + 5)}
    expected = np.stack([ref.tas.isel(win).values, ref.ta.sel(plev=500.0).isel(win).values])
    np.testing.assert_array_equal(src[17].x.numpy(), expected)
    with pytest.raises(KeyError, match=r"available levels are \[850.0, 500.0\]"):
        XarraySource.from_dataset(ds, variables=["ta"], levels=[700.0])


def test_statistics_streaming_match_numpy() -> None:
    ds = make_dataset(nt=7, nan=True)
    src = XarraySource.from_dataset(ds, variables=["tas", "pr"], time_block=3)
    stats = src.statistics()
    for v in ("tas", "pr"):
        a = ds[v].values.astype(np.float64)
        assert stats[v]["count"] == np.isfinite(a).sum()
        assert stats[v]["mean"] == pytest.approx(np.nanmean(a), rel=1e-6)
        assert stats[v]["std"] == pytest.approx(np.nanstd(a), rel=1e-5)
        assert stats[v]["min"] == pytest.approx(np.nanmin(a)) and stats[v]["max"] == pytest.approx(
            np.nanmax(a)
        )
    assert src.describe()["statistics"] == stats


def test_content_hash_follows_the_data_served() -> None:
    """Same data, other chunking: same hash; one changed value, or another variable: another hash."""
    ds = make_dataset(nt=7, nan=True)
    a = XarraySource.from_dataset(ds, variables=["tas", "pr"], time_block=3)
    b = XarraySource.from_dataset(ds, variables=["tas", "pr"], time_block=7)
    assert a.describe()["content_hash"] == b.content_hash() and len(a.content_hash()) == 64
    changed = ds.copy(deep=True)
    changed["tas"][3, 2, 2] = changed["tas"][3, 2, 2] + 0.5
    assert XarraySource.from_dataset(changed, variables=["tas", "pr"]).content_hash() != a.content_hash()
    assert XarraySource.from_dataset(ds, variables=["tas"]).content_hash() != a.content_hash()
    renamed = ds.rename({"pr": "precip"})  # the same values under another name
    assert XarraySource.from_dataset(renamed, variables=["tas", "precip"]).content_hash() != a.content_hash()
    later = ds.assign_coords(time=ds.indexes["time"].shift(1, "D"))  # the same values at other times
    assert XarraySource.from_dataset(later, variables=["tas", "pr"]).content_hash() != a.content_hash()


def test_iterator_is_seeded_covers_each_sample_once_and_shards_disjointly() -> None:
    ds = make_dataset(nt=11, nlat=8, nlon=12)
    src = XarraySource.from_dataset(ds, variables=["tas", "pr"], patch=[4, 4], time_block=2, buffer_blocks=2)
    n = len(src)
    order = src.epoch_order(epoch=0, seed=1)
    assert sorted(order.tolist()) == list(range(n))
    np.testing.assert_array_equal(order, src.epoch_order(epoch=0, seed=1))
    assert not np.array_equal(order, src.epoch_order(epoch=0, seed=2))
    assert not np.array_equal(order, src.epoch_order(epoch=1, seed=1))
    # The iterator yields exactly source[i] for i in epoch_order.
    samples = list(src.iter_samples(epoch=0, seed=1))
    assert len(samples) == n
    for i in (0, 7, n - 1):
        ref = src[int(order[i])]
        torch.testing.assert_close(samples[i].x, ref.x)
        torch.testing.assert_close(samples[i].mask, ref.mask)
    shards = [set(src.epoch_order(epoch=3, seed=1, rank=r, world_size=3).tolist()) for r in range(3)]
    assert sum(len(s) for s in shards) == n and set().union(*shards) == set(range(n))
    assert all(not (a & b) for i, a in enumerate(shards) for b in shards[i + 1 :])
    x, cond, mask = next(src.iter_batches(5, seed=1))
    assert x.shape == (5, 2, 4, 4) and mask.shape == x.shape and cond is None
    with pytest.raises(ValueError, match="rank"):
        src.epoch_order(rank=3, world_size=3)


def test_to_native_round_trip_of_coordinates_and_attributes() -> None:
    ds = make_dataset(levels=[850.0, 500.0], nan=False)
    src = XarraySource.from_dataset(ds, variables=["tas", "ta"])
    x = torch.stack([src[i].x for i in range(3)])
    out = src.to_native(x, model="runs/test", time=ds.time.values[0])
    ref = normalised(ds)
    assert set(out.data_vars) == {"tas", "ta"}
    assert out.tas.dims == ("realization", "lat", "lon") and out.ta.dims == (
        "realization",
        "plev",
        "lat",
        "lon",
    )
    assert out.sizes["realization"] == 3
    np.testing.assert_array_equal(out.lat.values, ref.lat.values)
    np.testing.assert_array_equal(out.lon.values, ref.lon.values)
    assert out.lat.attrs == ds.lat.attrs and out.plev.attrs == ds.plev.attrs
    assert out.tas.attrs == ds.tas.attrs and out.ta.attrs["units"] == "K"
    for i in range(3):
        np.testing.assert_array_equal(out.tas.isel(realization=i).values, ref.tas.isel(time=i).values)
        np.testing.assert_array_equal(out.ta.isel(realization=i).values, ref.ta.isel(time=i).values)
    assert out.attrs["synthetic"] == "yes" and "runs/test" in out.attrs["source"]
    assert out.attrs["title"] == ds.attrs["title"] and out.time.values == ds.time.values[0]
    with pytest.raises(ValueError, match="expects"):
        src.to_native(torch.zeros(1, 5, 8, 12))


def test_static_fields_and_time_conditions() -> None:
    ds = make_dataset(nan=False)
    src = XarraySource.from_dataset(ds, variables=["tas"], static=["orog"], time_features=True, patch=[4, 6])
    s = src[1]
    ref = normalised(ds)
    np.testing.assert_array_equal(s.condition["static"].numpy()[0], ref.orog.values[:4, 6:12])
    assert s.condition["time"].shape == (4,)


def test_bad_inputs_name_the_problem() -> None:
    ds = make_dataset()
    with pytest.raises(KeyError) as err:
        XarraySource.from_dataset(ds, variables=["tas", "zg"])
    assert "zg" in str(err.value) and "['tas', 'pr', 'orog']" in str(err.value)
    coarse = make_dataset(nlat=4, nlon=6).orog.to_dataset()
    with pytest.raises(GridMismatchError) as err:
        XarraySource.from_dataset(ds, static_dataset=coarse, variables=["tas"], static=["orog"])
    assert "(4, 6)" in str(err.value) and "(8, 12)" in str(err.value)
    with pytest.raises(ValueError, match="larger than the grid"):
        XarraySource.from_dataset(ds, patch=[16, 4])
    # Every variable whose dims differ from the modelled (time, [level,] lat, lon) grid is refused
    # at construction, naming it, its dims and the option to use.
    with pytest.raises(
        ValueError,
        match=r"'orog' has dimensions \('lat', 'lon'\), without the time axis 'time'.*static = \['orog'\]",
    ):
        XarraySource.from_dataset(ds, variables=["tas", "orog"])
    extra = ds.assign(ens=ds.tas.expand_dims(member=2))
    with pytest.raises(ValueError, match=r"'ens' has dimensions \('member', 'time', 'lat', 'lon'\)"):
        XarraySource.from_dataset(extra, variables=["ens"])
    other_grid = ds.assign(fine=(("time", "y", "x"), np.zeros((6, 3, 4), dtype=np.float32)))
    with pytest.raises(ValueError, match=r"'fine' has dimensions \('time', 'y', 'x'\)"):
        XarraySource.from_dataset(other_grid, variables=["fine"])
    with pytest.raises(ValueError, match="path"):
        XarraySource.from_dataset(None)


def test_zarr_store_netcdf_and_glob_paths(tmp_path) -> None:
    ds = make_dataset(nt=8, nan=True)
    ds.chunk({"time": 4}).to_zarr(tmp_path / "a.zarr")
    src = XarraySource.open(path=str(tmp_path / "a.zarr"), variables=["tas", "pr"])
    assert src.time_block == 4  # the store's time chunk
    ref = XarraySource.from_dataset(ds, variables=["tas", "pr"])
    for i in (0, 5):
        torch.testing.assert_close(src[i].x, ref[i].x)
    ds.isel(time=slice(0, 4)).to_netcdf(tmp_path / "p0.nc")
    ds.isel(time=slice(4, 8)).to_netcdf(tmp_path / "p1.nc")
    glob = XarraySource.open(path=str(tmp_path / "p*.nc"), variables=["tas", "pr"])
    assert len(glob) == 8
    torch.testing.assert_close(glob[6].x, ref[6].x)
    one = XarraySource.open(path=str(tmp_path / "p1.nc"), variables=["tas"])
    torch.testing.assert_close(one[1].x, ref[5].x[:1])
    with pytest.raises(FileNotFoundError):
        XarraySource.open(path=str(tmp_path / "missing.zarr"))


def test_plugin_is_discovered_and_trains_end_to_end(tmp_path) -> None:
    registry = reload_registry()
    assert "climate/xarray" in registry.names("data") and "climate/crps" in registry.names("metric")
    assert not registry.failures
    from sciddpm.training.trainer import train

    path = tmp_path / "tiny.zarr"
    make_dataset(nt=8, nlat=8, nlon=16).to_zarr(path)
    run = {
        "data": {"type": "climate/xarray", "path": str(path), "variables": ["tas", "pr"], "static": ["orog"],
                 "time_features": True, "patch": [8, 8]},
        "pipeline": {
            "encoder": {"type": "standardize"},
            "denoiser": {"type": "unet", "channels": [8, 16], "blocks_per_level": 1, "groups": 4, "heads": 1,
                         "mid_attention": False, "padding": ["reflect", "circular"]},
            "conditioner": {"type": "climate/fields", "static_channels": 1, "time_features": True, "dim": 8},
            "scheduler": {"type": "ddpm"},
        },
        "train": {"steps": 3, "batch_size": 4, "warmup_steps": 1, "log_every": 1, "checkpoint_every": 0},
    }  # fmt: skip
    pipe = train(run, tmp_path / "run", progress=False)
    src = XarraySource.open(path=str(path), variables=["tas", "pr"], static=["orog"],
                                    time_features=True, patch=[8, 8])  # fmt: skip
    cond = src[0].condition
    x = pipe.sample(2, [cond, cond], steps=2, seed=0)
    assert x.shape == (2, 2, 8, 8) and torch.isfinite(x).all()
    out = src.to_native(x, origin=src.locate(0)[1:], model=str(tmp_path / "run"))
    assert out.sizes["realization"] == 2 and out.tas.attrs["units"] == "K"
    # The model card records the source, with its per-variable statistics.
    text = " ".join(p.read_text() for p in (tmp_path / "run").iterdir() if p.suffix in (".md", ".json"))
    assert "climate/xarray" in text and "statistics" in text
    # sciddpm evaluate scores an ensemble per condition with the source's domain metrics.
    from sciddpm.pipeline.evaluation import evaluate_run
    from sciddpm.seeding import EVALUATION_ENSEMBLES, seed_for

    from sciddpm_climate.metrics import CRPSMetric

    report = evaluate_run(tmp_path / "run", n=4, steps=1, bootstrap=3, members=3, conditions=2,
                          metrics=["wasserstein"], progress=False)  # fmt: skip
    ens = report["ensembles"]
    assert set(ens["metrics"]) == {"climate/crps", "climate/spread_skill"}
    crps = []
    for k, index in enumerate(ens["indices"]):
        drawn = pipe.sample(
            3, src[index].condition, steps=1, seed=seed_for(EVALUATION_ENSEMBLES, 0, k)
        ).double()
        x, mask = src[index].x.double(), src[index].mask
        truth = torch.where(mask > 0, x, torch.full_like(x, float("nan")))  # missing values stay missing
        members, truth = src.metric_inputs(drawn, truth, index)
        assert members.sizes["realization"] == 3 and "realization" not in truth.dims
        crps.append(CRPSMetric()(members, truth))
    entry = ens["metrics"]["climate/crps"]  # one score per variable, averaged over the conditions
    for name in ("tas", "pr"):
        assert [c[name] for c in entry["per_condition"]] == pytest.approx([c[name] for c in crps], rel=1e-5)
        assert entry[name] == pytest.approx(np.mean([c[name] for c in crps]), rel=1e-5)


def test_trainer_follows_the_chunk_aware_order_reading_each_block_once(tmp_path) -> None:
    from sciddpm.training.trainer import Trainer

    ds = make_dataset(nt=32, nlat=8, nlon=8, nan=False)
    src = XarraySource.from_dataset(ds, variables=["tas"], time_block=4, buffer_blocks=2)
    reads: list[int] = []
    read = src._read_block
    src._read_block = lambda b: (reads.append(b), read(b))[1]  # count chunk reads
    run = {
        "pipeline": {"encoder": {"type": "identity"}, "scheduler": {"type": "ddpm"},
                     "denoiser": {"type": "unet", "channels": [8], "blocks_per_level": 1, "groups": 4,
                                  "heads": 1, "mid_attention": False}},
        "train": {"steps": 4, "batch_size": 8, "warmup_steps": 1, "log_every": 1, "checkpoint_every": 0},
    }  # fmt: skip
    trainer = Trainer(run, tmp_path / "run", source=src, progress=False)
    positions = [p for step in range(4) for p in trainer.positions(step, 0)]
    order = [trainer.order(p) for p in positions]  # one epoch: 32 samples
    assert sorted(order) == list(range(32)) and order != list(range(32))
    # Shuffled within groups of buffer_blocks=2 blocks (2 x 4 samples): every 8 positions, 2 blocks.
    for g in range(0, 32, 8):
        assert len({i // 4 for i in order[g : g + 8]}) == 2
    reads.clear()
    for step in range(4):
        trainer.micro_loss(step, 0)
    assert sorted(reads) == list(range(8))  # 8 blocks, each read once in the epoch


def test_discovery_imports_neither_xarray_nor_the_source_module() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from sciddpm.registry import reload_registry; r = reload_registry(); "
        "assert 'climate/xarray' in r.names('data'); "
        "heavy = [m for m in ('xarray', 'zarr', 'dask', 'sciddpm_climate.source') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_time_range_splits_training_and_held_out_times() -> None:
    ds = make_dataset(nt=8, calendar="standard", nan=False)  # 6-hourly from 2001-12-30
    src = XarraySource.from_dataset(ds, variables=["tas"], time_range=["2001-12-31", "2001-12-31T18"])
    assert src.n_times == 4 and len(src) == 4
    ref = normalised(ds).tas.isel(time=4).values
    np.testing.assert_array_equal(src[0].x[0].numpy(), ref)
    with pytest.raises(ValueError, match="selects no time") as err:
        XarraySource.from_dataset(ds, variables=["tas"], time_range=["2030-01-01", "2030-02-01"])
    assert "2001-12-30" in str(err.value)
