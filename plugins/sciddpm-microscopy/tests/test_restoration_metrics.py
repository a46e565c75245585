"""Restoration, resolution and calibration metrics against closed forms and their invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from scipy.ndimage import gaussian_filter
from skimage.metrics import normalized_root_mse, structural_similarity

from sciddpm_microscopy.metrics import (
    CoverageConfig,
    CoverageMetric,
    FRCConfig,
    FRCMetric,
    NRMSEMetric,
    PSNRMetric,
    RestorationConfig,
    SSIMMetric,
    affine_scale,
    error_std_spearman,
    fourier_ring_correlation,
    frc_resolution,
    interval_coverage,
    nrmse,
    psnr,
    ssim,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A smooth 'ground truth' and a noisy restoration of it, (48, 40)."""
    target = gaussian_filter(rng.normal(size=(48, 40)), 2.0) * 50 + 100
    return target + rng.normal(scale=0.5, size=target.shape), target


# --- PSNR / SSIM / NRMSE --------------------------------------------------------------------------


def test_affine_scale_is_the_least_squares_fit(pair: tuple[np.ndarray, np.ndarray]) -> None:
    pred, target = pair
    a, b = np.polyfit(pred.ravel(), target.ravel(), 1)
    np.testing.assert_allclose(affine_scale(pred, target), a * pred + b, rtol=1e-10)
    np.testing.assert_allclose(affine_scale(np.full((4, 4), 3.0), target[:4, :4]), target[:4, :4].mean())


@pytest.mark.parametrize("metric", [psnr, ssim, nrmse])
def test_scaled_metrics_ignore_the_predictions_intensity_scale_and_offset(
    metric: object, pair: tuple[np.ndarray, np.ndarray]
) -> None:
    pred, target = pair
    assert metric(-3.7 * pred + 250.0, target) == pytest.approx(metric(pred, target), rel=1e-9)  # type: ignore[operator]


def test_identical_inputs_give_the_best_values(pair: tuple[np.ndarray, np.ndarray]) -> None:
    _, target = pair
    assert psnr(target, target) > 250
    assert psnr(target, target, scale=False) == np.inf
    assert ssim(target, target) == pytest.approx(1.0)
    assert nrmse(target, target) == pytest.approx(0.0, abs=1e-12)


def test_psnr_and_nrmse_match_their_closed_forms(pair: tuple[np.ndarray, np.ndarray]) -> None:
    pred, target = pair
    mse = np.mean((pred - target) ** 2)
    value_range = target.max() - target.min()
    full = (0, 100)
    assert psnr(pred, target, scale=False, percentiles=full) == pytest.approx(
        10 * np.log10(value_range**2 / mse)
    )
    assert nrmse(pred, target, scale=False, percentiles=full) == pytest.approx(
        normalized_root_mse(target, pred, normalization="min-max")
    )
    # CARE's default: the 0.1-99.9 percentile range is the data range, and PSNR = -20 log10 NRMSE.
    lo, hi = np.percentile(target, [0.1, 99.9])
    assert psnr(pred, target, scale=False) == pytest.approx(10 * np.log10((hi - lo) ** 2 / mse))
    assert psnr(pred, target) == pytest.approx(-20 * np.log10(nrmse(pred, target)))


def test_ssim_is_skimages_on_the_normalised_pair_and_works_on_stacks(rng: np.random.Generator) -> None:
    target = gaussian_filter(rng.normal(size=(9, 24, 24)), 1.5)
    pred = target + rng.normal(scale=0.05, size=target.shape)
    lo, hi = np.percentile(target, [0.1, 99.9])
    expected = structural_similarity((target - lo) / (hi - lo), (pred - lo) / (hi - lo), data_range=1.0)
    assert ssim(pred, target, scale=False) == pytest.approx(expected)
    assert 0 < ssim(pred, target) < 1


def test_metric_classes_average_images_and_take_tensors(pair: tuple[np.ndarray, np.ndarray]) -> None:
    pred, target = pair
    preds = np.stack([pred, pred + 0.3 * np.sin(target)])[:, None]  # (N=2, C=1, H, W)
    targets = np.stack([target, target])[:, None]
    expected = np.mean([psnr(p[0], t[0]) for p, t in zip(preds, targets, strict=True)])
    assert PSNRMetric()(torch.from_numpy(preds), torch.from_numpy(targets)) == pytest.approx(expected)
    assert NRMSEMetric()(preds, targets) == pytest.approx(np.mean([nrmse(p[0], target) for p in preds]))
    assert SSIMMetric()(targets, targets) == pytest.approx(1.0)
    assert PSNRMetric.higher_is_better and SSIMMetric.higher_is_better
    assert not NRMSEMetric.higher_is_better and not FRCMetric.higher_is_better


