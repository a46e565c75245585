"""``sciddpm demo microscopy``: restoring low-light fluorescence images, with an uncertainty map.

1. :func:`make_demo_data` writes paired OME-TIFFs of synthetic nuclei (:mod:`sciddpm_microscopy.synthetic`):
   the ground truth as a high-SNR acquisition (the optics' Gaussian PSF, many photons, no noise)
   and the input as a low-light one (the same PSF, a few photons per pixel, Poisson-Gaussian camera
   noise with read noise and offset), in uint16 camera units with physical pixel sizes.
2. A conditional restoration model is trained on foreground patches of the training pairs
   (``microscopy/image`` with ``input``, ``microscopy/percentile``, ``microscopy/restoration``).
3. Each held-out input is restored whole (tiled) by an ensemble: the posterior mean, the per-pixel
   std and the central 90 % interval are written as an OME-TIFF, and scored against the truth
   (CARE's affine-scaled PSNR and SSIM, for the input too; coverage of the interval and the rank
   correlation of error with std). A figure shows input, truth, mean, three members and the std.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["DEMO_RUN", "make_demo_data", "run_demo"]

SIZE = 96  # pixels per side of a demo image
PIXEL = 0.1  # micrometres per pixel
PSF_SIGMA = 1.5  # pixels (~0.35 um FWHM: a high-NA objective at ~500 nm)
PHOTONS_LOW = 8.0  # photons at bright nuclei in the input
PHOTONS_HIGH = 1000.0  # ... in the ground truth
OFFSET, READ_NOISE = 100.0, 2.0
MEMBERS = 8
SAMPLE_STEPS = 20

#: The demo's run (data paths filled in at run time).
DEMO_RUN: dict[str, Any] = {
    "data": {"type": "microscopy/image", "patch": [32, 32], "patches_per_image": 48, "foreground": 0.3},
    "pipeline": {
        "encoder": {"type": "microscopy/percentile"},
        "denoiser": {
            "type": "unet",
            "channels": [16, 32, 64],
            "blocks_per_level": 1,
            "attention_levels": [],
            "mid_attention": False,
            "prediction": "v",
        },
        "conditioner": {"type": "microscopy/restoration"},
        "scheduler": {"type": "ddim", "schedule": "cosine"},
    },
    "train": {
        "steps": 1500,
        "batch_size": 16,
        "lr": 2e-3,
        "warmup_steps": 100,
        "ema_decay": 0.995,
        "checkpoint_every": 0,
        "log_every": 300,
    },
}


def make_demo_data(
    out: str | Path,
    *,
    train: int = 12,
    test: int = 3,
    seed: int = 0,
    photons: float = PHOTONS_LOW,
    size: int = SIZE,
) -> dict[str, Path]:
    """Write ``train`` + ``test`` paired OME-TIFFs under ``out``: ``{train,test}/{gt,low}/NNN.ome.tif``.

    Returns the four folders. Ground truth ``gain * PHOTONS_HIGH * psf(clean) + offset`` (noise-free),
    input ``gain * (Poisson(photons * psf(clean)) + Normal(0, READ_NOISE)) + offset``, both uint16
    (clipped at 0 and 65 535), ``size`` x ``size`` pixels of 0.1 um, channel "nuclei".
    """
    from sciddpm_microscopy.camera import CameraConfig, degrade, expected_electrons
    from sciddpm_microscopy.synthetic import nuclei
    from sciddpm_microscopy.writing import write_ome_tiff

    root = Path(out)
    folders = {
        f"{split}/{kind}": root / split / kind for split in ("train", "test") for kind in ("gt", "low")
    }
    low = CameraConfig(photons=photons, read_noise=READ_NOISE, offset=OFFSET, psf_sigma=[PSF_SIGMA])
    high = CameraConfig(photons=PHOTONS_HIGH, read_noise=0.0, offset=OFFSET, psf_sigma=[PSF_SIGMA])
    rng = np.random.default_rng(seed)
    meta = {"channel_names": ["nuclei"], "physical_sizes": {"Y": PIXEL, "X": PIXEL}}
    for split, count in (("train", train), ("test", test)):
        for k in range(count):
            clean = nuclei((size, size), rng)
            truth = expected_electrons(clean, high, spatial_dims=2) * high.gain + high.offset
            noisy = degrade(clean, low, rng)
            for kind, image in (("gt", truth), ("low", noisy)):
                pixels = np.clip(np.rint(image), 0, 65535).astype(np.uint16)[None]
                folders[f"{split}/{kind}"].mkdir(parents=True, exist_ok=True)
                write_ome_tiff(folders[f"{split}/{kind}"] / f"{k:03d}.ome.tif", pixels, "CYX", **meta)
    return folders


def _figure(noisy: np.ndarray, truth: np.ndarray, restored: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("low-light input", noisy),
        ("ground truth", truth),
        ("posterior mean", restored.mean[0].numpy()),
        *((f"sample {k + 1}", restored.samples[k, 0].numpy()) for k in range(min(3, len(restored.samples)))),
        ("std (uncertainty)", restored.std[0].numpy()),
    ]
    lo, hi = np.percentile(truth, [0.5, 99.8])
    fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels), 2.8))
    for c, (ax, (title, image)) in enumerate(zip(axes, panels, strict=True)):
        if c == 0:
            kw = {"vmin": np.percentile(image, 0.5), "vmax": np.percentile(image, 99.8), "cmap": "gray"}
        elif c == len(panels) - 1:
            kw = {"cmap": "magma"}
        else:
            kw = {"vmin": lo, "vmax": hi, "cmap": "gray"}
        im = ax.imshow(image, **kw)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if c in (0, 1, len(panels) - 1):
            fig.colorbar(im, ax=ax, fraction=0.046, label="ADU" if c < len(panels) - 1 else "ADU (std)")
    fig.suptitle(f"sciddpm demo microscopy: {PHOTONS_LOW:g} photons per bright pixel, restored", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_demo(
    out: str | Path = "demo_microscopy",
    *,
    steps: int | None = None,
    seed: int = 0,
    members: int = MEMBERS,
    train_images: int = 12,
    test_images: int = 3,
    sample_steps: int = SAMPLE_STEPS,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the data, train, restore the held-out images, score them; returns the report.

    Writes under ``out``: ``data/`` (the OME-TIFF pairs), ``model/`` (the trained pipeline),
    ``restored/NNN.ome.tif`` (mean, std, 5 % and 95 % per image, with provenance),
    ``restoration.png`` and ``metrics.json``. ``steps`` overrides the training steps (the CI test
    uses a few).
    """
    from sciddpm.config import load_run
    from sciddpm.training.trainer import train

    from sciddpm_microscopy.metrics import error_std_spearman, interval_coverage, psnr, ssim
    from sciddpm_microscopy.reading import find_images, read_image
    from sciddpm_microscopy.restoration import restore, widest_level

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    folders = make_demo_data(out / "data", train=train_images, test=test_images, seed=seed)
    raw = json.loads(json.dumps(DEMO_RUN))
    raw["data"].update(
        path=str(folders["train/gt"].resolve()), input=str(folders["train/low"].resolve()), seed=seed
    )
    raw["train"]["seed"] = seed
    if steps is not None:
        share = raw["train"]["warmup_steps"] / raw["train"]["steps"]
        raw["train"].update(steps=steps, warmup_steps=min(raw["train"]["warmup_steps"], int(steps * share)))
    made = time.perf_counter()
    pipe = train(load_run(raw), out / "model", progress=progress)
    trained = time.perf_counter()

    scores: dict[str, list[float]] = {k: [] for k in ("psnr_input", "psnr_mean", "ssim_input", "ssim_mean")}
    coverage, spearman = [], []
    nominal = widest_level(members)
    first = None
    for path in find_images(folders["test/low"]):
        low = read_image(path)
        truth = read_image(folders["test/gt"] / path.name).to_axes("CYX").astype(np.float64)
        noisy = low.to_axes("CYX").astype(np.float32)
        restored = restore(pipe, noisy, members=members, steps=sample_steps, seed=seed)
        restored.save(
            out / "restored" / path.name, channel_names=low.channel_names, physical_sizes=low.physical_sizes,
            units=low.units, info={"model": str(out / "model")},
        )  # fmt: skip
        mean = restored.mean.double().numpy()
        scores["psnr_input"].append(psnr(noisy[0], truth[0]))
        scores["psnr_mean"].append(psnr(mean[0], truth[0]))
        scores["ssim_input"].append(ssim(noisy[0], truth[0]))
        scores["ssim_mean"].append(ssim(mean[0], truth[0]))
        # The ensemble's range covers an exchangeable truth with probability (M - 1) / (M + 1).
        coverage.append(interval_coverage(restored.samples.double().numpy(), truth, level=nominal))
        spearman.append(error_std_spearman(mean, restored.std.double().numpy(), truth))
        if first is None:
            first = (noisy[0], truth[0], restored)
    sampled = time.perf_counter()
    assert first is not None
    _figure(*first, out / "restoration.png")
    report = {
        **{k: float(np.mean(v)) for k, v in scores.items()},
        "psnr_gain_db": float(np.mean(scores["psnr_mean"]) - np.mean(scores["psnr_input"])),
        "coverage_of_range": float(np.mean(coverage)),
        "coverage_nominal": nominal,
        "spearman_error_std": float(np.mean(spearman)),
        "members": members,
        "sample_steps": sample_steps,
        "train_steps": raw["train"]["steps"],
        "photons_low": PHOTONS_LOW,
        "test_images": test_images,
        "image_size": [SIZE, SIZE],
        "data_seconds": made - begin,
        "train_seconds": trained - made,
        "restore_seconds": sampled - trained,
        "total_seconds": time.perf_counter() - begin,
        "torch_threads": torch.get_num_threads(),
        "model": str(out / "model"),
    }
    report["summary"] = (
        f"PSNR {report['psnr_input']:.1f} dB (input) -> {report['psnr_mean']:.1f} dB (posterior mean of "
        f"{members}), SSIM {report['ssim_input']:.2f} -> {report['ssim_mean']:.2f}; the members' range "
        f"covers {report['coverage_of_range']:.0%} of pixels (calibrated: {nominal:.0%}); error-std rank "
        f"correlation {report['spearman_error_std']:.2f} (train {report['train_seconds']:.0f} s, restore "
        f"{report['restore_seconds']:.0f} s); see {out / 'restoration.png'} and {out / 'metrics.json'}"
    )
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
