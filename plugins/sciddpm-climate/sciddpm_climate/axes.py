"""CF axis detection (latitude, longitude, time, vertical level) on xarray datasets.

Detection follows the CF conventions (http://cfconventions.org, sections 4.1-4.4): a
coordinate's ``standard_name`` or ``axis`` attribute, then its ``units`` (``degrees_north``,
``degrees_east``, ``... since ...``, ``hPa``/``Pa``), then common names. Any axis can be named
explicitly, which is how a non-CF store is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Axes", "AxisError", "GridMismatchError", "detect_axes", "lon_order"]

_NAMES = {
    "lat": ("lat", "latitude", "nav_lat", "y_lat", "rlat"),
    "lon": ("lon", "longitude", "nav_lon", "x_lon", "rlon"),
    "time": ("time", "valid_time", "t"),
    "level": ("level", "plev", "lev", "pressure_level", "isobaricInhPa", "height"),
}
_STANDARD = {
    "lat": ("latitude", "grid_latitude"),
    "lon": ("longitude", "grid_longitude"),
    "time": ("time",),
    "level": ("air_pressure", "altitude", "height", "atmosphere_hybrid_sigma_pressure_coordinate"),
}
_AXIS = {"lat": "Y", "lon": "X", "time": "T", "level": "Z"}
_UNITS = {
    "lat": ("degrees_north", "degree_north", "degree_n", "degrees_n", "degreen", "degreesn"),
    "lon": ("degrees_east", "degree_east", "degree_e", "degrees_e", "degreee", "degreese"),
    "level": ("hpa", "pa", "mbar", "millibar"),
}


class AxisError(ValueError):
    """A required axis could not be found, or an override names something absent."""


class GridMismatchError(ValueError):
    """Target and conditioning fields are on different grids."""


@dataclass(frozen=True)
class Axes:
    """Dimension names of the axes in the dataset (None where absent)."""

    lat: str
    lon: str
    time: str | None = None
    level: str | None = None


def _matches(name: str, coord: Any, axis: str) -> int:
    """Evidence that ``coord`` is ``axis``: 3 = standard_name/axis, 2 = units, 1 = name, 0 = none."""
    attrs: Mapping[str, Any] = getattr(coord, "attrs", {})
    if str(attrs.get("standard_name", "")).lower() in _STANDARD[axis]:
        return 3
    if str(attrs.get("axis", "")).upper() == _AXIS[axis]:
        return 3
    if axis == "level" and str(attrs.get("positive", "")).lower() in ("up", "down"):
        return 3
    units = str(attrs.get("units", "")).lower().replace(" ", "")
    if axis in _UNITS and units in _UNITS[axis]:
        return 2
    if axis == "time" and " since " in str(attrs.get("units", "")):
        return 2
    if axis == "time" and np.issubdtype(getattr(coord, "dtype", np.float64), np.datetime64):
        return 2
    if axis == "time" and getattr(coord, "dtype", None) == np.dtype(object) and coord.size:
        import cftime

        if isinstance(np.ravel(coord.values)[0], cftime.datetime):
            return 2
    return 1 if name.lower() in _NAMES[axis] else 0


def detect_axes(ds: Any, overrides: Mapping[str, str | None] | None = None) -> Axes:
    """Find the lat, lon, time and level dimensions of ``ds`` (an xarray Dataset).

    ``overrides`` maps ``lat``/``lon``/``time``/``level`` to dimension names and wins over
    detection. Missing latitude or longitude is an :class:`AxisError` naming the dimensions found
    and the override options.
    """
    overrides = dict(overrides or {})
    dims = list(ds.sizes)
    found: dict[str, str | None] = {}
    for axis in ("lat", "lon", "time", "level"):
        given = overrides.get(axis)
        if given is not None:
            if given not in ds.sizes:
                raise AxisError(
                    f"{axis}={given!r} is not a dimension of the dataset; its dimensions are {dims}"
                )
            found[axis] = given
            continue
        taken = {v for v in found.values() if v is not None} | {
            v for v in overrides.values() if v is not None
        }
        scored = []
        for dim in dims:
            if dim in taken:
                continue
            coord = ds.coords.get(dim)
            score = _matches(dim, coord, axis) if coord is not None else int(dim.lower() in _NAMES[axis])
            if score:
                scored.append((score, dim))
        found[axis] = max(scored)[1] if scored else None
    missing = [a for a in ("lat", "lon") if found[a] is None]
    if missing:
        raise AxisError(
            f"no recognisable {' or '.join('latitude' if a == 'lat' else 'longitude' for a in missing)} "
            f"dimension: the dataset's dimensions are {dims}. Name them explicitly with the source "
            f"options {', '.join(f'{a}=...' for a in missing)} (e.g. lat={dims[0]!r})"
        )
    return Axes(lat=found["lat"], lon=found["lon"], time=found["time"], level=found["level"])  # type: ignore[arg-type]


def lon_order(lon: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(order, wrapped)``: the permutation that sorts longitudes wrapped to [0, 360), and them sorted.

    A regional domain that crosses the prime meridian (e.g. -10..30) would be split by a plain
    sort (0..30 then 350..359); there the order starts after the largest gap instead, so the
    domain stays contiguous (350, 355, 0, 5, ...) and convolutions see true neighbours.
    """
    wrapped = np.mod(np.asarray(lon, dtype=np.float64), 360.0)
    order = np.argsort(wrapped, kind="stable")
    sorted_lon = wrapped[order]
    gaps = np.diff(sorted_lon)
    if np.any(gaps == 0):
        raise AxisError("longitudes repeat after wrapping to [0, 360) (e.g. both -180 and 180); drop one")
    if gaps.size:
        seam = 360.0 - sorted_lon[-1] + sorted_lon[0]  # the gap across 0/360
        inner = int(np.argmax(gaps))
        if gaps[inner] > 1.5 * seam:  # the domain's real edge is inside [0, 360): start after it
            order = np.roll(order, -(inner + 1))
            sorted_lon = wrapped[order]
    return order, sorted_lon
