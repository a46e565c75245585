"""Resumable ensemble output: interrupted writes continue to the same store as an uninterrupted run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from climate_data import make_dataset, normalised
from sciddpm.config import dump_run, load_run
from sciddpm.pipeline import Pipeline

from sciddpm_climate.ensemble import ZarrEnsembleWriter
from sciddpm_climate.source import XarraySource

TINY = {
    "encoder": {"type": "standardize"},
    "denoiser": {"type": "unet", "channels": [8, 16], "blocks_per_level": 1, "groups": 4, "heads": 1,
                 "mid_attention": False, "padding": ["reflect", "circular"]},
    "conditioner": {"type": "climate/fields", "static_channels": 1, "time_features": True, "dim": 8},
    "scheduler": {"type": "ddpm"},  # stochastic: per-step noise must follow (seed, i) too
}  # fmt: skip
STEPS = 3


class Interrupted(Exception):
    pass


def _setup(tmp_path):
    ds = make_dataset(nt=6, nlat=8, nlon=12, nan=False)
    store = tmp_path / "fields.zarr"
    ds.to_zarr(store)
    params = {"variables": ["tas", "pr"], "static": ["orog"], "time_features": True, "patch": [8, 8]}
    src = XarraySource.open(str(store), **params)
    torch.manual_seed(0)
    pipe = Pipeline.from_config(TINY, src)
    return ds, store, params, src, pipe


def test_interrupted_ensemble_resumes_to_the_uninterrupted_store(tmp_path) -> None:
    ds, _, _, src, pipe = _setup(tmp_path)
    index = 3  # time 1, lon origin 4
    cond = src[index].condition
    info = {"model": "runs/tiny", "seed": 5, "steps": STEPS}
    opts = {"steps": STEPS, "seed": 5}

    ref = ZarrEnsembleWriter(src, tmp_path / "ref.zarr", 5, indices=[index], info=info)
    assert ref.completed() == set()
    assert pipe.sample_into(ref, 5, cond, chunk=2, **opts) == [0, 1, 2, 3, 4]

    # Interrupt after 3 members: the writer raises on the chunk that starts at member 3.
    path = tmp_path / "ens.zarr"
    writer = ZarrEnsembleWriter(src, path, 5, indices=[index], info=info)
    real_write = writer.write

    def failing(start: int, samples: torch.Tensor) -> None:
        if start >= 3:
            raise Interrupted
        real_write(start, samples)

    writer.write = failing  # type: ignore[method-assign]
    with pytest.raises(Interrupted):
        pipe.sample_into(writer, 5, cond, chunk=1, **opts)
    assert writer.completed() == {0, 1, 2}
    # A half-written member: data of member 3 on disk but no completion flag.
    garbage = xr.open_zarr(path, consolidated=False)[["tas", "pr"]].isel(realization=[3]).load() * 0 + 1e6
    garbage.drop_vars(list(garbage.coords)).to_zarr(
        path, region={"realization": slice(3, 4)}, consolidated=False
    )

    resumed = ZarrEnsembleWriter(src, path, 5, indices=[index], info=info)
    assert resumed.completed() == {0, 1, 2}
    assert pipe.sample_into(resumed, 5, cond, chunk=2, **opts) == [3, 4]
    assert resumed.completed() == {0, 1, 2, 3, 4}

    a, b = (
        xr.open_zarr(path, consolidated=False).load(),
        xr.open_zarr(tmp_path / "ref.zarr", consolidated=False).load(),
    )
    xr.testing.assert_identical(a, b)
    # Layout: original names, units, coordinates, provenance, values = pipe.sample.
    ref_ds = normalised(ds)
    assert a.tas.dims == ("realization", "time", "lat", "lon") and a.sizes["realization"] == 5
    assert a.tas.attrs["units"] == "K" and a.lat.attrs == ds.lat.attrs
    np.testing.assert_array_equal(a.lon.values, ref_ds.lon.values[4:12])
    assert a.time.values[0] == ds.time.values[1]
    assert a.attrs["synthetic"] == "yes" and a.attrs["sciddpm_model"] == "runs/tiny"
    assert a.attrs["sciddpm_seed"] == 5
    direct = pipe.sample(5, cond, **opts).numpy()
    np.testing.assert_allclose(a.tas.values[:, 0], direct[:, 0], rtol=1e-6)
    np.testing.assert_allclose(a.pr.values[:, 0], direct[:, 1], rtol=1e-6)


def test_first_continues_a_seeded_run(tmp_path) -> None:
    _, _, _, src, pipe = _setup(tmp_path)
    cond = src[0].condition
    whole = pipe.sample(4, cond, steps=2, seed=1)
    torch.testing.assert_close(pipe.sample(2, cond, steps=2, seed=1, first=2), whole[2:])


def test_reopening_with_other_settings_is_an_error(tmp_path) -> None:
    _, _, _, src, _ = _setup(tmp_path)
    path = tmp_path / "ens.zarr"
    ZarrEnsembleWriter(src, path, 4, indices=[0], info={"model": "a", "seed": 0})
    with pytest.raises(ValueError) as err:
        ZarrEnsembleWriter(src, path, 6, indices=[0], info={"model": "a", "seed": 1})
    msg = str(err.value)
    assert (
        "realization has 4 entries, this run gives 6" in msg and "sciddpm_seed" in msg and "new --out" in msg
    )
    with pytest.raises(ValueError, match="different patch origins"):
        ZarrEnsembleWriter(src, tmp_path / "x.zarr", 2, indices=[0, 1])
    assert src.native_writer(str(tmp_path / "x.npy"), 2) is None


def test_cli_sample_writes_and_resumes_a_zarr_ensemble(tmp_path, capsys) -> None:
    from sciddpm.cli import main

    _, store, params, _, pipe = _setup(tmp_path)
    run_dir = tmp_path / "run"
    pipe.save(run_dir)
    dump_run(load_run({"data": {"type": "climate/xarray", "path": str(store), **params}, "pipeline": TINY}),
             run_dir / "run.toml")  # fmt: skip
    out = tmp_path / "cli.zarr"
    args = ["sample", str(run_dir), "--n", "3", "--steps", "2", "--data-index", "5", "--out", str(out),
            "--no-progress", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    assert "wrote 3 samples" in capsys.readouterr().out
    got = xr.open_zarr(out, consolidated=False)
    assert got.sizes["realization"] == 3 and int(got.completed.sum()) == 3
    from sciddpm.provenance import weights_hash

    # The store says it is synthetic and which weights made it (issue 17's provenance).
    assert (
        got.attrs["sciddpm_weights_sha256"] == weights_hash(run_dir)
        and got.attrs["sciddpm_synthetic"] is True
    )
    assert main(args) == 0
    assert "wrote 0 samples" in (second := capsys.readouterr().out) and "3 already there" in second
    assert main([*args[:2], "--n", "4", *args[4:]]) == 1
    assert "realization has 3 entries" in capsys.readouterr().err
    assert main([*args, "--scheduler", "ddim"]) == 1
    assert "sciddpm_scheduler is 'trained', this run has 'ddim'" in capsys.readouterr().err


def test_cli_png_of_physical_fields_draws_each_channel_with_its_name_and_unit(tmp_path, monkeypatch) -> None:
    # `sciddpm sample ... --out s.png` on several physical fields drew an RGB composite without
    # colour bar, units or names; each channel is now a column with its own labelled colour bar.
    import matplotlib.figure
    from sciddpm.cli import main

    _, store, params, _, pipe = _setup(tmp_path)
    run_dir = tmp_path / "run"
    pipe.save(run_dir)
    dump_run(load_run({"data": {"type": "climate/xarray", "path": str(store), **params}, "pipeline": TINY}),
             run_dir / "run.toml")  # fmt: skip
    figures = []
    save = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(
        matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: (figures.append(fig), save(fig, *a, **k))
    )
    args = [
        "sample",
        str(run_dir),
        "--n",
        "2",
        "--steps",
        "2",
        "--out",
        str(tmp_path / "s.png"),
        "--no-progress",
        "--data-index",
        "0",
    ]
    assert main(args) == 0 and (tmp_path / "s.png").is_file()
    labels = sorted(ax.get_ylabel() for ax in figures[0].axes if ax.get_label() == "<colorbar>")
    assert labels == ["pr [kg m-2 s-1]", "tas [K]"]
