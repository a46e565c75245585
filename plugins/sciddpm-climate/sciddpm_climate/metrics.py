"""Ensemble and field metrics on xarray, latitude-weighted and mask-aware (WeatherBench 2 definitions).

Inputs are ``xarray`` Datasets or DataArrays; the ensemble dimension is ``realization`` (as
``climate/xarray``'s ``to_native`` writes it). A NaN in the reference or in any member removes
that point from every average. Averages over space weight each point by its cell area
(:func:`sciddpm_climate.geometry.grid_weights`), and then average over every other dimension
(time, level), as in Rasp et al. 2024 (https://arxiv.org/abs/2308.15560). Called on Datasets the
metrics return ``{variable: value}``; on DataArrays a float.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sciddpm.interfaces import Metric

from sciddpm_climate.axes import detect_axes
from sciddpm_climate.geometry import grid_weights

__all__ = [
    "BiasMetric",
    "CRPSMetric",
    "MetricConfig",
    "PowerSpectrumMetric",
    "RMSEMetric",
    "RankHistogramMetric",
    "SpreadSkillMetric",
    "ZonalSpectrumMetric",
    "crps_ensemble",
    "radial_power_spectrum",
    "rank_histogram",
    "weighted_mean",
    "zonal_energy_spectrum",
]


class MetricConfig(BaseModel):
    """Options shared by the climate metrics."""

    model_config = ConfigDict(extra="forbid")

    member_dim: str = Field("realization", description="Ensemble dimension of the generated data.")
    lat: str | None = Field(None, description="Latitude dimension; None = detect (CF).")
    lon: str | None = Field(None, description="Longitude dimension; None = detect (CF).")
    seed: int = Field(0, description="Seed for random tie-breaking (rank histogram).")


def _dataset(x: Any) -> tuple[Any, bool]:
    import xarray as xr

    if isinstance(x, xr.DataArray):
        return x.to_dataset(name=x.name if x.name is not None else "field"), True
    if isinstance(x, xr.Dataset):
        return x, False
    raise TypeError(f"climate metrics take an xarray Dataset or DataArray, got {type(x).__name__}")


def _axes(ds: Any, cfg: MetricConfig) -> tuple[str, str]:
    ax = detect_axes(ds, {"lat": cfg.lat, "lon": cfg.lon})
    return ax.lat, ax.lon


def weighted_mean(da: Any, lat: str) -> float:
    """Area-weighted mean of ``da`` over all its dims, skipping NaN (lat is a dim of ``da``)."""
    import xarray as xr

    w = xr.DataArray(grid_weights(da[lat].values), dims=lat, coords={lat: da[lat]})
    valid = da.notnull()
    total = (w * valid).sum()
    if float(total) == 0:
        return float("nan")
    return float((da.fillna(0) * w).sum() / total)


def _paired(
    generated: Any, reference: Any, cfg: MetricConfig, need_members: bool
) -> list[tuple[str, Any, Any]]:
    import xarray as xr

    if isinstance(generated, xr.DataArray) and isinstance(reference, xr.DataArray):
        # Two arrays are compared whatever their names (a computed array loses its name).
        generated, reference = generated.rename("field"), reference.rename("field")
    g, _ = _dataset(generated)
    r, _ = _dataset(reference)
    missing = [v for v in r.data_vars if v not in g.data_vars]
    if missing:
        raise KeyError(f"generated data lack variable(s) {missing}; they have {list(g.data_vars)}")
    if need_members and cfg.member_dim not in g.dims:
        raise ValueError(
            f"generated data need an ensemble dimension {cfg.member_dim!r}; their dims are {list(g.dims)} "
            "(set member_dim)"
        )
    if need_members and g.sizes[cfg.member_dim] < 2:
        raise ValueError(f"an ensemble metric needs at least 2 members, got {g.sizes[cfg.member_dim]}")
    out = []
    for v in r.data_vars:
        gv, rv = g[v], r[v]
        # A point missing in the reference or any member is missing everywhere.
        bad = rv.isnull()
        bad = bad | (gv.isnull().any(cfg.member_dim) if cfg.member_dim in gv.dims else gv.isnull())
        out.append((str(v), gv.where(~bad), rv.where(~bad)))
    return out


def crps_ensemble(ens: Any, obs: Any, member_dim: str = "realization") -> Any:
    """Fair (unbiased) ensemble CRPS at every point (Ferro 2014, eq. 5; Zamo & Naveau 2018).

    ``CRPS = mean_i |X_i - y| - 1 / (2 M (M-1)) sum_ij |X_i - X_j|``; the pair sum uses the sorted
    members, ``sum_ij |X_i - X_j| = 2 sum_k (2k - M - 1) X_(k)``, so it costs O(M log M).
    """
    import xarray as xr

    def _crps(e: np.ndarray, y: np.ndarray) -> np.ndarray:
        m = e.shape[-1]
        skill = np.abs(e - y[..., None]).mean(-1)
        k = np.arange(1, m + 1)
        pairs = 2 * (np.sort(e, axis=-1) * (2 * k - m - 1)).sum(-1)
        return skill - pairs / (2 * m * (m - 1))

    return xr.apply_ufunc(_crps, ens, obs, input_core_dims=[[member_dim], []], dask="allowed")


def rank_histogram(
    ens: Any, obs: Any, lat: str, member_dim: str = "realization", seed: int = 0
) -> np.ndarray:
    """Area-weighted frequencies ``(M + 1,)`` of the observation's rank among the members.

    Ties are broken uniformly at random (Hamill 2001), so an exchangeable ensemble gives a flat
    histogram even for discrete data. Masked points are skipped.
    """
    import xarray as xr

    rng = np.random.default_rng(seed)
    m = ens.sizes[member_dim]
    e, y = xr.broadcast(ens, obs)
    e = e.transpose(..., member_dim)
    y = y.isel({member_dim: 0}) if member_dim in y.dims else y
    y = y.transpose(*[d for d in e.dims if d != member_dim])
    w = xr.DataArray(grid_weights(ens[lat].values), dims=lat, coords={lat: ens[lat]})
    w = w.broadcast_like(y).transpose(*y.dims).values
    ev, yv = e.values, y.values
    ok = np.isfinite(yv) & np.isfinite(ev).all(-1)
    below = (ev < yv[..., None]).sum(-1)
    ties = (ev == yv[..., None]).sum(-1)
    rank = below + np.floor(rng.random(below.shape) * (ties + 1)).astype(int)
    hist = np.bincount(rank[ok], weights=w[ok], minlength=m + 1)
    return hist / hist.sum()


def zonal_energy_spectrum(da: Any, lat: str, lon: str) -> Any:
    """Energy per zonal wavenumber ``k = 0..n/2``, area-weighted over latitudes and averaged over the rest.

    One-sided, so that ``spectrum.sum()`` is the (area-weighted) mean square of the field along
    latitude circles (Parseval). Latitude rows with a missing value are skipped.
    """
    import xarray as xr

    n = da.sizes[lon]
    other = [d for d in da.dims if d not in (lat, lon)]
    arr = da.transpose(*other, lat, lon).values
    f = np.fft.rfft(arr, axis=-1)
    e = np.abs(f) ** 2 / n**2
    e[..., 1 : (n + 1) // 2] *= 2  # negative wavenumbers folded in; not the Nyquist term
    ok = np.isfinite(arr).all(-1)
    w = grid_weights(da[lat].values) * ok
    e = np.where(ok[..., None], e, 0.0)
    spec = (e * w[..., None]).reshape(-1, e.shape[-1]).sum(0) / w.sum()
    return xr.DataArray(spec, dims="wavenumber", coords={"wavenumber": np.arange(spec.size)}, name="energy")


def radial_power_spectrum(da: Any, lat: str, lon: str) -> Any:
    """Radially averaged 2-D power spectrum over (lat, lon), averaged over every other dim.

    Wavenumber ``|k|`` in cycles per grid length of the longer side, in unit-width bins. Missing
    values are set to the field's valid mean first (no spurious jump from a fill value).
    """
    import xarray as xr

    other = [d for d in da.dims if d not in (lat, lon)]
    arr = da.transpose(*other, lat, lon).values.reshape(-1, da.sizes[lat], da.sizes[lon])
    h, w = arr.shape[-2:]
    means = np.nanmean(arr.reshape(len(arr), -1), axis=1)[:, None, None]
    arr = np.where(np.isfinite(arr), arr, means) - means
    power = (np.abs(np.fft.fft2(arr)) ** 2).mean(0) / (h * w) ** 2
    n = max(h, w)
    ky, kx = np.meshgrid(np.fft.fftfreq(h) * n, np.fft.fftfreq(w) * n, indexing="ij")
    k = np.rint(np.hypot(ky, kx)).astype(int)
    kmax = n // 2
    sums = np.bincount(k.ravel(), weights=power.ravel(), minlength=kmax + 1)[: kmax + 1]
    counts = np.bincount(k.ravel(), minlength=kmax + 1)[: kmax + 1]
    spec = sums / np.maximum(counts, 1)
    return xr.DataArray(spec, dims="wavenumber", coords={"wavenumber": np.arange(kmax + 1)}, name="power")


def _log_spectral_distance(g: np.ndarray, r: np.ndarray) -> float:
    """Mean ``|log10(g / r)|`` over wavenumbers >= 1 where both are positive."""
    g, r = g[1:], r[1:]
    ok = (g > 0) & (r > 0)
    return float(np.mean(np.abs(np.log10(g[ok] / r[ok])))) if ok.any() else float("nan")


class _ClimateMetric(Metric):
    """Applies ``_score(generated_var, reference_var, lat, lon)`` per variable."""

    ensemble = False  # True: scores members along ``member_dim`` (sciddpm.interfaces.Metric)

    def __init__(self, config: MetricConfig | None = None) -> None:
        self.config = config or MetricConfig()

    def _score(self, g: Any, r: Any, lat: str, lon: str) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, generated: Any, reference: Any) -> float | Mapping[str, float]:
        _, single = _dataset(reference)
        r, _ = _dataset(reference)
        lat, lon = _axes(r, self.config)
        out = {
            v: self._score(g, rv, lat, lon)
            for v, g, rv in _paired(generated, reference, self.config, self.ensemble)
        }
        return next(iter(out.values())) if single else out


class CRPSMetric(_ClimateMetric):
    """Fair ensemble CRPS, area-weighted mean over points (lower is better)."""

    ensemble = True

    def _score(self, g: Any, r: Any, lat: str, lon: str) -> float:
        return weighted_mean(crps_ensemble(g, r, self.config.member_dim), lat)


class SpreadSkillMetric(_ClimateMetric):
    """Spread–skill ratio ``sqrt(1 + 1/M) * spread / RMSE(ensemble mean)``; 1 is ideal.

    spread = sqrt(area-weighted mean of the unbiased member variance). The sqrt(1 + 1/M) factor
    makes the expected ratio 1 for a perfectly reliable M-member ensemble (Fortin et al. 2014;
    WeatherBench 2).
    """

    ensemble = True
    target = 1.0

    def _score(self, g: Any, r: Any, lat: str, lon: str) -> float:
        dim = self.config.member_dim
        m = g.sizes[dim]
        spread = np.sqrt(weighted_mean(g.var(dim, ddof=1, skipna=False), lat))
        skill = np.sqrt(weighted_mean((g.mean(dim, skipna=False) - r) ** 2, lat))
        if not skill > 1e-12 * max(float(np.abs(r).max()), 1.0):  # 0 / 0 would be rounding noise
            raise ValueError(
                "spread-skill is undefined: the ensemble mean equals the reference (RMSE 0); "
                "score an ensemble whose mean has an error"
            )
        return float(np.sqrt(1 + 1 / m) * spread / skill)


class RankHistogramMetric(_ClimateMetric):
    """Rank-histogram frequencies ``{"rank_0": ..., "rank_M": ..., "deviation": ...}``.

    ``deviation`` is the largest |frequency - 1/(M+1)|, relative to 1/(M+1) (0 = flat).
    """

    ensemble = True

    def _score(self, g: Any, r: Any, lat: str, lon: str) -> Any:
        hist = rank_histogram(g, r, lat, self.config.member_dim, self.config.seed)
        flat = 1 / hist.size
        out = {f"rank_{i}": float(h) for i, h in enumerate(hist)}
        out["deviation"] = float(np.abs(hist - flat).max() / flat)
        return out


def _deterministic(g: Any, dim: str) -> Any:
    return g.mean(dim, skipna=False) if dim in g.dims else g


class RMSEMetric(_ClimateMetric):
    """Latitude-weighted RMSE (of the ensemble mean when there is a member dimension)."""

    def _score(self, g: Any, r: Any, lat: str, lon: str) -> float:
        return float(np.sqrt(weighted_mean((_deterministic(g, self.config.member_dim) - r) ** 2, lat)))


class BiasMetric(_ClimateMetric):
    """Latitude-weighted mean error generated - reference (ensemble mean if there are members); 0 is ideal."""

    target = 0.0

    def _score(self, g: Any, r: Any, lat: str, lon: str) -> float:
        return weighted_mean(_deterministic(g, self.config.member_dim) - r, lat)


def _spectral(fn: Callable[..., Any]) -> Callable[..., float]:
    def score(self: _ClimateMetric, g: Any, r: Any, lat: str, lon: str) -> float:
        return _log_spectral_distance(fn(g, lat, lon).values, fn(r, lat, lon).values)

    return score


class ZonalSpectrumMetric(_ClimateMetric):
    """Mean |log10| ratio of generated to reference zonal energy spectra (0 = identical)."""

    _score = _spectral(zonal_energy_spectrum)  # type: ignore[assignment]


class PowerSpectrumMetric(_ClimateMetric):
    """Mean |log10| ratio of generated to reference radially averaged power spectra (0 = identical)."""

    _score = _spectral(radial_power_spectrum)  # type: ignore[assignment]
