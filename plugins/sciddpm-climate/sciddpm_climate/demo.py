"""``sciddpm demo climate``: x4 downscaling of synthetic CF fields, scored as an ensemble.

1. :func:`make_demo_store` writes a realistic synthetic CF-compliant dataset as a chunked zarr
   store: daily near-surface air temperature ``tas`` (latitudinal gradient, a seasonal cycle that
   is stronger over land and at high latitudes, a lapse rate of 6.5 K/km over the orography, red
   spectrum anomalies persistent in time) and sea surface temperature ``tos`` (NaN over land),
   with the static orography ``orog`` and land area fraction ``sftlf``.
2. A x4 downscaling model is trained on the first years (``coarsen = 4``, conditioned on the coarse
   fields, orography, land fraction and time of year).
3. For the held-out times an ensemble is written with the resumable zarr writer and scored against
   the truth: fair CRPS, the MAE of the bilinear interpolation of the coarse field (the baseline),
   and the spread-skill ratio, all latitude-weighted with missing points left out. A figure shows
   the coarse input, the truth, three members and the ensemble spread.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["DEMO_RUN", "make_demo_store", "run_demo"]

NLAT, NLON = 32, 64  # 5.625 degrees: the coarse (x4) grid is 8 x 16, 22.5 degrees
TRAIN_YEARS = ["2000-01-01", "2002-12-31"]
HELD_OUT = ["2003-01-01", "2003-01-12"]
MEMBERS = 10
SAMPLE_STEPS = 20

#: The demo's run (data path filled in at run time).
DEMO_RUN: dict[str, Any] = {
    "data": {
        "type": "climate/xarray",
        "variables": ["tas", "tos"],
        "static": ["orog", "sftlf"],
        "time_features": True,
        "coarsen": 4,
        "residual": True,
        "time_range": TRAIN_YEARS,
        "buffer_blocks": 64,
    },
    "pipeline": {
        "encoder": {"type": "standardize"},
        "denoiser": {
            "type": "unet",
            "channels": [16, 32, 64],
            "blocks_per_level": 1,
            "attention_levels": [],
            "mid_attention": False,
            "padding": ["reflect", "circular"],
            "prediction": "v",
        },
        "conditioner": {
            "type": "climate/fields",
            "coarse_channels": 2,
            "static_channels": 2,
            "time_features": True,
            "dim": 32,
        },
        "scheduler": {"type": "ddim", "schedule": "cosine"},
    },
    "train": {
        "steps": 600,
        "batch_size": 16,
        "lr": 2e-3,
        "warmup_steps": 100,
        "ema_decay": 0.995,
        "checkpoint_every": 0,
        "log_every": 250,
    },
}


def _red_noise(rng: np.random.Generator, shape: tuple[int, ...], slope: float) -> np.ndarray:
    """Gaussian fields ``(..., NLAT, NLON)`` with power spectrum ~ k^-slope, unit std.

    Drawn on a grid twice as tall and cut in half, so that latitude is not periodic.
    """
    *lead, h, w = shape
    ky = np.fft.fftfreq(2 * h)[:, None] * 2 * h
    kx = np.fft.rfftfreq(w)[None, :] * w
    k = np.hypot(ky, kx)
    amp = np.where(k > 0, np.maximum(k, 1.0) ** (-slope / 2), 0.0)
    z = rng.standard_normal((*lead, 2 * h, w // 2 + 1)) + 1j * rng.standard_normal((*lead, 2 * h, w // 2 + 1))
    f = np.fft.irfft2(z * amp, s=(2 * h, w))[..., :h, :]
    return f / f.std(axis=(-2, -1), keepdims=True)


def make_demo_dataset(years: int = 4, seed: int = 0) -> Any:
    """The synthetic daily dataset (``xarray.Dataset``, in memory), CF-1.8 attributes."""
    import pandas as pd
    import xarray as xr

    rng = np.random.default_rng(seed)
    lat = np.linspace(-90 + 90 / NLAT, 90 - 90 / NLAT, NLAT)
    lon = np.arange(NLON) * 360.0 / NLON
    times = pd.date_range("2000-01-01", periods=365 * years, freq="D")
    s = np.sin(np.deg2rad(lat))[:, None]

    # Continents: a smooth random field thresholded to 30 % land.
    cont = _red_noise(rng, (NLAT, NLON), 4.0)
    land = cont > np.quantile(cont, 0.7)
    # Orography: a smooth large-scale plateau plus rough small-scale ridges (slope 2), on land.
    rough = _red_noise(rng, (NLAT, NLON), 2.0)
    orog = np.where(land, np.clip(600 * (cont - np.quantile(cont, 0.7)) + 400 * rough + 300, 0, 4500), 0.0)

    # Seasonal phase: day of year, hemispheric sign; amplitude grows with |lat| and over land.
    doy = times.day_of_year.values
    season = -np.cos(2 * np.pi * (doy - 15) / 365.25)[:, None, None]
    amp_land, amp_sea = 4 + 18 * np.abs(s), 1 + 4 * np.abs(s)

    nt = len(times)
    # Red-spectrum anomalies, AR(1) in time (day-to-day persistence 0.8).
    anom = np.empty((nt, NLAT, NLON))
    sea_anom = np.empty((nt, NLAT, NLON))
    a = _red_noise(rng, (NLAT, NLON), 3.0)
    b = _red_noise(rng, (NLAT, NLON), 4.0)
    fresh_a = _red_noise(rng, (nt, NLAT, NLON), 3.0)
    fresh_b = _red_noise(rng, (nt, NLAT, NLON), 4.0)
    for t in range(nt):
        a = 0.8 * a + 0.6 * fresh_a[t]
        b = 0.95 * b + np.sqrt(1 - 0.95**2) * fresh_b[t]
        anom[t], sea_anom[t] = a, b

    base = 300.0 - 45.0 * s**2
    tas = (
        base
        + np.where(land, amp_land, amp_sea) * np.sign(s) * season
        - 0.0065 * orog
        + (2.0 + 2.0 * land) * anom
    )
    sst_base = np.maximum(302.0 - 34.0 * s**2, 271.35)
    tos = np.maximum(sst_base + amp_sea * 0.5 * np.sign(s) * season + 0.8 * sea_anom, 271.35)
    tos = np.where(land, np.nan, tos)

    coords = {
        "time": ("time", times, {"standard_name": "time", "axis": "T"}),
        "lat": ("lat", lat, {"standard_name": "latitude", "units": "degrees_north", "axis": "Y"}),
        "lon": ("lon", lon, {"standard_name": "longitude", "units": "degrees_east", "axis": "X"}),
    }
    data = {
        "tas": (("time", "lat", "lon"), tas.astype(np.float32),
                {"standard_name": "air_temperature", "long_name": "Near-surface air temperature",
                 "units": "K"}),
        "tos": (("time", "lat", "lon"), tos.astype(np.float32),
                {"standard_name": "sea_surface_temperature", "long_name": "Sea surface temperature",
                 "units": "K"}),
        "orog": (("lat", "lon"), orog.astype(np.float32),
                 {"standard_name": "surface_altitude", "long_name": "Surface altitude", "units": "m"}),
        "sftlf": (("lat", "lon"), (100.0 * land).astype(np.float32),
                  {"standard_name": "land_area_fraction", "long_name": "Land area fraction", "units": "%"}),
    }  # fmt: skip
    attrs = {
        "Conventions": "CF-1.8",
        "title": "sciddpm climate demo: synthetic daily surface temperatures",
        "source": "synthetic (sciddpm_climate.demo.make_demo_dataset); not observations",
        "synthetic": "yes",
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)


def make_demo_store(path: str | Path, years: int = 4, seed: int = 0) -> Path:
    """Write :func:`make_demo_dataset` as a zarr store chunked 32 days x the full field."""
    ds = make_demo_dataset(years, seed)
    encoding = {v: {"chunks": (32, NLAT, NLON)} for v in ("tas", "tos")}
    ds.to_zarr(path, mode="w", encoding=encoding, consolidated=True)
    return Path(path)


def _figure(coarse: Any, truth: Any, ens: Any, path: Path, variables: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["coarse input (bilinear)", "truth", "member 1", "member 2", "member 3", "ensemble std"]
    fig, axes = plt.subplots(len(variables), 6, figsize=(16, 2.2 * len(variables) + 0.6), squeeze=False)
    for r, v in enumerate(variables):
        panels = [
            coarse[v].where(truth[v].notnull()),  # the mask as in the truth (land in tos)
            truth[v],
            *(ens[v].isel(realization=k % ens.sizes["realization"]) for k in range(3)),
            ens[v].std("realization"),
        ]
        lo, hi = float(np.nanmin(truth[v])), float(np.nanmax(truth[v]))
        for c, (ax, da) in enumerate(zip(axes[r], panels, strict=True)):
            kw = {"cmap": "magma"} if c == 5 else {"cmap": "RdYlBu_r", "vmin": lo, "vmax": hi}
            im = ax.pcolormesh(da["lon"], da["lat"], np.asarray(da), shading="nearest", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{v} ({truth[v].attrs.get('units', '')})")
            if c in (4, 5):
                fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("sciddpm demo climate: x4 downscaling, first held-out day", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_demo(
    out: str | Path = "demo_climate",
    *,
    steps: int | None = None,
    seed: int = 0,
    members: int = MEMBERS,
    held_out: list[str] | None = None,
    years: int = 4,
    sample_steps: int = SAMPLE_STEPS,
    regression_steps: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the store, train, write the held-out ensemble, score it; returns the report."""
    from sciddpm.config import load_run
    from sciddpm.training.trainer import train

    from sciddpm_climate.ensemble import ZarrEnsembleWriter
    from sciddpm_climate.metrics import CRPSMetric, SpreadSkillMetric, weighted_mean
    from sciddpm_climate.source import XarraySource

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    store = make_demo_store(out / "fields.zarr", years=years, seed=seed)
    raw = json.loads(json.dumps(DEMO_RUN))
    raw["data"]["path"] = str(store.resolve())
    raw["train"]["seed"] = seed
    if steps is not None:
        # Keep the recipe's share of warm-up steps for other lengths.
        share = raw["train"]["warmup_steps"] / raw["train"]["steps"]
        raw["train"].update(steps=steps, warmup_steps=min(raw["train"]["warmup_steps"], int(steps * share)))
    stored = time.perf_counter()
    if regression_steps:
        # CorrDiff's two stages: a regression mean first, the diffusion model on its residual.
        from sciddpm_climate.regression import RegressionConfig, train_regression

        base = {k: v for k, v in raw["data"].items() if k not in ("type", "path", "residual")}
        train_regression(
            XarraySource.open(str(store), **base),
            out / "regression",
            RegressionConfig(steps=regression_steps, seed=seed),
        )
        raw["data"]["regression"] = str((out / "regression").resolve())
    run = load_run(raw)
    made = time.perf_counter()
    pipe = train(run, out / "model", progress=progress)
    trained = time.perf_counter()

    params = {k: v for k, v in raw["data"].items() if k not in ("type", "path", "time_range")}
    test = XarraySource.open(str(store), time_range=held_out or HELD_OUT, **params)
    indices = list(range(len(test)))  # one full-field sample per held-out day
    conds = [test[i].condition for i in indices]
    ens_path = out / "ensemble.zarr"
    info = {"model": str(out / "model"), "seed": seed, "steps": sample_steps}
    writer = ZarrEnsembleWriter(test, ens_path, members, indices=indices, info=info)
    pipe.sample_into(
        writer, members * len(indices), conds * members, steps=sample_steps, seed=seed, chunk=len(indices),
        progress=progress,
    )  # fmt: skip
    sampled = time.perf_counter()

    import xarray as xr

    ens = xr.open_zarr(ens_path, consolidated=False).drop_vars("completed").load()
    variables = list(test.variables)
    truth = test.ds[variables].sel(time=ens.time).load()
    coarse = truth.copy(deep=True)
    for v_i, v in enumerate(variables):
        coarse[v].values = np.stack([c["coarse"][v_i].numpy() for c in conds])
    crps = CRPSMetric()(ens, truth)
    ratio = SpreadSkillMetric()(ens, truth)
    mae = {v: weighted_mean(abs(coarse[v] - truth[v]), "lat") for v in variables}
    scored = time.perf_counter()

    _figure(coarse.isel(time=0), truth.isel(time=0), ens.isel(time=0), out / "downscaling.png", variables)
    report = {
        "crps": crps,
        "bilinear_mae": mae,
        "crps_over_bilinear_mae": {v: crps[v] / mae[v] for v in variables},
        "spread_skill": ratio,
        "targets": {
            "crps_le_0.8_bilinear_mae": {v: bool(crps[v] <= 0.8 * mae[v]) for v in variables},
            "spread_skill_in_0.7_1.3": {v: bool(0.7 <= ratio[v] <= 1.3) for v in variables},
        },
        "members": members,
        "held_out_days": len(indices),
        "held_out": held_out or HELD_OUT,
        "train_range": TRAIN_YEARS,
        "sample_steps": sample_steps,
        "train_steps": run.train.steps,
        "regression_steps": regression_steps,
        "grid": [NLAT, NLON],
        "coarsen": 4,
        "data_seconds": stored - begin,
        "regression_seconds": made - stored,
        "train_seconds": trained - made,
        "sample_seconds": sampled - trained,
        "score_seconds": scored - sampled,
        "total_seconds": time.perf_counter() - begin,
        "torch_threads": torch.get_num_threads(),
        "store": str(store),
        "ensemble": str(ens_path),
        "model": str(out / "model"),
    }
    report["summary"] = "; ".join(
        f"{v}: CRPS {crps[v]:.3g} = {crps[v] / mae[v]:.2f} x bilinear MAE {mae[v]:.3g}, "
        f"spread-skill {ratio[v]:.2f}"
        for v in variables
    ) + (
        f" (train {report['train_seconds']:.0f} s, sample {report['sample_seconds']:.0f} s); see "
        f"{out / 'downscaling.png'} and {out / 'metrics.json'}"
    )
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
