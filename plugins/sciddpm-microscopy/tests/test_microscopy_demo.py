"""``sciddpm demo microscopy`` at reduced size: data, model, restorations, figure and metrics are written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sciddpm.cli import main

from sciddpm_microscopy.demo import PHOTONS_HIGH, PHOTONS_LOW, make_demo_data, run_demo
from sciddpm_microscopy.reading import read_image


def test_demo_data_are_paired_low_light_and_high_snr_acquisitions(tmp_path: Path) -> None:
    folders = make_demo_data(tmp_path, train=1, test=1)
    low = read_image(folders["train/low"] / "000.ome.tif")
    gt = read_image(folders["train/gt"] / "000.ome.tif")
    assert low.dtype == gt.dtype == np.uint16 and low.physical_sizes == {"Y": 0.1, "X": 0.1}
    assert low.channel_names == ["nuclei"]
    low_px, gt_px = low.to_axes("YX").astype(float), gt.to_axes("YX").astype(float)
    bright = gt_px > np.percentile(gt_px, 95)
    # The input counts about PHOTONS_LOW / PHOTONS_HIGH of the truth's signal above the offset.
    ratio = (low_px[bright] - 100).mean() / (gt_px[bright] - 100).mean()
    assert abs(ratio - PHOTONS_LOW / PHOTONS_HIGH) < 0.3 * PHOTONS_LOW / PHOTONS_HIGH


def test_demo_writes_restorations_figure_and_metrics(tmp_path: Path) -> None:
    report = run_demo(
        tmp_path, steps=2, members=2, train_images=2, test_images=1, sample_steps=2, progress=False
    )
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["psnr_mean"] == report["psnr_mean"] and np.isfinite(saved["psnr_input"])
    assert 0 <= saved["coverage_of_range"] <= 1 and saved["coverage_nominal"] == 1 / 3
    assert (tmp_path / "restoration.png").read_bytes()[:4] == b"\x89PNG"
    restored = read_image(tmp_path / "restored" / "000.ome.tif")
    assert restored.channel_names[:2] == ["nuclei mean", "nuclei std"]
    assert restored.provenance["synthetic"] is True and restored.provenance["members"] == 2
    assert (tmp_path / "model" / "run.toml").is_file()


def test_the_demo_is_listed(capsys) -> None:
    assert main(["demo", "nosuch"]) == 1
    assert "microscopy" in capsys.readouterr().err
