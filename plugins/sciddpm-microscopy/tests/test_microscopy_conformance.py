"""Every component of the microscopy plugin passes sciddpm's conformance kit (sciddpm.testing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sciddpm.registry import get_registry
from sciddpm.testing import check_component

from sciddpm_microscopy.source import ImageSource, ImageSourceConfig
from sciddpm_microscopy.synthetic import nuclei
from sciddpm_microscopy.writing import write_ome_tiff, write_ome_zarr

METRICS = ("psnr", "ssim", "nrmse", "frc", "coverage")
CAMERA = {"photons": 10.0, "read_noise": 1.0, "offset": 100.0}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 2-D OME-TIFF images and one two-channel OME-Zarr stack of synthetic nuclei."""
    root = tmp_path_factory.mktemp("microscopy")
    (root / "2d").mkdir()
    for k in range(2):
        image = (nuclei((48, 48), np.random.default_rng(k)) * 3000 + 100).astype(np.uint16)
        write_ome_tiff(root / "2d" / f"cell{k}.ome.tif", image[None], "CYX", channel_names=["DAPI"],
                       physical_sizes={"Y": 0.2, "X": 0.2})  # fmt: skip
    stack = (nuclei((8, 32, 32), np.random.default_rng(3)) * 3000 + 100).astype(np.uint16)
    write_ome_zarr(root / "stack.ome.zarr", np.stack([stack, stack // 2]), "CZYX",
                   channel_names=["H2B", "actin"], physical_sizes={"Z": 1.0, "Y": 0.2, "X": 0.2})  # fmt: skip
    return root


def _not_run(outcomes) -> set[str]:
    assert all(o.status != "fail" for o in outcomes)
    return {o.check for o in outcomes if o.status == "not run"}


def test_the_plugin_registers_only_checked_components() -> None:
    names = {e.full_name for e in get_registry().entries() if e.plugin == "microscopy"}
    assert names == {"microscopy/image", "microscopy/percentile", "microscopy/restoration"} | {
        f"microscopy/{m}" for m in METRICS
    }


def test_image_source_2d_stack_and_synthetic_pairs(folder: Path) -> None:
    path = str(folder / "2d")
    assert _not_run(check_component("data", "microscopy/image", path=path, patch=[16, 16])) == {
        "class_labels"
    }
    stack = check_component(
        "data", "microscopy/image", path=str(folder / "stack.ome.zarr"), patch=[4, 16, 16]
    )
    assert _not_run(stack) == {"class_labels"}
    pairs = check_component("data", "microscopy/image", path=path, patch=[16, 16], degrade=CAMERA)
    assert _not_run(pairs) == {"class_labels"}


def test_percentile_encoder() -> None:
    assert _not_run(check_component("encoder", "microscopy/percentile")) == {"wrong_dims"}  # takes 1-3-D


def test_restoration_conditioner(folder: Path) -> None:
    source = ImageSource(ImageSourceConfig(path=str(folder / "2d"), patch=[16, 16], degrade=CAMERA))
    outcomes = check_component("conditioner", "microscopy/restoration", inputs=source, data_shape=[1, 16, 16])
    assert _not_run(outcomes) == set()


@pytest.mark.parametrize("name", METRICS)
def test_metrics(name: str) -> None:
    rng = np.random.default_rng(0)
    truth = nuclei((2, 32, 32), rng)  # two images
    if name == "coverage":  # an ensemble of 20 members around the truth (a 90 % interval needs 19)
        generated = truth + 0.1 * rng.standard_normal((20, *truth.shape))
        perfect = np.stack([truth] * 20)
    else:
        generated, perfect = truth + 0.1 * rng.standard_normal(truth.shape), truth
    outcomes = check_component("metric", f"microscopy/{name}", inputs=(generated, truth, perfect))
    assert _not_run(outcomes) == ({"perfect_is_best"} if name == "coverage" else set())