# --- Fourier ring correlation ---------------------------------------------------------------------


@pytest.mark.parametrize("noise_var", [1.0, 3.0])
def test_frc_of_white_signal_plus_noise_is_s_over_s_plus_n(
    rng: np.random.Generator, noise_var: float
) -> None:
    signal = rng.normal(size=(256, 256))  # variance S = 1 at every frequency
    a, b = (signal + rng.normal(scale=np.sqrt(noise_var), size=signal.shape) for _ in range(2))
    freqs, frc = fourier_ring_correlation(a, b)
    assert freqs.shape == frc.shape == (128,)
    assert freqs[-1] == pytest.approx(0.5)  # Nyquist, cycles per pixel
    assert frc.mean() == pytest.approx(1 / (1 + noise_var), abs=0.02)


def test_frc_of_independent_noise_is_zero(rng: np.random.Generator) -> None:
    _, frc = fourier_ring_correlation(rng.normal(size=(256, 256)), rng.normal(size=(256, 256)))
    assert abs(frc.mean()) < 0.02


def _blurred_pair(rng: np.random.Generator, noise_var: float, sigma: float = 2.0) -> tuple[np.ndarray, ...]:
    signal = gaussian_filter(rng.normal(size=(256, 256)), sigma, mode="wrap")
    return tuple(signal + rng.normal(scale=np.sqrt(noise_var), size=signal.shape) for _ in range(2))


@pytest.mark.parametrize("noise_var", [1e-2, 1e-4])
def test_frc_resolution_matches_the_closed_form_crossing(rng: np.random.Generator, noise_var: float) -> None:
    # Blurred white noise has power exp(-4 pi^2 sigma^2 f^2); FRC = P / (P + N) = 1/7 where P = N / 6.
    sigma = 2.0
    expected = 2 * np.pi * sigma / np.sqrt(np.log(6 / noise_var))
    assert frc_resolution(*_blurred_pair(rng, noise_var, sigma)) == pytest.approx(expected, rel=0.08)


def test_frc_resolution_is_finer_with_less_noise_and_in_physical_units(rng: np.random.Generator) -> None:
    a, b = _blurred_pair(rng, 1e-2)
    c, d = _blurred_pair(rng, 1e-4)
    assert frc_resolution(c, d) < frc_resolution(a, b)
    assert frc_resolution(a, b, pixel_size=0.13) == pytest.approx(0.13 * frc_resolution(a, b), rel=1e-12)
    assert frc_resolution(a, b, pixel_size=2.0) == pytest.approx(2 * frc_resolution(a, b), rel=1e-12)


def test_frc_extremes_and_shells(rng: np.random.Generator) -> None:
    image = gaussian_filter(rng.normal(size=(64, 80)), 1.0)
    assert frc_resolution(image, image, pixel_size=0.1) == pytest.approx(0.2)  # sampling limit
    assert FRCMetric(FRCConfig(pixel_size=0.1))(image[None], image[None]) == pytest.approx(0.2)
    # Fourier shell correlation of an anisotropic stack: shells up to the coarsest axis' Nyquist.
    stack = rng.normal(size=(16, 40, 40))
    freqs, frc = fourier_ring_correlation(stack, stack + 0.1 * rng.normal(size=stack.shape), (0.5, 0.2, 0.2))
    np.testing.assert_allclose(
        freqs, 0.125 * np.arange(1, 9)
    )  # steps 1/(16*0.5) = 1/(40*0.2); Nyquist 1/(2*0.5)
    assert np.all(frc > 0.9)


# --- ensemble calibration -------------------------------------------------------------------------


def test_coverage_of_a_calibrated_ensemble_is_the_level(rng: np.random.Generator) -> None:
    samples, target = rng.normal(size=(200, 64, 64)), rng.normal(size=(64, 64))
    assert interval_coverage(samples, target, 0.9) == pytest.approx(0.9, abs=0.02)
    assert interval_coverage(samples, target, 0.5) == pytest.approx(0.5, abs=0.03)
    assert interval_coverage(0.3 * samples, target, 0.9) < 0.5  # over-confident


