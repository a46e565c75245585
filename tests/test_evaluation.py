"""Evaluation functions against closed forms and reference implementations (scipy, prdc)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sciddpm.evaluation import (
    channel_wasserstein,
    frechet_distance,
    histogram_overlap,
    kernel_distance,
    memorization,
    pooled_features,
    precision_recall_density_coverage,
    radial_power_spectrum,
    sliced_wasserstein,
    spectrum_distance,
)


def _fields(n=64, c=2, size=(8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, *size, generator=g, dtype=torch.float64)
    x[:, 0] = 280 + 15 * x[:, 0]  # kelvin
    return x


def test_channel_wasserstein_of_a_shift_is_the_shift_in_each_channels_units():
    r = _fields()
    shift = torch.tensor([2.5, 0.1], dtype=torch.float64).view(1, 2, 1, 1)
    np.testing.assert_allclose(channel_wasserstein(r + shift, r), [2.5, 0.1], rtol=1e-9)
    # A masked reference value is left out, not counted as 0.
    mask = torch.ones_like(r)
    spoiled = r.clone()
    spoiled[0, 0, 0, 0], mask[0, 0, 0, 0] = -9999.0, 0.0
    from scipy.stats import wasserstein_distance

    kept = np.delete(spoiled[:, 0].numpy().ravel(), 0)  # the masked value is the first of channel 0
    expected = wasserstein_distance(r[:, 0].numpy().ravel(), kept)
    assert channel_wasserstein(r, spoiled, reference_mask=mask)[0] == pytest.approx(expected, rel=1e-12)
    assert channel_wasserstein(r, spoiled)[0] > 1.0
    with pytest.raises(
        ValueError, match=r"generated samples have shape \(2, 8, 8\) but reference samples \(3, 8, 8\)"
    ):
        channel_wasserstein(r, _fields(c=3))


def test_histogram_overlap_is_one_for_identical_and_zero_for_disjoint_data():
    r = _fields()
    assert histogram_overlap(r, r) == pytest.approx([1.0, 1.0])
    assert histogram_overlap(r + 1e4, r) == pytest.approx([0.0, 0.0])


def test_sliced_wasserstein_of_a_shift_is_the_mean_projected_shift():
    r = _fields(c=1, size=(4,))
    a = torch.linspace(-1, 1, 4, dtype=torch.float64).view(1, 1, 4)
    std = float(r.std())
    # The same directions the function draws: W1 of a shifted projection is |a . theta|.
    rng = np.random.default_rng(3)
    theta = rng.standard_normal((64, 4))
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)
    expected = np.abs(theta @ (a.flatten().numpy() / std)).mean()
    assert sliced_wasserstein(r + a, r, projections=64, seed=3) == pytest.approx(expected, rel=1e-9)
    assert sliced_wasserstein(r, r) == 0.0


def test_power_spectrum_finds_a_wave_and_the_distance_sees_lost_small_scales():
    n = 32
    _, x = np.mgrid[0:n, 0:n]
    wave = np.cos(2 * np.pi * 4 * x / n)[None, None]  # 4 cycles across: k = 4 / 32
    k, power = radial_power_spectrum(wave)
    assert k[np.argmax(power[0])] == pytest.approx(4 / n)
    noise = np.random.default_rng(0).standard_normal((16, 1, n, n))
    # White noise: flat spectrum, power 1 per wavenumber (Parseval).
    _, flat = radial_power_spectrum(noise)
    assert flat[0, 1:].mean() == pytest.approx(1.0, rel=0.05)
    smooth = torch.nn.functional.avg_pool2d(torch.as_tensor(noise), 3, 1, 1).numpy()
    distance, per_scale = spectrum_distance(smooth, noise)
    assert distance > 0.5 and per_scale[-1] > per_scale[1]  # smoothing loses the small scales most
    assert spectrum_distance(noise, noise)[0] == 0.0


def test_frechet_distance_matches_the_closed_form_for_gaussians():
    rng = np.random.default_rng(0)
    d, n = 4, 200_000
    s1, s2 = np.array([1.0, 2.0, 0.5, 1.5]), np.array([0.5, 1.0, 1.0, 2.0])
    m1, m2 = np.zeros(d), np.array([1.0, 0.0, -0.5, 0.0])
    f1 = m1 + rng.standard_normal((n, d)) * np.sqrt(s1)
    f2 = m2 + rng.standard_normal((n, d)) * np.sqrt(s2)
    closed = ((m1 - m2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()  # diagonal covariances
    assert frechet_distance(f1, f2) == pytest.approx(closed, rel=0.02)
    with pytest.raises(ValueError, match="needs more than 4 generated samples, got 3"):
        frechet_distance(f1[:3], f2)


def _mmd2_unbiased(x, y):
    """The unbiased squared MMD with the cubic kernel, written out pair by pair."""
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kernel_distance_is_the_unbiased_mmd_and_near_zero_for_one_distribution():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((12, 3)), rng.standard_normal((12, 3)) + 1
    mean, std = kernel_distance(x, y, subsets=1, subset_size=12)
    assert mean == pytest.approx(_mmd2_unbiased(x, y), rel=1e-10) and std == 0.0
    same, _ = kernel_distance(
        rng.standard_normal((400, 3)), rng.standard_normal((400, 3)), subsets=20, subset_size=200
    )
    assert abs(same) < 0.05 < mean


def test_prdc_matches_the_prdc_package():
    import prdc  # the reference code of Naeem et al. 2020 (a test dependency)

    rng = np.random.default_rng(2)
    real, fake = rng.standard_normal((300, 8)), rng.standard_normal((250, 8)) * 1.3 + 0.2
    ours = precision_recall_density_coverage(fake, real, k=5, chunk=64)
    theirs = prdc.compute_prdc(real_features=real, fake_features=fake, nearest_k=5)
    for name in ("precision", "recall", "density", "coverage"):
        assert ours[name] == pytest.approx(float(theirs[name]), abs=1e-12), name


def test_memorization_flags_planted_copies_and_not_novel_samples():
    rng = np.random.default_rng(4)
    training = rng.standard_normal((200, 16))
    copies = training[:10] + 0.01 * rng.standard_normal((10, 16))
    novel = rng.standard_normal((30, 16))
    report = memorization(np.concatenate([copies, novel]), training)
    assert report.flagged[:10] == [True] * 10 and not any(report.flagged[10:])
    assert report.nearest[:10] == list(range(10)) and report.fraction == pytest.approx(0.25)
    assert set(report.closest[:10]) == set(range(10))
    assert report.summary()["closest_pairs"][0]["training"] < 10


def test_pooled_features_weigh_channels_in_any_units_alike():
    r = _fields(n=32, size=(9, 11))
    f = pooled_features(r, cells=3)(r)
    assert f.shape == (32, 2 * 3 * 3)
    kelvin, other = f[:, :9].std(dim=0).mean(), f[:, 9:].std(dim=0).mean()
    assert 0.5 < float(kelvin / other) < 2  # standardised: 280 +- 15 K weighs as much as the unit channel


def test_pooled_features_take_arrays_and_name_a_channel_mismatch():
    """The evaluation page passes ``np.load`` output straight in (it failed on arrays before)."""
    r = _fields(n=16, size=(8, 8))
    features = pooled_features(r.numpy(), cells=2)
    torch.testing.assert_close(features(r.numpy()), features(r))
    mismatch = r"samples have shape \(1, 8, 8\).*reference samples of shape \(2, 8, 8\)"
    with pytest.raises(ValueError, match=mismatch):
        features(r[:, :1])


def test_condition_agreement_for_classes_and_numbers():
    from sciddpm.evaluation import condition_agreement

    x = np.arange(6, dtype=float).reshape(6, 1, 1, 1)
    parity = lambda batch: (np.asarray(batch).reshape(-1) % 2).astype(int)  # noqa: E731
    assert condition_agreement(x, [0, 1, 0, 1, 0, 0], parity) == {"accuracy": pytest.approx(5 / 6)}
    mean = lambda batch: np.asarray(batch).reshape(len(batch), -1).mean(1)  # noqa: E731
    exact = condition_agreement(x, x.reshape(-1), mean)
    assert exact["mae"] == 0 and exact["r2"] == 1
    off = condition_agreement(x, x.reshape(-1) + 1.0, mean)
    assert off["mae"] == pytest.approx(1.0) and off["rmse"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="6 samples, 5 conditions"):
        condition_agreement(x, [0, 1, 0, 1, 0], parity)
