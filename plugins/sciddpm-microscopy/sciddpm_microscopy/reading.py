"""Reading microscopy images: OME-TIFF/TIFF, OME-Zarr and NumPy files as a lazy :class:`Image`.

:func:`read_image` opens one image without loading its pixels — a ``numpy.memmap`` for
uncompressed TIFF and ``.npy`` files, a ``zarr.Array`` for compressed TIFF and OME-Zarr — with its
axes, channel names, pixel sizes, units and provenance taken from the file's metadata: OME-XML
(schema 2016-06) in an OME-TIFF, the ImageJ tags of an ImageJ hyperstack, the NGFF 0.4/0.5
``multiscales`` and ``omero`` attributes of an OME-Zarr. :func:`find_images` expands a file, a
folder or a glob into image paths. Writing lives in :mod:`sciddpm_microscopy.writing`.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["AXES", "FORMATS", "Image", "find_images", "read_image"]

#: The axis letters an :class:`Image` uses, in canonical (OME / NGFF) order: time, channel, depth,
#: height, width.
AXES = "TCZYX"
#: What :func:`read_image` reads, as error messages name it.
FORMATS = "OME-TIFF/TIFF (.tif, .tiff), OME-Zarr (.zarr directory), NumPy (.npy)"

_SUFFIXES = (".tif", ".tiff", ".npy")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
_NPY_MAGIC = b"\x93NUMPY"
#: OME-XML unit symbols (UnitsLength / UnitsTime) by the UDUNITS-2 names NGFF uses.
OME_SYMBOLS = {
    "angstrom": "Å", "picometer": "pm", "nanometer": "nm", "micrometer": "µm", "millimeter": "mm",
    "centimeter": "cm", "meter": "m", "nanosecond": "ns", "microsecond": "µs", "millisecond": "ms",
    "second": "s", "minute": "min", "hour": "h",
}  # fmt: skip
#: Unit spellings met in files (OME symbols, ImageJ's "micron", U+03BC for µ) -> UDUNITS-2 name.
UNIT_NAMES = {
    **{symbol: name for name, symbol in OME_SYMBOLS.items()},
    **{name: name for name in OME_SYMBOLS},
    "μm": "micrometer", "um": "micrometer", "micron": "micrometer", "microns": "micrometer",
    "\\u00B5m": "micrometer", "μs": "microsecond", "us": "microsecond", "sec": "second",
}  # fmt: skip
# Letters tifffile uses besides TCZYXS, for the error that asks for axes=.
_TIFF_LETTERS = {
    "Q": "unknown", "I": "image sequence", "S": "samples", "E": "lambda", "H": "histogram",
    "A": "angle", "P": "phase", "R": "tile", "L": "exposure", "V": "event", "M": "mosaic",
}  # fmt: skip


def _check_axes(axes: str, shape: Sequence[int], what: str = "axes") -> str:
    """``axes`` in upper case, its letters checked against ``AXES`` and its length against ``shape``."""
    if not isinstance(axes, str):
        raise ValueError(f"{what} must be a string of letters from {AXES!r}, got {axes!r}")
    letters = axes.upper()
    unknown = sorted(set(letters) - set(AXES))
    if unknown:
        raise ValueError(
            f"{what}={axes!r}: {unknown} are not axis letters; use letters from {AXES!r} "
            "(time, channel, depth, height, width)"
        )
    repeated = sorted({a for a in letters if letters.count(a) > 1})
    if repeated:
        raise ValueError(f"{what}={axes!r} names {repeated} more than once")
    if len(letters) != len(shape):
        raise ValueError(
            f"{what}={axes!r} names {len(letters)} axes but the array has shape {tuple(shape)} "
            f"({len(shape)} dimensions)"
        )
    return letters


@dataclass(eq=False)
class Image:
    """One image: a lazy pixel array and its metadata.

    - ``data``: the pixels, shaped like ``axes``: a ``numpy.memmap`` (uncompressed TIFF, ``.npy``),
      a ``zarr.Array`` (compressed TIFF, OME-Zarr) or a ``numpy.ndarray``; index it to read a part;
    - ``axes``: one letter of ``"TCZYX"`` per dimension of ``data``, in the file's order
      (``"CZYX"``, ``"YX"``, ``"YXC"`` for an RGB TIFF);
    - ``channel_names``: one name per channel (one name when there is no ``C`` axis), or None;
    - ``physical_sizes``: size of one pixel along ``T``, ``Z``, ``Y``, ``X`` (``{"Z": 0.5, "Y": 0.1,
      "X": 0.1}``), for the axes the file states it for (an OME-Zarr always states a scale, 1
      when its writer gave none); ``units``: their UDUNITS-2 names (``"micrometer"``,
      ``"second"``), as NGFF spells them, whatever symbol the file used;
    - ``path``: the file it was read from; ``provenance``: what sciddpm recorded when it wrote the
      file (``synthetic``, ``model``, ``seed``, ...), None for other files.

    ``dtype``, ``shape`` and ``sizes`` are read from ``data``, so they cannot disagree with it.
    Raises ValueError when ``axes``, ``channel_names`` or the axes of ``physical_sizes`` and
    ``units`` do not fit ``data``.
    """

    data: Any = field(repr=False)
    axes: str
    channel_names: list[str] | None = None
    physical_sizes: dict[str, float] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    provenance: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.axes = _check_axes(self.axes, self.data.shape)
        if self.channel_names is not None:
            self.channel_names = [str(c) for c in self.channel_names]
            if len(self.channel_names) != self.sizes.get("C", 1):
                raise ValueError(
                    f"{len(self.channel_names)} channel names {self.channel_names} for an image of "
                    f"{self.sizes.get('C', 1)} channels (axes {self.axes!r}, shape {self.shape})"
                )
        stray = sorted((set(self.physical_sizes) | set(self.units)) - set(self.axes.replace("C", "")))
        if stray:
            raise ValueError(f"physical sizes or units for {stray}, which are not axes of {self.axes!r}")

    def __repr__(self) -> str:
        return (
            f"Image(axes={self.axes!r}, shape={self.shape}, dtype={self.dtype}, "
            f"data={type(self.data).__name__}, "
            f"channel_names={self.channel_names}, physical_sizes={self.physical_sizes}, units={self.units}, "
            f"path={str(self.path) if self.path else None!r})"
        )

    def close(self) -> None:
        """Close the file a compressed TIFF's or OME-Zarr's ``data`` holds open; reading reopens it.

        ``with read_image(path) as image:`` closes on leaving the block. A memory map is released
        when the last reference to it goes.
        """
        store = getattr(self.data, "store", None)
        if callable(getattr(store, "close", None)):
            store.close()

    def __enter__(self) -> Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def dtype(self) -> np.dtype:
        """The pixel type of ``data`` (as stored: uint16 stays uint16)."""
        return np.dtype(self.data.dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of ``data``, one entry per letter of ``axes``."""
        return tuple(int(s) for s in self.data.shape)

    @property
    def sizes(self) -> dict[str, int]:
        """The length of each axis: ``{"C": 2, "Z": 30, "Y": 512, "X": 512}``."""
        return dict(zip(self.axes, self.shape, strict=True))

    def to_axes(self, axes: str = "CZYX") -> np.ndarray:
        """The pixels ordered as ``axes`` (``"CZYX"``, ``"CYX"``...), adding length-1 axes it lacks.

        An axis of the image that ``axes`` leaves out must have length 1 (it is dropped). A
        memory-mapped image stays memory-mapped (a view); a zarr-backed one is read into memory —
        index ``data`` first to read only a part. Raises ValueError for a bad ``axes`` or one that
        leaves out an axis longer than 1.
        """
        target = _check_axes(axes, range(len(axes)), "to_axes axes")
        lost = [a for a in self.axes if a not in target and self.sizes[a] > 1]
        if lost:
            wider = "".join(a for a in AXES if a in target or a in lost)
            raise ValueError(
                f"to_axes({axes!r}) would drop {lost} of the image's axes {self.axes!r} (shape "
                f"{self.shape}); include them, e.g. to_axes({wider!r})"
            )
        arr = self.data if isinstance(self.data, np.ndarray) else np.asarray(self.data[...])
        arr = arr[tuple(0 if a not in target else slice(None) for a in self.axes)]
        kept = [a for a in self.axes if a in target]
        arr = np.transpose(arr, [kept.index(a) for a in target if a in kept])
        return np.expand_dims(arr, tuple(i for i, a in enumerate(target) if a not in kept))


