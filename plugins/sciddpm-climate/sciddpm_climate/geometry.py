"""Sphere geometry of regular lat/lon grids: cell-area weights and the U-Net boundary convention.

A regular latitude/longitude grid over-samples the poles: a cell's area is proportional to
``sin(north edge) - sin(south edge)``, not constant. Every loss and metric in this plugin weights
grid points by that area (normalised to mean 1), as WeatherBench 2 does (Rasp et al. 2024,
https://arxiv.org/abs/2308.15560, "latitude weighting").
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["UNET_PADDING", "area_weights", "cell_edges", "grid_weights", "unet_padding"]

#: Boundary modes of the core U-Net for a field laid out (lat, lon): latitude is not periodic
#: (reflect keeps the polar rows' values without inventing zeros), longitude wraps around.
UNET_PADDING: list[str] = ["reflect", "circular"]


def cell_edges(lat: Any) -> np.ndarray:
    """Latitude edges (degrees, ``len(lat) + 1``) of the cells centred on ``lat``.

    Edges sit at the midpoints between neighbouring latitudes; the outer edges are the poles
    (±90°), so the cells tile the sphere (for a regional grid they tile the band from the pole
    side of the first/last cell; pass ``bounded=False`` to :func:`area_weights` for that).
    """
    lat = np.asarray(lat, dtype=np.float64)
    if lat.ndim != 1 or lat.size < 1:
        raise ValueError(f"latitudes must be a 1-D array with at least one value, got shape {lat.shape}")
    if np.any(np.abs(lat) > 90):
        raise ValueError(f"latitudes must lie in [-90, 90] degrees, got min {lat.min()} max {lat.max()}")
    ascending = lat.size == 1 or bool(np.all(np.diff(lat) > 0))
    if not ascending and not bool(np.all(np.diff(lat) < 0)):
        raise ValueError("latitudes must be strictly monotonic (ascending or descending)")
    sign = 1.0 if ascending else -1.0
    mid = (lat[1:] + lat[:-1]) / 2
    return np.concatenate([[-90.0 * sign], mid, [90.0 * sign]])


def area_weights(lat: Any, bounded: bool = True) -> np.ndarray:
    """Exact relative cell areas at latitudes ``lat`` (degrees), normalised to mean 1.

    The area of a full-longitude band between latitudes a and b is ``2πR² (sin b - sin a)``;
    edges come from :func:`cell_edges`. With ``bounded=False`` (regional grids that do not reach
    the poles) the outer edges are half a grid step beyond the outer latitudes instead of ±90°.
    """
    edges = cell_edges(lat)
    if not bounded and edges.size > 2:
        edges[0] = edges[1] - (edges[2] - edges[1])
        edges[-1] = edges[-2] + (edges[-2] - edges[-3])
        edges = np.clip(edges, -90.0, 90.0)
    w = np.abs(np.diff(np.sin(np.deg2rad(edges))))
    return w / w.mean()


def grid_weights(lat: Any) -> np.ndarray:
    """:func:`area_weights` of a grid; global (edges at ±90°) if its cells reach the poles, else regional."""
    lat = np.asarray(lat, dtype=np.float64)
    if lat.size < 2:
        return np.ones(lat.size)
    lo, hi = np.sort(lat)[[0, -1]]
    step = float(np.median(np.abs(np.diff(lat))))
    reaches_poles = lo - step / 2 <= -90 + 1e-6 and hi + step / 2 >= 90 - 1e-6
    return area_weights(lat, bounded=reaches_poles)


def unet_padding(lon_periodic: bool = True) -> list[str]:
    """The ``padding`` of the core U-Net config for (lat, lon) fields.

    ``{"type": "unet", "padding": unet_padding()}`` gives ``["reflect", "circular"]``. A regional
    domain whose longitudes do not wrap around the globe should pass ``lon_periodic=False``
    (``["reflect", "reflect"]``).
    """
    return ["reflect", "circular" if lon_periodic else "reflect"]
