"""Random (time, 64x64 patch) samples per second from a chunked zarr store: sciddpm-climate vs naive reads.

The store is synthetic float32 on a 0.5-degree global grid (361 x 720), two variables, chunks of
16 time steps x the full field, uncompressed (so its size on disk is its size in memory). It is
written first at ``--gb / 2`` and measured, then grown by appending time steps to ``--gb`` and
measured again: peak resident memory must not grow with the store.

* naive: ``xr.open_zarr(store)`` (dask-backed, as a user would open it) and, per sample, a random
  time and patch origin read with ``ds.isel(time=t, lat=..., lon=...)[v].values`` per variable;
* sciddpm: ``climate/xarray`` with ``patch=[64, 64]``, ``stride=[32, 32]`` (random origins on a
  32-point grid), iterated with ``iter_samples``: time blocks (one chunk) in a seeded random order,
  4 blocks in the shuffle buffer, samples yielded in random order with their area-weighted masks.

Each measurement runs in a fresh subprocess, so its peak RSS (``ru_maxrss``) is its own. Both
readers run on the same freshly written store (in the page cache, which helps both equally).

Usage::

    python benchmarks/climate_loader.py                  # 2 GB store under /tmp, then deleted
    python benchmarks/climate_loader.py --store /data/x.zarr --keep --seconds 20
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NLAT, NLON, CHUNK, PATCH = 361, 720, 16, 64
VARS = ("t2m", "u10")


def _block(t0: int, n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, t0])
    lat = np.linspace(-90, 90, NLAT)[:, None]
    lon = np.deg2rad(np.arange(NLON) * 0.5)[None, :]
    base = {"t2m": 288 - 30 * np.sin(np.deg2rad(lat)) ** 2 + 0 * lon, "u10": 5 * np.cos(3 * lon) + 0 * lat}
    return {v: (base[v][None] + rng.standard_normal((n, NLAT, NLON))).astype(np.float32) for v in VARS}


def write(store: Path, start: int, stop: int) -> None:
    """Write (or append) time steps [start, stop) in whole chunks."""
    import xarray as xr

    for t0 in range(start, stop, CHUNK):
        n = min(CHUNK, stop - t0)
        data = _block(t0, n, seed=0)
        ds = xr.Dataset(
            {v: (("time", "lat", "lon"), data[v], {"units": "K" if v == "t2m" else "m s-1"}) for v in VARS},
            coords={
                "time": (
                    "time",
                    np.arange(t0, t0 + n) * 6.0,
                    {"units": "hours since 2000-01-01", "calendar": "noleap"},
                ),
                "lat": ("lat", np.linspace(90, -90, NLAT), {"units": "degrees_north"}),  # descending, as ERA5
                "lon": ("lon", np.arange(NLON) * 0.5, {"units": "degrees_east"}),
            },
        )
        if t0 == 0:
            enc = {v: {"chunks": (CHUNK, NLAT, NLON), "compressors": None} for v in VARS}
            ds.to_zarr(store, mode="w", encoding=enc, consolidated=False, zarr_format=3)
        else:
            ds.to_zarr(store, append_dim="time", consolidated=False)


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # kB on Linux


def worker(kind: str, store: str, seconds: float) -> dict[str, float]:
    import torch

    torch.set_num_threads(1)
    import xarray as xr

    if kind == "sciddpm":
        from sciddpm_climate.source import XarraySource
    baseline = _rss_gb()  # the interpreter, torch and xarray, before any data is read
    count, t_start = 0, time.perf_counter()
    if kind == "naive":
        ds = xr.open_zarr(store, consolidated=False)
        rng = np.random.default_rng(0)
        nt = ds.sizes["time"]
        while time.perf_counter() - t_start < seconds:
            t = int(rng.integers(nt))
            y, x = int(rng.integers(NLAT - PATCH + 1)), int(rng.integers(NLON - PATCH + 1))
            patch = ds.isel(time=t, lat=slice(y, y + PATCH), lon=slice(x, x + PATCH))
            sample = np.stack([patch[v].values for v in VARS])
            assert sample.shape == (2, PATCH, PATCH)
            count += 1
    else:
        src = XarraySource.open(store, patch=[PATCH, PATCH], stride=[32, 32], buffer_blocks=4)
        epoch = 0
        while time.perf_counter() - t_start < seconds:
            for s in src.iter_samples(epoch=epoch, seed=0):
                assert s.x.shape == (2, PATCH, PATCH) and s.mask is not None
                count += 1
                if count % 256 == 0 and time.perf_counter() - t_start >= seconds:
                    break
            epoch += 1
    elapsed = time.perf_counter() - t_start
    return {
        "samples": count,
        "seconds": elapsed,
        "samples_per_s": count / elapsed,
        "peak_rss_gb": _rss_gb(),
        "rss_after_imports_gb": baseline,
    }


def _run_worker(kind: str, store: Path, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", kind, "--store", str(store), "--seconds", str(seconds)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def _size_gb(store: Path) -> float:
    return sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) / 1024**3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=2.0, help="final store size (GB); measured at half and full")
    ap.add_argument(
        "--store", type=Path, default=None, help="zarr store path (default: a temp dir under /tmp)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the store afterwards")
    ap.add_argument("--seconds", type=float, default=10.0, help="measuring time per reader and size")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "climate_loader.json")
    ap.add_argument("--worker", choices=["naive", "sciddpm"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, str(args.store), args.seconds)))
        return

    step_gb = len(VARS) * NLAT * NLON * 4 / 1024**3
    full = round(args.gb / step_gb / CHUNK) * CHUNK
    half = round(full / 2 / CHUNK) * CHUNK
    tmp = None
    store = args.store
    if store is not None and store.exists():
        sys.exit(f"{store} exists; the benchmark writes (and then deletes) its own store: give a new path")
    if store is None:
        tmp = Path(tempfile.mkdtemp(prefix="climate_loader_", dir="/tmp"))
        store = tmp / "store.zarr"
    free = shutil.disk_usage(store.parent if store.parent.exists() else "/tmp").free / 1024**3
    if free < args.gb * 1.5:
        sys.exit(f"only {free:.1f} GB free next to {store}; need about {args.gb * 1.5:.1f} GB")
    rows = []
    try:
        done = 0
        for n_time in (half, full):
            t0 = time.perf_counter()
            write(store, done, n_time)
            done = n_time
            gb = _size_gb(store)
            took = time.perf_counter() - t0
            print(f"store: {n_time} time steps, {gb:.2f} GB on disk (written in {took:.0f} s)")
            naive = _run_worker("naive", store, args.seconds)
            ours = _run_worker("sciddpm", store, args.seconds)
            rows.append({"store_gb": round(gb, 3), "time_steps": n_time, "naive": naive, "sciddpm": ours})
    finally:
        if not args.keep:
            shutil.rmtree(tmp or store, ignore_errors=True)

    print(f"\n{'store GB':>8} | {'naive samples/s':>15} | {'sciddpm samples/s':>17} | {'speedup':>7} | "
          f"{'naive RSS GB':>12} | {'sciddpm RSS GB':>14}")  # fmt: skip
    for r in rows:
        n, s = r["naive"], r["sciddpm"]
        speedup = s["samples_per_s"] / n["samples_per_s"]
        print(f"{r['store_gb']:8.2f} | {n['samples_per_s']:15.1f} | {s['samples_per_s']:17.1f} | "
              f"{speedup:6.1f}x | {n['peak_rss_gb']:12.2f} | {s['peak_rss_gb']:14.2f}")  # fmt: skip
    last, first = rows[-1], rows[0]
    result = {
        "store_gb": last["store_gb"],
        "naive_samples_per_s": round(last["naive"]["samples_per_s"], 1),
        "sciddpm_samples_per_s": round(last["sciddpm"]["samples_per_s"], 1),
        "speedup": round(last["sciddpm"]["samples_per_s"] / last["naive"]["samples_per_s"], 1),
        "peak_rss_gb": round(last["sciddpm"]["peak_rss_gb"], 3),
        "naive_peak_rss_gb": round(last["naive"]["peak_rss_gb"], 3),
        "rss_after_imports_gb": round(last["sciddpm"]["rss_after_imports_gb"], 3),
        "half_store_gb": first["store_gb"],
        "half_store_peak_rss_gb": round(first["sciddpm"]["peak_rss_gb"], 3),
        "half_store_sciddpm_samples_per_s": round(first["sciddpm"]["samples_per_s"], 1),
        "grid": [NLAT, NLON],
        "chunk": [CHUNK, NLAT, NLON],
        "patch": [PATCH, PATCH],
        "variables": list(VARS),
        "seconds_per_measurement": args.seconds,
        "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
