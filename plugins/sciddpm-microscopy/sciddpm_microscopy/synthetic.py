"""Synthetic fluorescence images: nuclei-like blobs with texture, for tests, the demo and benchmarks.

No data set can be downloaded where sciddpm is tested, so clean images are generated: nuclei as
ellipses (ellipsoids in 3-D) with soft edges (a smoothed step), an intensity that varies from
nucleus to nucleus, chromatin-like texture (smoothed noise, multiplicative) and a weak uniform
background. Intensities are in "clean" units, bright nuclei near 1, ready for
:func:`sciddpm_microscopy.camera.degrade`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["nuclei"]


def nuclei(
    shape: Sequence[int],
    rng: np.random.Generator,
    count: int | None = None,
    radius: tuple[float, float] = (5.0, 9.0),
    background: float = 0.05,
) -> np.ndarray:
    """A clean image ``shape`` (2-D ``(Y, X)`` or 3-D ``(Z, Y, X)``) of ``count`` textured nuclei, float32.

    ``radius`` is the range of semi-axes in pixels (Z semi-axes are halved, as in an anisotropic
    stack); ``count`` defaults to about one nucleus per ``(4 radius)^2`` pixels of the YX plane.
    Values lie in [background, background + 1.7], bright nuclei near 1. Raises ValueError for a
    shape that is not 2-D or 3-D.
    """
    from scipy.ndimage import gaussian_filter
    from scipy.special import expit

    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"nuclei images are 2-D (Y, X) or 3-D (Z, Y, X), got shape {shape}")
    if count is None:
        count = max(1, round(shape[-1] * shape[-2] / (4 * radius[1]) ** 2))
    image = np.zeros(shape)
    for _ in range(count):
        centre = [rng.uniform(0, n) for n in shape]
        axes = rng.uniform(*radius, size=len(shape))
        if len(shape) == 3:
            axes[0] /= 2
        angle = rng.uniform(0, np.pi)
        brightness = rng.uniform(0.5, 1.0)
        # Evaluate in a box of twice the longest semi-axis (plus the soft edge): outside it the
        # nucleus is below 0.2 % of its brightness, and a large image stays cheap to make.
        half = 2 * float(axes.max()) + 4
        box = tuple(
            slice(max(0, int(c - half)), min(n, int(c + half) + 1))
            for c, n in zip(centre, shape, strict=True)
        )
        grid = np.meshgrid(*[np.arange(b.start, b.stop, dtype=np.float64) for b in box], indexing="ij")
        dy, dx = grid[-2] - centre[-2], grid[-1] - centre[-1]
        u = (np.cos(angle) * dy + np.sin(angle) * dx) / axes[-2]
        v = (-np.sin(angle) * dy + np.cos(angle) * dx) / axes[-1]
        r2 = u**2 + v**2
        if len(shape) == 3:
            r2 = r2 + ((grid[0] - centre[0]) / axes[0]) ** 2
        # A soft edge about one pixel wide: a logistic step in the radius.
        inside = expit(-(np.sqrt(r2) - 1) * np.mean(axes) / 0.8)
        image[box] = np.maximum(image[box], brightness * inside)
    texture = gaussian_filter(rng.standard_normal(shape), 1.5)
    texture = np.clip(1 + 0.4 * texture / texture.std(), 0.3, 1.7)
    return (background + image * texture).astype(np.float32)