def test_spearman_is_high_when_std_predicts_error_and_zero_otherwise(rng: np.random.Generator) -> None:
    mean, std = rng.normal(size=(64, 64)), rng.uniform(0.1, 2.0, size=(64, 64))
    target = mean + std * rng.normal(size=mean.shape)
    assert error_std_spearman(mean, std, target) > 0.4
    assert abs(error_std_spearman(mean, rng.uniform(0.1, 2.0, size=(64, 64)), target)) < 0.06


def test_coverage_metric_reports_calibration(rng: np.random.Generator) -> None:
    mean, std = rng.normal(size=(48, 48)), rng.uniform(0.1, 2.0, size=(48, 48))
    ensemble = mean + std * rng.normal(size=(100, 48, 48))
    target = mean + std * rng.normal(size=mean.shape)
    out = CoverageMetric(CoverageConfig(level=0.8))(torch.from_numpy(ensemble), target)
    assert set(out) == {"coverage", "coverage_error", "spearman_error_std"}
    assert out["coverage"] == pytest.approx(0.8, abs=0.03)
    assert out["coverage_error"] == pytest.approx(abs(out["coverage"] - 0.8))
    assert out["spearman_error_std"] > 0.3


# --- errors ---------------------------------------------------------------------------------------


def test_shape_mismatch_names_both_shapes(rng: np.random.Generator) -> None:
    a, b = rng.normal(size=(16, 16)), rng.normal(size=(16, 17))
    for call in (psnr, ssim, nrmse, affine_scale, fourier_ring_correlation, PSNRMetric(), FRCMetric()):
        with pytest.raises(ValueError, match=r"\(16, 16\).*\(16, 17\)"):
            call(a, b)  # type: ignore[operator]
    with pytest.raises(ValueError, match=r"\(5, 16, 16\).*\(16, 17\)"):
        interval_coverage(rng.normal(size=(5, 16, 16)), b)


def test_constant_target_is_an_error_not_nan(rng: np.random.Generator) -> None:
    flat = np.full((16, 16), 4.0)
    for call in (psnr, ssim, nrmse, SSIMMetric()):
        with pytest.raises(ValueError, match="percentile range is zero"):
            call(rng.normal(size=flat.shape), flat)  # type: ignore[operator]
    with pytest.raises(ValueError, match="constant"):
        fourier_ring_correlation(rng.normal(size=flat.shape), flat)
    with pytest.raises(ValueError, match="std is constant"):
        error_std_spearman(rng.normal(size=flat.shape), flat, rng.normal(size=flat.shape))


def test_bad_arguments_are_errors(rng: np.random.Generator) -> None:
    samples, target = rng.normal(size=(20, 8, 8)), rng.normal(size=(8, 8))
    for level in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="level"):
            interval_coverage(samples, target, level)
    with pytest.raises(ValueError, match="at least 39 samples, got 20"):
        interval_coverage(samples, target, 0.95)
    with pytest.raises(ValueError, match="2-D image or 3-D stack"):
        fourier_ring_correlation(rng.normal(size=64), rng.normal(size=64))
    with pytest.raises(ValueError, match="NaN"):
        psnr(np.full((8, 8), np.nan), target)
    with pytest.raises(ValueError, match="window does not fit"):
        ssim(target[:5], target[:5])


def test_configs_forbid_typos_and_bad_values() -> None:
    with pytest.raises(ValidationError, match="pixelsize"):
        FRCConfig(pixelsize=0.1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="one per axis"):
        FRCConfig(pixel_size=(0.1, 0.1, 0.3), spatial_dims=2)
    with pytest.raises(ValidationError):
        CoverageConfig(level=1.0)
    with pytest.raises(ValidationError, match="percentiles"):
        RestorationConfig(percentiles=(99.9, 0.1))


def test_the_registry_builds_every_metric() -> None:
    from sciddpm.registry import get_registry
    from sciddpm.spec import ComponentSpec

    registry = get_registry()
    for name in ["psnr", "ssim", "nrmse", "frc", "coverage"]:
        metric = registry.build("metric", ComponentSpec(type=f"microscopy/{name}"))
        assert callable(metric)
