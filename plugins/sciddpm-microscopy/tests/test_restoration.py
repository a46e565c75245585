"""Restoration end to end: a tiny conditional model trains on 2-D and 3-D data, restores with a spread."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sciddpm import Pipeline, train

from sciddpm_microscopy.calibration import Calibration, calibrate, stretch
from sciddpm_microscopy.camera import CameraConfig
from sciddpm_microscopy.reading import find_images, read_image
from sciddpm_microscopy.restoration import restore
from sciddpm_microscopy.source import ImageSource, ImageSourceConfig
from sciddpm_microscopy.synthetic import nuclei
from sciddpm_microscopy.writing import write_ome_tiff


def _run(patch: list[int]) -> dict:
    return {
        "pipeline": {
            "encoder": {"type": "microscopy/percentile"},
            "denoiser": {"type": "unet", "channels": [8, 16], "blocks_per_level": 1, "groups": 4, "heads": 1,
                         "mid_attention": False, "prediction": "v"},
            "conditioner": {"type": "microscopy/restoration"},
            "scheduler": {"type": "ddim"},
        },
        "train": {"steps": 4, "batch_size": 4, "lr": 1e-3, "seed": 0},
    }  # fmt: skip


def _source(tmp_path: Path, shape: tuple[int, ...], patch: list[int]) -> ImageSource:
    folder = tmp_path / "gt"
    folder.mkdir()
    axes = "CZYX" if len(shape) == 3 else "CYX"
    for k in range(2):
        clean = (nuclei(shape, np.random.default_rng(k)) * 2000 + 100).astype(np.uint16)
        write_ome_tiff(folder / f"{k}.ome.tif", clean[None], axes)
    camera = CameraConfig(photons=15.0, psf_sigma=[1.0])
    return ImageSource(ImageSourceConfig(path=str(folder), degrade=camera, patch=patch, patches_per_image=4))


@pytest.mark.parametrize(("shape", "patch"), [((32, 32), [16, 16]), ((8, 32, 32), [4, 16, 16])])
def test_a_restoration_model_trains_saves_and_restores(
    tmp_path: Path, shape: tuple, patch: list[int]
) -> None:
    src = _source(tmp_path, shape, patch)
    pipe = train(_run(patch), tmp_path / "run", source=src, progress=False)
    assert pipe.conditioner.concat_channels == 1
    noisy = src[0].condition
    out = restore(pipe, noisy, members=3, steps=2, seed=1)
    assert out.mean.shape == out.std.shape == out.lower.shape == (1, *patch)
    assert out.samples.shape == (3, 1, *patch)
    assert torch.isfinite(out.samples).all() and (out.std > 0).all()
    # Three members bound the central 50 % interval (widest_level): their min and max.
    assert out.level == 0.5
    torch.testing.assert_close(out.lower, out.samples.min(0).values)
    torch.testing.assert_close(out.upper, out.samples.max(0).values)
    # Calibrated on two other patches (enough for the 3 members' 50 % interval), saved and loaded,
    # the interval is the members' one stretched about the mean; the file says it is calibrated.
    held_out = [restore(pipe, src[i].condition, members=3, steps=2, seed=1) for i in (1, 2)]
    cal = Calibration.load(calibrate(held_out, [src[1].x, src[2].x]).save(tmp_path))
    calibrated = restore(pipe, noisy, members=3, steps=2, seed=1, calibration=cal)
    want_lo, want_hi = stretch(out.mean, out.lower, out.upper, cal.scale)
    torch.testing.assert_close(calibrated.lower, want_lo)
    torch.testing.assert_close(calibrated.upper, want_hi)
    assert calibrated.run["calibration"]["scale"] == cal.scale and cal.images == 2
    saved = read_image(calibrated.save(tmp_path / "calibrated.ome.tif"))
    assert saved.channel_names[2:] == ["c0 25% calibrated", "c0 75% calibrated"]
    with pytest.raises(ValueError, match="measured with steps=2, this restoration uses steps=3"):
        restore(pipe, noisy, members=3, steps=3, calibration=cal)
    # Per-image percentiles (CARE at prediction): another gain and offset restore the same.
    image = torch.as_tensor(noisy["input"])
    brighter = restore(pipe, 2 * image + 50, members=3, steps=2, seed=1, input_percentiles="per_image")
    plain = restore(pipe, image, members=3, steps=2, seed=1, input_percentiles="per_image")
    torch.testing.assert_close(brighter.samples, plain.samples, rtol=1e-4, atol=1e-2)
    assert brighter.run["input_percentiles"] == "per_image"
    fitted = restore(pipe, 2 * image + 50, members=3, steps=2, seed=1)
    assert not torch.allclose(fitted.samples, plain.samples, rtol=1e-2, atol=1.0)
    with pytest.raises(ValueError, match="input_percentiles must be 'fitted' or 'per_image'"):
        restore(pipe, image, members=3, input_percentiles="image")
    loaded = Pipeline.load(tmp_path / "run")  # percentiles of target and input travel with the model
    torch.testing.assert_close(restore(loaded, noisy, members=3, steps=2, seed=1).samples, out.samples)
    sizes = {"Y": 0.2, "X": 0.2}
    info = {"model": str(tmp_path / "run")}
    written = out.save(tmp_path / "restored.ome.tif", channel_names=["DAPI"], physical_sizes=sizes, info=info)
    back = read_image(written)
    assert back.channel_names == ["DAPI mean", "DAPI std", "DAPI 25%", "DAPI 75%"]
    # The provenance records what restore did, not what the caller says: steps, seed, members.
    assert back.provenance["synthetic"] is True and back.provenance["members"] == 3
    assert back.provenance["steps"] == 2 and back.provenance["seed"] == 1 and back.provenance["model"]
    assert back.physical_sizes["X"] == 0.2 and back.provenance["scheduler"]["type"] == "ddim"
    np.testing.assert_allclose(back.to_axes("C" + "ZYX"[3 - len(patch) :])[1:2], out.std.numpy(), rtol=1e-6)
    # A whole 2x-patch image (its clean version stands in for an input here) restores in tiles.
    big = [2 * p for p in patch]
    depth = slice(0, big[0]) if len(big) == 3 else slice(None)
    image = src.frames[0].read((depth, slice(0, big[-2]), slice(0, big[-1])))
    image = torch.from_numpy(image if len(big) == 3 else image[:, 0])
    tiled = restore(pipe, image, members=2, steps=2, overlap=[p // 4 for p in patch])
    assert tiled.mean.shape == (1, *big) and torch.isfinite(tiled.samples).all()
    # An image smaller than the patch is mirrored out to it and cropped back.
    small = image[(slice(None), *(slice(0, p - 3) for p in patch))]
    assert restore(pipe, small, members=2, steps=2).mean.shape == small.shape


def test_one_tile_equals_the_untiled_call(tmp_path: Path) -> None:
    from sciddpm.pipeline.tiling import sample_tiled

    src = _source(tmp_path, (32, 32), [16, 16])
    pipe = train(_run([16, 16]), tmp_path / "run", source=src, progress=False)
    noisy = src[1].condition
    untiled = pipe.sample(2, noisy, steps=3, seed=4)
    torch.testing.assert_close(sample_tiled(pipe, 2, noisy, (16, 16), overlap=0, steps=3, seed=4), untiled,
                               rtol=1e-4, atol=1e-3)  # fmt: skip


def test_a_large_image_restores_block_by_block_with_the_same_statistics(tmp_path: Path) -> None:
    src = _source(tmp_path, (32, 32), [16, 16])
    pipe = train(_run([16, 16]), tmp_path / "run", source=src, progress=False)
    image = nuclei((32, 40), np.random.default_rng(5))[None] * 2000 + 100  # not a multiple of a block
    kw = {"members": 3, "steps": 2, "overlap": 4, "level": 0.5, "progress": False}
    # A margin over the whole image makes every block the one-block run: block sizes cannot matter.
    a = restore(pipe, image, block=16, margin=40, **kw)
    b = restore(pipe, image, block=[24, 12], margin=40, batch_size=2, **kw)
    assert a.run["block"] == [16, 16] and a.run["margin"] == [40, 40]
    for field in ("mean", "std", "lower", "upper", "samples"):
        torch.testing.assert_close(getattr(a, field), getattr(b, field), rtol=1e-5, atol=1e-3)
    # The statistics, made block by block, are those of the members.
    torch.testing.assert_close(a.mean, a.samples.mean(0))
    torch.testing.assert_close(a.std, a.samples.std(0))
    assert bool((a.lower <= a.mean + 1e-4).all()) and bool((a.upper >= a.mean - 1e-4).all())
    lean = restore(pipe, image, block=16, margin=40, keep_samples=False, **kw)
    assert lean.samples is None
    torch.testing.assert_close(lean.mean, a.mean)
    with pytest.raises(ValueError, match=r"block \[8\] needs one number or 2"):
        restore(pipe, image, block=[8], **kw)
    small = image[:, :16, :16]  # fits one block, and a bad margin is still refused
    with pytest.raises(ValueError, match=r"margin \[1, 2, 3\] needs one number or 2"):
        restore(pipe, small, margin=[1, 2, 3], **kw)
    with pytest.raises(ValueError, match="margin >= 0"):
        restore(pipe, small, margin=-1, **kw)


def test_bad_restore_calls_get_clear_errors(tmp_path: Path) -> None:
    src = _source(tmp_path, (32, 32), [16, 16])
    pipe = train(_run([16, 16]), tmp_path / "run", source=src, progress=False)
    with pytest.raises(ValueError, match="members must be >= 2"):
        restore(pipe, src[0].condition, members=1)
    with pytest.raises(ValueError, match=r"a central 0\.9 interval needs at least 19 members, got 8"):
        restore(pipe, src[0].condition, members=8, level=0.9)
    bare = src[0].condition["input"][0]  # one channel without its axis
    assert restore(pipe, bare, members=2, steps=1).mean.shape == (1, 16, 16)
    with pytest.raises(ValueError, match="NaN or inf"):
        restore(pipe, torch.full((1, 16, 16), float("nan")), members=2, steps=1)
    with pytest.raises(ValueError, match="has 3 spatial dims"):
        restore(pipe, torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match=r"input image of sample 0 of the batch has shape \(2, 16, 16\)"):
        pipe.sample(1, [torch.zeros(2, 16, 16)], steps=1)


def test_generated_patches_go_to_a_resumable_ome_zarr_collection(tmp_path: Path) -> None:
    src = _source(tmp_path, (32, 32), [16, 16])
    pipe = train(_run([16, 16]), tmp_path / "run", source=src, progress=False)
    out = tmp_path / "restored.ome.zarr"
    info = {"model": "run", "steps": 2, "seed": 0}
    drawn = pipe.sample_into(src.native_writer(str(out), 3, index=0, info=info), 3, src[0].condition, steps=2)
    assert drawn == [0, 1, 2]
    again = pipe.sample_into(src.native_writer(str(out), 3, index=0, info=info), 3, src[0].condition, steps=2)
    assert again == []  # everything on disk is complete: nothing is redrawn
    members = find_images(out)
    assert len(members) == 3
    first = read_image(members[0])
    want = pipe.sample(1, src[0].condition, steps=2)[0]
    np.testing.assert_allclose(first.to_axes("CYX"), want.numpy(), rtol=1e-5, atol=1e-3)
    assert first.provenance["synthetic"] is True and first.provenance["data_index"] == 0
    assert src.native_writer(str(tmp_path / "x.npy"), 3) is None


def test_cli_sample_marks_ome_zarr_output_synthetic_with_the_weights_hash(tmp_path: Path, capsys) -> None:
    """`sciddpm sample RUN --out x.ome.zarr` writes through the source's writer with the provenance
    `sciddpm sample` records for every format: synthetic, the weights' sha256, sampler, seed."""
    from sciddpm.cli import main
    from sciddpm.provenance import weights_hash

    src = _source(tmp_path, (32, 32), [16, 16])
    train(_run([16, 16]), tmp_path / "run", source=src, progress=False)
    out = tmp_path / "cli.ome.zarr"
    args = ["sample", str(tmp_path / "run"), "--n", "2", "--steps", "2", "--data-index", "1", "--seed", "3",
            "--out", str(out), "--no-progress", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    members = find_images(out)
    assert len(members) == 2
    record = read_image(members[1]).provenance
    assert record["synthetic"] is True and record["weights_sha256"] == weights_hash(tmp_path / "run")
    assert record["seed"] == 3 and record["steps"] == 2 and record["data_index"] == 1


def test_sciddpm_evaluate_scores_restoration_ensembles_with_the_domain_metrics(tmp_path: Path) -> None:
    from sciddpm.pipeline.evaluation import evaluate_run
    from sciddpm.seeding import EVALUATION_ENSEMBLES, seed_for

    from sciddpm_microscopy.metrics import CoverageConfig, CoverageMetric, FRCConfig, FRCMetric, PSNRMetric

    src = _source(tmp_path, (32, 32), [16, 16])
    run = {**_run([16, 16]), "data": {"type": "microscopy/image", **src.config.model_dump(mode="json")}}
    pipe = train(run, tmp_path / "run", progress=False)
    report = evaluate_run(tmp_path / "run", n=8, steps=2, bootstrap=5, members=3, conditions=2,
                          metrics=["wasserstein"], progress=False)  # fmt: skip
    ens = report["ensembles"]
    assert ens["conditions"] == 2 and ens["members"] == 3 and ens["indices"] == [0, len(src) - 1]
    metrics = ens["metrics"]
    assert set(metrics) == {"microscopy/psnr", "microscopy/ssim", "microscopy/frc", "microscopy/coverage"}
    # Each figure is the metric of an ensemble drawn for that sample's condition (seed + k), or its mean.
    psnr, coverage, frc = [], [], []
    for k, index in enumerate(ens["indices"]):
        sample = src[index]
        drawn = (
            pipe.sample(3, sample.condition, steps=2, seed=seed_for(EVALUATION_ENSEMBLES, 0, k))
            .double()
            .numpy()
        )
        truth = sample.x.double().numpy()
        psnr.append(PSNRMetric()(drawn.mean(0), truth))
        coverage.append(CoverageMetric(CoverageConfig(level=0.5))(drawn, truth)["coverage"])
        frc.append(FRCMetric(FRCConfig(pixel_size=[1.0, 1.0]))(drawn.mean(0), truth))
    assert metrics["microscopy/psnr"]["value"] == pytest.approx(np.mean(psnr), rel=1e-6)
    assert metrics["microscopy/psnr"]["per_condition"] == pytest.approx(psnr, rel=1e-6)
    assert metrics["microscopy/coverage"]["coverage"] == pytest.approx(np.mean(coverage), rel=1e-6)
    assert metrics["microscopy/frc"]["value"] == pytest.approx(np.mean(frc), rel=1e-6)
    lo, hi = metrics["microscopy/psnr"]["interval"]
    assert min(psnr) - 1e-9 <= lo <= hi <= max(psnr) + 1e-9
    card = (tmp_path / "run" / "README.md").read_text()
    assert "microscopy/psnr" in card and "2 conditions x 3 members" in card
    assert set(metrics["microscopy/coverage"]["intervals"]) == {
        "coverage",
        "coverage_error",
        "spearman_error_std",
    }
    with pytest.raises(ValueError, match=r"members must be 0 .* or >= 2"):
        evaluate_run(tmp_path / "run", n=8, members=1)
    # members=0 leaves them out.
    assert evaluate_run(tmp_path / "run", n=8, steps=2, bootstrap=0, members=0, metrics=["wasserstein"],
                        progress=False)["ensembles"] is None  # fmt: skip
