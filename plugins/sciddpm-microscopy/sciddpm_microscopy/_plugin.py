"""The plugin's registration records: lazy references, so discovery imports neither tifffile nor torch."""

from __future__ import annotations

from sciddpm.hooks import Component, hookimpl

_P = "sciddpm_microscopy."


def _c(kind: str, name: str, ref: str, config: str, description: str, **kw: object) -> Component:
    return Component(kind, name, _P + ref, _P + config, description, **kw)  # type: ignore[arg-type]


#: (name, class, config class, description) of the metrics in :mod:`sciddpm_microscopy.metrics`.
METRICS: tuple[tuple[str, str, str, str], ...] = (
    (
        "psnr",
        "PSNRMetric",
        "RestorationConfig",
        "PSNR (dB) after CARE's affine fit, target's 0.1-99.9 % range",
    ),
    (
        "ssim",
        "SSIMMetric",
        "SSIMConfig",
        "SSIM (2-D/3-D) after CARE's percentile normalisation and affine fit",
    ),
    ("nrmse", "NRMSEMetric", "RestorationConfig", "RMSE / target's 0.1-99.9 percentile range, after the fit"),
    ("frc", "FRCMetric", "FRCConfig", "Fourier ring/shell correlation resolution at 1/7, in physical units"),
    (
        "coverage",
        "CoverageMetric",
        "CoverageConfig",
        "Central-interval coverage and error-std rank correlation",
    ),
)


@hookimpl
def sciddpm_components() -> list[Component]:
    """The microscopy plugin's components as registration records (lazy: nothing heavy is imported)."""
    return [
        _c(
            "data",
            "image",
            "source:ImageSource",
            "source:ImageSourceConfig",
            "Fluorescence images/stacks (OME-TIFF, TIFF, OME-Zarr, .npy) as foreground patches, "
            "paired or with a simulated low-light camera",
            requires=["tifffile", "zarr", "ome-zarr", "scipy", "scikit-image"],
        ),
        _c(
            "encoder",
            "percentile",
            "normalization:PercentileNormalize",
            "normalization:PercentileNormalizeConfig",
            "CARE's per-channel percentile normalisation (3rd-99.8th -> [-1, 1]), fitted and saved",
        ),
        _c(
            "conditioner",
            "restoration",
            "conditioning:RestorationConditioner",
            "conditioning:RestorationConditionerConfig",
            "The low-quality input image, percentile-normalised, concatenated to x_t",
        ),
    ] + [
        _c("metric", name, f"metrics:{cls}", f"metrics:{config}", text) for name, cls, config, text in METRICS
    ]
