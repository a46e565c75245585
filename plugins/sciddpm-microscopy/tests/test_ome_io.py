"""Reading and writing images: OME-TIFF / OME-Zarr round trips, lazy reads, axes, errors, ensembles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from sciddpm_microscopy.reading import FORMATS, Image, find_images, read_image
from sciddpm_microscopy.writing import MEMBER_KEY, OmeZarrEnsembleWriter, write_ome_tiff, write_ome_zarr

PROVENANCE = {"synthetic": True, "model": "runs/nuclei", "sampler": "dpmpp", "seed": 7}

# (axes, shape, dtype, channel names, physical sizes): a 2-D float plane, 3-D two-channel stacks
# with anisotropic Z in uint16 and float32.
CASES = {
    "YX-float": ("YX", (6, 7), np.float32, ["DAPI"], {"Y": 0.1, "X": 0.2}),
    "CZYX-uint16": ("CZYX", (2, 3, 6, 7), np.uint16, ["DAPI", "GFP"], {"Z": 0.5, "Y": 0.1, "X": 0.1}),
    "CZYX-float": ("CZYX", (2, 3, 6, 7), np.float32, ["DAPI", "GFP"], {"Z": 0.5, "Y": 0.1, "X": 0.1}),
}


def _pixels(shape: tuple[int, ...], dtype: type, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "u":
        return rng.integers(0, 4000, shape).astype(dtype)
    return rng.normal(100.0, 20.0, shape).astype(dtype)


def _check_round_trip(image: Image, case: str) -> None:
    axes, shape, dtype, names, sizes = CASES[case]
    assert image.axes == axes and image.shape == shape and image.dtype == dtype
    np.testing.assert_array_equal(np.asarray(image.data[...]), _pixels(shape, dtype))
    assert image.channel_names == names
    assert image.physical_sizes == pytest.approx(sizes)
    assert image.units == dict.fromkeys(sizes, "micrometer")
    assert image.provenance == PROVENANCE


@pytest.mark.parametrize("case", CASES)
def test_ome_tiff_round_trip_keeps_data_and_metadata(tmp_path: Path, case: str) -> None:
    axes, shape, dtype, names, sizes = CASES[case]
    path = write_ome_tiff(
        tmp_path / "im.ome.tif", _pixels(shape, dtype), axes,
        channel_names=names, physical_sizes=sizes, provenance=PROVENANCE,
    )  # fmt: skip
    image = read_image(path)
    _check_round_trip(image, case)
    assert isinstance(image.data, np.memmap)  # uncompressed: memory-mapped, not loaded
    assert image.path == path


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize("case", CASES)
def test_ome_zarr_round_trip_keeps_data_and_metadata(tmp_path: Path, case: str, version: str) -> None:
    axes, shape, dtype, names, sizes = CASES[case]
    path = write_ome_zarr(
        tmp_path / "im.zarr", _pixels(shape, dtype), axes,
        channel_names=names, physical_sizes=sizes, provenance=PROVENANCE, ngff_version=version,
    )  # fmt: skip
    image = read_image(path)
    _check_round_trip(image, case)
    assert isinstance(image.data, zarr.Array)


def test_writers_make_missing_folders(tmp_path: Path) -> None:
    # docs/microscopy.md writes gt/field01.ome.tif into a fresh folder: no FileNotFoundError
    # naming the hidden temporary file, as write_ome_zarr and Restoration.save make folders too.
    pixels = _pixels((1, 8, 8), np.uint16)
    for writer, name in ((write_ome_tiff, "im.ome.tif"), (write_ome_zarr, "im.ome.zarr")):
        path = writer(tmp_path / "new" / "deeper" / name, pixels, "CYX")
        np.testing.assert_array_equal(read_image(path).to_axes("CYX"), pixels)


def test_writers_store_canonical_order_float32_and_named_units(tmp_path: Path) -> None:
    zcyx = _pixels((3, 2, 6, 7), np.float64)
    sizes, units = {"Z": 2.0, "Y": 0.5, "X": 0.5}, {"Z": "nm", "Y": "nanometer", "X": "nm"}
    for path in (tmp_path / "a.ome.tif", tmp_path / "a.zarr"):
        write = write_ome_tiff if path.suffix == ".tif" else write_ome_zarr
        write(path, zcyx, "ZCYX", physical_sizes=sizes, units=units)
        image = read_image(path)
        assert image.axes == "CZYX" and image.dtype == np.float32
        np.testing.assert_allclose(image.data[...], zcyx.transpose(1, 0, 2, 3).astype(np.float32))
        assert image.units == dict.fromkeys("ZYX", "nanometer")
        assert image.provenance is None


def test_compressed_tiff_is_read_lazily_through_zarr(tmp_path: Path) -> None:
    pixels = _pixels((4, 6, 7), np.uint16)
    write_ome_tiff(tmp_path / "c.ome.tif", pixels, "ZYX", compression="zlib")
    with read_image(tmp_path / "c.ome.tif") as image:  # closes the file the zarr store opened
        assert isinstance(image.data, zarr.Array) and image.axes == "ZYX"
        np.testing.assert_array_equal(image.data[1:3], pixels[1:3])


def test_npy_needs_axes_beyond_2d_and_is_memory_mapped(tmp_path: Path) -> None:
    pixels = _pixels((4, 6, 7), np.float32)
    np.save(tmp_path / "stack.npy", pixels)
    with pytest.raises(ValueError, match=r"shape \(4, 6, 7\).*axes="):
        read_image(tmp_path / "stack.npy")
    image = read_image(tmp_path / "stack.npy", axes="zyx")
    assert image.axes == "ZYX" and isinstance(image.data, np.memmap)
    np.testing.assert_array_equal(image.data, pixels)
    np.save(tmp_path / "plane.npy", pixels[0])
    assert read_image(tmp_path / "plane.npy").axes == "YX"


def test_plain_tiff_axes_are_inferred_only_when_unambiguous(tmp_path: Path) -> None:
    pixels = _pixels((5, 6, 7), np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", pixels)  # no OME or ImageJ metadata: axes "QYX"
    with pytest.raises(ValueError, match=r"stack\.tif.*shape \(5, 6, 7\).*'Q'.*unknown.*axes="):
        read_image(tmp_path / "stack.tif")
    image = read_image(tmp_path / "stack.tif", axes="TYX")
    assert image.axes == "TYX" and image.physical_sizes == {} and image.channel_names is None
    np.testing.assert_array_equal(image.data, pixels)
    tifffile.imwrite(tmp_path / "plane.tif", pixels[0])
    assert read_image(tmp_path / "plane.tif").axes == "YX"
    tifffile.imwrite(tmp_path / "rgb.tif", _pixels((6, 7, 3), np.uint8), photometric="rgb")
    assert read_image(tmp_path / "rgb.tif").axes == "YXC"  # RGB samples become channels


def test_imagej_hyperstack_axes_and_pixel_sizes(tmp_path: Path) -> None:
    pixels = _pixels((3, 2, 6, 7), np.uint16)
    tifffile.imwrite(
        tmp_path / "ij.tif", pixels, imagej=True, resolution=(5.0, 5.0),
        metadata={"axes": "ZCYX", "spacing": 0.8, "unit": "micron"},
    )  # fmt: skip
    image = read_image(tmp_path / "ij.tif")
    assert image.axes == "ZCYX"
    assert image.physical_sizes == pytest.approx({"Z": 0.8, "Y": 0.2, "X": 0.2})
    assert image.units == dict.fromkeys("ZYX", "micrometer")


def test_axes_override_is_validated(tmp_path: Path) -> None:
    np.save(tmp_path / "stack.npy", _pixels((4, 6, 7), np.float32))
    for bad, message in [
        ("YX", "names 2 axes.*shape"),
        ("QYX", "not axis letters"),
        ("YYX", "more than once"),
    ]:
        with pytest.raises(ValueError, match=message):
            read_image(tmp_path / "stack.npy", axes=bad)


def test_override_keeps_metadata_of_the_axes_it_keeps(tmp_path: Path) -> None:
    write_ome_tiff(
        tmp_path / "a.ome.tif", _pixels((3, 6, 7), np.uint16), "ZYX", physical_sizes={"Z": 2, "X": 1}
    )
    image = read_image(tmp_path / "a.ome.tif", axes="TYX")  # the file's Z was really time
    assert image.axes == "TYX" and image.physical_sizes == {"X": 1.0}


def test_non_images_are_refused_naming_the_file_and_formats(tmp_path: Path) -> None:
    text = tmp_path / "notes.tif"
    text.write_text("not an image\n")
    with pytest.raises(ValueError, match=r"notes\.tif") as err:
        read_image(text)
    assert FORMATS in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"missing\.tif"):
        read_image(tmp_path / "missing.tif")
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"objects\.npy"):  # object arrays are never unpickled
        read_image(objects)
    (tmp_path / "folder.zarr").mkdir()
    (tmp_path / "folder.zarr" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match=r"folder\.zarr.*OME-Zarr"):
        read_image(tmp_path / "folder.zarr")


def test_image_to_axes_reorders_adds_and_drops_length_one_axes(tmp_path: Path) -> None:
    pixels = _pixels((6, 7, 2), np.float32)
    np.save(tmp_path / "yxc.npy", pixels)
    image = read_image(tmp_path / "yxc.npy", axes="YXC")
    czyx = image.to_axes("CZYX")
    assert czyx.shape == (2, 1, 6, 7) and isinstance(czyx, np.memmap)  # a view, still lazy
    np.testing.assert_array_equal(czyx[:, 0], pixels.transpose(2, 0, 1))
    assert Image(np.zeros((1, 6, 7)), "ZYX").to_axes("CYX").shape == (1, 6, 7)
    with pytest.raises(ValueError, match=r"drop \['C'\]"):
        image.to_axes("ZYX")


def test_image_checks_its_metadata() -> None:
    with pytest.raises(ValueError, match="1 channel names"):
        Image(np.zeros((2, 4, 4)), "CYX", channel_names=["DAPI"])
    with pytest.raises(ValueError, match="'Z'"):
        Image(np.zeros((4, 4)), "YX", physical_sizes={"Z": 1.0})


def test_writers_reject_bad_metadata(tmp_path: Path) -> None:
    pixels = _pixels((2, 6, 7), np.float32)
    with pytest.raises(ValueError, match="3 channel names"):
        write_ome_tiff(tmp_path / "a.tif", pixels, "CYX", channel_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="furlong"):
        write_ome_zarr(tmp_path / "a.zarr", pixels, "CYX", physical_sizes={"X": 1}, units={"X": "furlong"})
    with pytest.raises(ValueError, match="Y and an X"):
        write_ome_tiff(tmp_path / "a.tif", pixels, "CZY")
    with pytest.raises(ValueError, match="int64"):
        write_ome_tiff(tmp_path / "a.tif", pixels.astype(np.int64), "CYX")
    write_ome_zarr(tmp_path / "b.zarr", pixels, "CYX")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_ome_zarr(tmp_path / "b.zarr", pixels, "CYX")
    write_ome_zarr(tmp_path / "b.zarr", pixels + 1, "CYX", overwrite=True)
    np.testing.assert_array_equal(read_image(tmp_path / "b.zarr").data[...], pixels + 1)


def test_find_images_lists_folders_globs_and_collections(tmp_path: Path) -> None:
    for name in ("t10.tif", "t2.tif", "t1.npy"):
        path = tmp_path / name
        write_ome_tiff(path, _pixels((6, 7), np.uint16), "YX") if path.suffix == ".tif" else np.save(path, 0)
    (tmp_path / "notes.txt").write_text("x")
    write_ome_zarr(tmp_path / "im.zarr", _pixels((6, 7), np.uint16), "YX")
    assert [p.name for p in find_images(tmp_path)] == ["im.zarr", "t1.npy", "t2.tif", "t10.tif"]
    assert [p.name for p in find_images(str(tmp_path / "t*.tif"))] == ["t2.tif", "t10.tif"]
    assert find_images(tmp_path / "t2.tif") == [tmp_path / "t2.tif"]
    assert find_images(tmp_path / "im.zarr") == [tmp_path / "im.zarr"]
    with pytest.raises(FileNotFoundError, match=r"nothing-\*\.tif"):
        find_images(str(tmp_path / "nothing-*.tif"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        find_images(tmp_path / "empty")


# ---------------------------------------------------------------------------------------- ensembles

SHAPE = (2, 3, 6, 7)  # (C, Z, Y, X)
INFO = {"model": "runs/nuclei", "seed": 7, "steps": 20, "scheduler": "dpmpp"}


def _writer(path: Path, **changes: object) -> OmeZarrEnsembleWriter:
    settings: dict = {
        "n": 4, "sample_shape": SHAPE, "channel_names": ["DAPI", "GFP"],
        "physical_sizes": {"Z": 0.5, "Y": 0.1, "X": 0.1}, "info": INFO,
    }  # fmt: skip
    return OmeZarrEnsembleWriter(path, **{**settings, **changes})


def _samples(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed)) * 50 + 300


def test_ensemble_writer_resumes_and_each_member_is_an_image(tmp_path: Path) -> None:
    path, samples = tmp_path / "ens.zarr", _samples(4)
    _writer(path).write(0, samples[:2])
    writer = _writer(path)  # a new run: what is complete is read from disk
    assert writer.completed() == {0, 1}
    writer.write(2, samples[2:])
    assert _writer(path).completed() == {0, 1, 2, 3}
    assert find_images(path) == [path / str(k) for k in range(4)]
    for k in range(4):
        image = read_image(path / str(k))
        assert image.axes == "CZYX" and image.channel_names == ["DAPI", "GFP"]
        assert image.physical_sizes == pytest.approx({"Z": 0.5, "Y": 0.1, "X": 0.1})
        np.testing.assert_allclose(image.data[...], samples[k].numpy(), rtol=1e-6)
        assert image.provenance["synthetic"] is True and image.provenance["member"] == k
        assert {key: image.provenance[key] for key in INFO} == INFO


def test_ensemble_writer_redoes_a_partly_written_member(tmp_path: Path) -> None:
    path, samples = tmp_path / "ens.zarr", _samples(3)
    writer = _writer(path)
    writer.write(0, samples)
    # An interruption after member 2's pixels began but before its marker: garbage, no marker.
    member = zarr.open_group(str(path / "2"), mode="r+")
    member["s0"][0] = -1.0
    del member.attrs[MEMBER_KEY]
    assert writer.completed() == {0, 1}
    writer.write(2, samples[2:])
    assert writer.completed() == {0, 1, 2}
    np.testing.assert_allclose(read_image(path / "2").data[...], samples[2].numpy(), rtol=1e-6)


@pytest.mark.parametrize(
    "change",
    [{"sample_shape": (2, 3, 6, 8)}, {"n": 5}, {"channel_names": ["a", "b"]}, {"info": {**INFO, "seed": 8}}],
)
def test_ensemble_writer_refuses_a_mismatched_store_and_keeps_it(tmp_path: Path, change: dict) -> None:
    path, samples = tmp_path / "ens.zarr", _samples(1)
    _writer(path).write(0, samples)
    with pytest.raises(ValueError, match=r"holds another ensemble.*Nothing was changed"):
        _writer(path, **change)
    assert _writer(path).completed() == {0}
    np.testing.assert_allclose(read_image(path / "0").data[...], samples[0].numpy(), rtol=1e-6)


def test_ensemble_writer_refuses_foreign_paths_and_bad_samples(tmp_path: Path) -> None:
    other = tmp_path / "other.zarr"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an ensemble store"):
        _writer(other)
    assert (other / "keep.txt").read_text() == "mine"
    writer = _writer(tmp_path / "ens.zarr")
    with pytest.raises(ValueError, match="outside"):
        writer.write(3, _samples(2))
    with pytest.raises(ValueError, match="shape"):
        writer.write(0, torch.zeros(1, 2, 6, 7))
    with pytest.raises(ValueError, match="sample_shape"):
        _writer(tmp_path / "flat.zarr", sample_shape=(2, 7))
