"""The plugin's registration records: lazy references, so discovery imports neither xarray nor torch."""

from __future__ import annotations

from sciddpm.hooks import Component, hookimpl

_P = "sciddpm_climate."


def _c(kind: str, name: str, ref: str, config: str, description: str, **kw: object) -> Component:
    return Component(kind, name, _P + ref, _P + config, description, **kw)  # type: ignore[arg-type]


def _metric(name: str, cls: str, description: str) -> Component:
    return _c("metric", name, f"metrics:{cls}", "metrics:MetricConfig", description)


@hookimpl
def sciddpm_components() -> list[Component]:
    """The climate plugin's components as registration records.

    The references are lazy: listing them imports neither xarray nor torch.
    """
    return [
        _c(
            "data",
            "xarray",
            "source:XarraySource",
            "source:XarraySourceConfig",
            "Gridded fields from zarr/netCDF/xarray: CF axes, lazy chunk-aware patches, area-weighted masks",
            requires=["xarray", "zarr", "dask", "cftime"],
            check_params=None,  # needs a store: tests/test_climate_conformance.py checks it on one
        ),
        _c(
            "conditioner",
            "fields",
            "conditioning:FieldsConditioner",
            "conditioning:FieldsConditionerConfig",
            "Static fields (orography, land-sea mask) concatenated + time-of-year/day FiLM vector",
            check_params={"time_features": True, "dim": 8},
        ),
        _metric("crps", "CRPSMetric", "Fair ensemble CRPS, latitude-weighted"),
        _metric("spread_skill", "SpreadSkillMetric", "Spread-skill ratio with the sqrt(1 + 1/M) correction"),
        _metric("rank_histogram", "RankHistogramMetric", "Area-weighted rank histogram, random tie-breaking"),
        _metric("rmse", "RMSEMetric", "Latitude-weighted RMSE (of the ensemble mean)"),
        _metric("bias", "BiasMetric", "Latitude-weighted mean error"),
        _metric("zonal_spectrum", "ZonalSpectrumMetric", "Log-distance of zonal energy spectra"),
        _metric("power_spectrum", "PowerSpectrumMetric", "Log-distance of radially averaged power spectra"),
    ]
