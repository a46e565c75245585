"""The simulated camera: Poisson-Gaussian moments, PSF blur and binning against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from sciddpm_microscopy.camera import CameraConfig, degrade, expected_electrons, noise_moments


@pytest.mark.parametrize(("gain", "read_noise"), [(1.0, 0.0), (2.5, 3.0)])
def test_noise_mean_and_variance_match_the_poisson_gaussian_model(gain: float, read_noise: float) -> None:
    """E = gain lam + offset, Var = gain^2 (lam + read_noise^2) (Foi et al. 2008, eq. 3)."""
    cfg = CameraConfig(photons=20.0, gain=gain, read_noise=read_noise, offset=100.0)
    clean = np.full((400, 500), 0.35)  # lam = 7 electrons
    noisy = degrade(clean, cfg, np.random.default_rng(0))
    mean, var = noise_moments(7.0, cfg)
    n = noisy.size
    assert abs(noisy.mean() - mean) < 4 * np.sqrt(var / n)
    assert noisy.var() == pytest.approx(var, rel=0.02)
    assert noisy.dtype == np.float32


def test_the_draw_is_reproducible_from_the_generator() -> None:
    cfg = CameraConfig()
    clean = np.random.default_rng(1).random((32, 32))
    a = degrade(clean, cfg, np.random.default_rng(5))
    np.testing.assert_array_equal(a, degrade(clean, cfg, np.random.default_rng(5)))
    assert not np.array_equal(a, degrade(clean, cfg, np.random.default_rng(6)))


def test_the_psf_blurs_a_point_into_a_gaussian_of_its_width() -> None:
    clean = np.zeros((2, 65, 65))
    clean[:, 32, 32] = 1.0
    lam = expected_electrons(clean, CameraConfig(photons=1.0, psf_sigma=[3.0]), spatial_dims=2)
    assert lam.sum() == pytest.approx(2.0, rel=1e-6)  # photons are conserved, per channel
    y = np.arange(65) - 32.0
    profile = lam[0].sum(axis=1)
    assert np.sqrt((profile * y**2).sum() / profile.sum()) == pytest.approx(3.0, rel=0.01)
    np.testing.assert_allclose(lam[0], lam[1])  # the channel axis is not blurred into


def test_anisotropic_psf_and_binning_of_a_stack() -> None:
    clean = np.random.default_rng(2).random((8, 12, 12))
    cfg = CameraConfig(photons=10.0, psf_sigma=[0.0, 0.0, 0.0], downsample=2)
    lam = expected_electrons(clean, cfg, spatial_dims=3)
    assert lam.shape == (4, 6, 6)
    np.testing.assert_allclose(lam[0, 0, 0], 10.0 * clean[:2, :2, :2].mean())


def test_negative_intensities_are_no_photons() -> None:
    lam = expected_electrons(np.array([[-1.0, 0.5]]), CameraConfig(photons=10.0), spatial_dims=2)
    np.testing.assert_array_equal(lam, [[0.0, 5.0]])


def test_bad_camera_settings_get_clear_errors() -> None:
    with pytest.raises(ValueError, match="does not divide the spatial size"):
        expected_electrons(np.ones((10, 10)), CameraConfig(downsample=3), spatial_dims=2)
    with pytest.raises(ValueError, match="psf_sigma has 2 widths for an image with 3 spatial axes"):
        expected_electrons(np.ones((4, 4, 4)), CameraConfig(psf_sigma=[1.0, 2.0]), spatial_dims=3)
    with pytest.raises(ValidationError, match="non-negative"):
        CameraConfig(psf_sigma=[-1.0])
    with pytest.raises(ValidationError, match="photons"):
        CameraConfig(photons=0)
    with pytest.raises(ValidationError, match="extra"):
        CameraConfig(photon=5)