# ---------------------------------------------------------------------------------------- reading


def _unreadable(path: Path, reason: str) -> ValueError:
    return ValueError(f"cannot read {path}: {reason}. sciddpm-microscopy reads {FORMATS}")


def read_image(path: str | os.PathLike[str], axes: str | None = None) -> Image:
    """Open the image at ``path`` lazily, with the axes, channel names and pixel sizes its metadata states.

    ``path`` is an OME-TIFF or TIFF file (the first series, full resolution), an OME-Zarr image
    directory (NGFF 0.4/0.5, resolution level 0) or a ``.npy`` file (read without unpickling);
    the format is recognised from the content, not the suffix. Axes come from the OME-XML,
    ImageJ or tifffile metadata or the NGFF ``axes``; TIFF samples (``S``, RGB) become channels;
    a 2-D array without metadata is ``"YX"``. ``axes`` (letters of ``"TCZYX"``, one per
    dimension) overrides them; pixel sizes, units and channel names are kept for the axes it
    keeps.

    Raises FileNotFoundError for a missing path; ValueError for a file of another format (naming
    the formats read), for axes that cannot be inferred (naming the shape and ``axes=``), and for
    a bad ``axes``.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory (sciddpm-microscopy reads {FORMATS})")
    if p.is_dir():
        found = _read_zarr(p)
    else:
        with open(p, "rb") as fh:
            head = fh.read(8)
        if head[:4] in _TIFF_MAGIC:
            found = _read_tiff(p)
        elif head.startswith(_NPY_MAGIC):
            found = _read_npy(p)
        else:
            raise _unreadable(p, f"it is neither a TIFF nor a NumPy file (it starts with {head!r})")
    data = found["data"]
    if np.dtype(data.dtype).kind not in "biuf":
        raise _unreadable(p, f"it holds {data.dtype} values, not pixel intensities")
    shape = tuple(data.shape)
    letters = (
        _check_axes(axes, shape, f"{p}: axes") if axes is not None else _infer_axes(found["axes"], shape, p)
    )
    kept = set(letters) - {"C"}
    names = found.get("channel_names")
    if names is not None and len(names) != dict(zip(letters, shape, strict=True)).get("C", 1):
        names = None  # e.g. one OME Channel element for the three samples of an RGB image
    return Image(
        data=data,
        axes=letters,
        channel_names=names,
        physical_sizes={a: s for a, s in found.get("sizes", {}).items() if a in kept},
        units={a: u for a, u in found.get("units", {}).items() if a in kept},
        path=p,
        provenance=found.get("provenance"),
    )


def _infer_axes(names: Sequence[str] | None, shape: tuple[int, ...], path: Path) -> str:
    """The ``TCZYX`` letters of metadata axis ``names`` (tifffile letters or NGFF names), or ValueError."""
    if names is None:
        if len(shape) == 2:
            return "YX"
        said = "it has no axis metadata"
    else:
        letters = [n.upper() for n in names]
        if "S" in letters and "C" not in letters:
            letters[letters.index("S")] = "C"  # RGB(A) samples are channels
        if all(a in AXES for a in letters) and len(set(letters)) == len(letters):
            return "".join(letters)
        meaning = [f"{n} = {_TIFF_LETTERS[n]}" for n in dict.fromkeys(names) if n in _TIFF_LETTERS]
        said = f"its metadata names the axes {list(names)}" + (f" ({', '.join(meaning)})" if meaning else "")
    example = AXES[-len(shape) :] if len(shape) <= len(AXES) else "TCZYX"
    raise ValueError(
        f"cannot infer the axes of {path}: shape {shape}, and {said}. Say what each dimension is "
        f"with axes=, letters from {AXES!r}, e.g. read_image({str(path)!r}, axes={example!r})"
    )


def _read_npy(path: Path) -> dict[str, Any]:
    try:
        return {"data": np.load(path, mmap_mode="r", allow_pickle=False), "axes": None}
    except (ValueError, OSError, EOFError) as err:  # object arrays and truncated files included
        raise _unreadable(path, f"not a readable NumPy array ({err})") from err


def _read_tiff(path: Path) -> dict[str, Any]:
    import tifffile
    import zarr

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            found: dict[str, Any] = {"axes": list(series.axes)}
            if tif.is_ome and tif.ome_metadata:
                found.update(_ome_xml(tif.ome_metadata))
            elif tif.is_imagej:
                found.update(_imagej(tif))
            # tifffile's two lazy paths: a memmap when the series is uncompressed and contiguous,
            # else its pages as a zarr store (which reopens the file when read: see Image.close).
            if series.dataoffset is None:
                found["data"] = zarr.open_array(series.aszarr(level=0), mode="r")
        if "data" not in found:
            found["data"] = tifffile.memmap(path, series=0, mode="r")
    except (ValueError, IndexError, KeyError, OSError) as err:  # TiffFileError is a ValueError
        raise _unreadable(path, f"not a readable TIFF file ({err})") from err
    return found


def _ome_xml(xml: str) -> dict[str, Any]:
    """Channel names, pixel sizes, units and sciddpm provenance of the first OME-XML Image."""
    import tifffile

    ome = tifffile.xml2dict(xml, sep="").get("OME", {})  # sep="": no "a,b" names split into tuples
    image = ome.get("Image", {})
    image = image[0] if isinstance(image, list) else image
    pixels = image.get("Pixels", {})
    sizes, units = {}, {}
    # OME-XML: PhysicalSize{X,Y,Z} in PhysicalSize*Unit (default µm), TimeIncrement in s by default.
    for axis, key, default in (("X", "PhysicalSizeX", "µm"), ("Y", "PhysicalSizeY", "µm"),
                               ("Z", "PhysicalSizeZ", "µm"), ("T", "TimeIncrement", "s")):  # fmt: skip
        if isinstance(pixels.get(key), (int, float)) and not isinstance(pixels[key], bool):
            sizes[axis] = float(pixels[key])
            unit = str(pixels.get(f"{key}Unit", default))
            units[axis] = UNIT_NAMES.get(unit, unit)
    channels = pixels.get("Channel", [])
    channels = [channels] if isinstance(channels, dict) else channels
    names = [str(c["Name"]) for c in channels if isinstance(c, dict) and "Name" in c]
    found: dict[str, Any] = {"sizes": sizes, "units": units, "provenance": None}
    found["channel_names"] = names if names and len(names) == len(channels) else None
    try:
        described = json.loads(str(image.get("Description", "")))
        if isinstance(described, dict) and isinstance(described.get("sciddpm"), dict):
            found["provenance"] = described["sciddpm"]
    except ValueError:
        pass  # a prose description, not one sciddpm wrote
    return found


def _imagej(tif: Any) -> dict[str, Any]:
    """Pixel sizes of an ImageJ hyperstack: X/Y from the resolution tags, Z from ``spacing``."""
    meta = tif.imagej_metadata or {}
    unit = UNIT_NAMES.get(str(meta.get("unit", "")))
    if unit is None:  # no length unit: the resolution tags are per inch or meaningless
        return {}
    x_res, y_res = tif.pages[0].get_resolution()
    sizes = {a: 1.0 / r for a, r in (("X", x_res), ("Y", y_res)) if r and r > 0}
    if isinstance(meta.get("spacing"), (int, float)):
        sizes["Z"] = float(meta["spacing"])
    return {"sizes": sizes, "units": dict.fromkeys(sizes, unit)}


def _read_zarr(path: Path) -> dict[str, Any]:
    """Level 0 of an OME-Zarr image (NGFF 0.4 attributes, or 0.5 ones under ``"ome"``), or a zarr array."""
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as err:  # zarr raises several unrelated types for "not a store"
        raise _unreadable(path, f"a directory but not a zarr store ({type(err).__name__}: {err})") from err
    if isinstance(node, zarr.Array):
        return {"data": node, "axes": None}
    attrs = dict(node.attrs)
    ome = attrs.get("ome", attrs)
    if not ome.get("multiscales"):
        if "bioformats2raw.layout" in ome:
            raise _unreadable(
                path,
                f"it is a collection of images (bioformats2raw layout), not one image; read one of "
                f"them, e.g. {path / '0'}, or list them with find_images({str(path)!r})",
            )
        raise _unreadable(path, "a zarr group without NGFF 'multiscales' metadata")
    try:
        multiscale = ome["multiscales"][0]
        level0 = multiscale["datasets"][0]
        data = node[level0["path"]]
        # NGFF 0.1/0.2 have no axes: always 5-D tczyx.
        axes = multiscale.get("axes", list("tczyx"))
        names = [a["name"] if isinstance(a, Mapping) else str(a) for a in axes]
        scale = [1.0] * len(names)
        for transforms in (level0.get("coordinateTransformations", []),
                           multiscale.get("coordinateTransformations", [])):  # fmt: skip
            for t in transforms:
                if t.get("type") == "scale":
                    scale = [a * float(b) for a, b in zip(scale, t["scale"], strict=True)]
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise _unreadable(path, f"malformed NGFF multiscales metadata ({type(err).__name__}: {err})") from err
    sizes, units = {}, {}
    for name, axis, s in zip(names, axes, scale, strict=True):
        letter = name.upper()
        if letter in "TZYX" and len(letter) == 1:
            sizes[letter] = s
            if isinstance(axis, Mapping) and axis.get("unit"):
                units[letter] = UNIT_NAMES.get(axis["unit"], axis["unit"])
    omero = ome.get("omero") or attrs.get("omero") or {}
    labels = [c.get("label") for c in omero.get("channels", []) if isinstance(c, Mapping)]
    provenance = attrs.get("sciddpm")
    return {
        "data": data,
        "axes": names,
        "sizes": sizes,
        "units": units,
        "channel_names": labels if labels and None not in labels else None,
        "provenance": provenance if isinstance(provenance, dict) else None,
    }


# ---------------------------------------------------------------------------------------- finding


def _is_zarr(path: Path) -> bool:
    markers = (".zgroup", ".zarray", "zarr.json")  # zarr v2 group / array, zarr v3 node
    return path.is_dir() and (path.suffix.lower() == ".zarr" or any((path / f).is_file() for f in markers))


def _is_image(path: Path) -> bool:
    if path.name.startswith("."):  # hidden and temporary files (a write in progress)
        return False
    return _is_zarr(path) or (path.is_file() and path.suffix.lower() in _SUFFIXES)


def _collection(path: Path) -> list[Path] | None:
    """The images of a bioformats2raw-layout OME-Zarr collection (an ensemble), or None."""
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception:
        return None
    attrs = dict(group.attrs)
    if "bioformats2raw.layout" not in attrs.get("ome", attrs):
        return None
    return [path / k for k in group.group_keys() if k.isdigit()]


def _natural(path: Path) -> list[Any]:
    """Sort key putting ``t2.tif`` before ``t10.tif``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def find_images(pattern: str | os.PathLike[str]) -> list[Path]:
    """The image paths ``pattern`` names, in natural order (``t2`` before ``t10``).

    ``pattern`` is an image (a file, or an OME-Zarr directory: ``[pattern]``), a bioformats2raw
    collection of OME-Zarr images (such as an :class:`~sciddpm_microscopy.writing.OmeZarrEnsembleWriter`
    store: its images), a folder (the ``.tif``/``.tiff``/``.npy`` files and ``.zarr`` directories
    directly in it) or a glob (``"data/**/*.ome.tif"``, recursive ``**`` allowed; hidden files
    skipped). Raises FileNotFoundError naming ``pattern`` when nothing matches.
    """
    p = Path(pattern)
    if _is_zarr(p):
        found = _collection(p) or [p]
    elif p.is_dir():
        found = [c for c in p.iterdir() if _is_image(c)]
    elif p.is_file():
        found = [p]
    else:
        found = [Path(m) for m in glob.glob(str(pattern), recursive=True) if _is_image(Path(m))]
    if not found:
        what = "folder" if p.is_dir() else "pattern"
        raise FileNotFoundError(f"no images found for the {what} {str(pattern)!r}; looking for {FORMATS}")
    return sorted(found, key=_natural)
