"""Low-light fluorescence restoration: sciddpm's posterior mean against CARE and non-local means.

Issue 15, item 6. Data: the demo's synthetic nuclei (``sciddpm_microscopy.demo.make_demo_data``:
Gaussian PSF, noise-free high-SNR truth, Poisson-Gaussian input with read noise 2 e- and offset
100 ADU), ``--train`` training and ``--test`` held-out 96 x 96 pairs, at two photon levels (photons
at bright nuclei in the input). Every method restores the same held-out inputs and is scored by
CARE's conventions (the truth normalised by its 0.1/99.9 percentiles, the prediction by the affine
map that minimises the MSE; ``sciddpm_microscopy.metrics``):

- **input**: the noisy image itself;
- **NLM**: scikit-image's non-local means with its own noise estimate (``estimate_sigma``,
  ``h = 0.8 sigma``, 5 x 5 patches, distance 6), on the percentile-normalised input, and the same
  after the generalised Anscombe transform with the camera's known gain, offset and read noise
  (Makitalo & Foi 2013), which makes the noise Gaussian as NLM assumes;
- **CARE**: CAREamics does not install beside torch 2.13 on CPU (it pins torch 2.11 with CUDA
  wheels), so a CARE-equivalent regression: the same U-Net as the diffusion model (``unet``,
  channels 16/32/64, one block per level) mapping the normalised input to the normalised target,
  MSE loss, the same patches, normalisation, optimiser and learning rate, trained for the same
  wall-clock time as the diffusion model;
- **sciddpm**: the ``microscopy/restoration`` model, restored whole (tiled) with 20 members and 20
  DDIM steps; the posterior mean of the first 8 (the issue's ensemble) and of all 20, and one
  member. Calibration from the 20 members: coverage of the central 90 % interval (19 members
  bound it) and the Spearman correlation of |mean - truth| with the std.

A second part restores one ``--tiled-size`` x ``--tiled-size`` image in tiles of the training
patch, block by block (the default): the error on tile-edge and block-edge pixels against the rest
(seams), and the growth of resident memory while restoring 512, 1024 and 2048-pixel images, each
in a fresh process; ``--whole`` also restores each as one block (the whole image's sampler state
at once), the peer. ``--tiled-only`` runs this part alone on a model a previous run left.

Usage::

    python benchmarks/microscopy.py            # benchmarks/results/microscopy.json, ~25 min on 2 cores
    python benchmarks/microscopy.py --photons 3 --train-steps 50 --json /tmp/m.json   # a quick look
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_STEPS = 20
MEMBERS = 20
TILED_STEPS = 6  # the tiled part measures seams and memory, not accuracy


def _run(folders: dict[str, Path], steps: int, seed: int) -> dict[str, Any]:
    from sciddpm_microscopy.demo import DEMO_RUN

    raw = json.loads(json.dumps(DEMO_RUN))
    raw["data"].update(path=str(folders["train/gt"]), input=str(folders["train/low"]), seed=seed)
    raw["train"].update(steps=steps, seed=seed, warmup_steps=min(100, steps // 10))
    return raw


def train_care(pipe: Any, source: Any, seconds: float, lr: float, batch_size: int, seed: int) -> Any:
    """The CARE-equivalent regression U-Net, trained for ``seconds`` of wall-clock on ``source``'s patches.

    Inputs and targets are normalised by the diffusion pipeline's fitted conditioner and encoder,
    so both methods see the same numbers. Returns the network (eval mode) and the steps it took.
    """
    from sciddpm.nn.unet import UNet, UNetConfig

    cfg = pipe.config.model_dump(mode="json")["denoiser"]
    keep = {"channels", "blocks_per_level", "attention_levels", "mid_attention"}
    net = UNet(
        UNetConfig(dims=2, in_channels=1, out_channels=1, prediction="x0", **{k: cfg[k] for k in keep})
    )
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        idx = rng.integers(0, len(source), batch_size)
        batch = [source[int(i)] for i in idx]
        x = torch.stack([s.x for s in batch])
        with torch.no_grad():
            target = pipe.encoder.encode(x)
            low = pipe.conditioner([s.condition for s in batch], batch_size).concat
        loss = torch.nn.functional.mse_loss(net(low, torch.zeros(batch_size)), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    net.eval()
    return net, steps


def care_predict(pipe: Any, net: Any, noisy: np.ndarray) -> np.ndarray:
    """The regression's prediction ``(C, Y, X)`` of a whole input image, in the target's units."""
    with torch.no_grad():
        low = pipe.conditioner.normalize(torch.from_numpy(noisy)[None])
        return pipe.encoder.decode(net(low, torch.zeros(1)))[0].double().numpy()


def nlm(noisy: np.ndarray, anscombe: bool, gain: float, offset: float, read_noise: float) -> np.ndarray:
    """Non-local means of a 2-D input (scikit-image), optionally inside the generalised Anscombe transform."""
    from skimage.restoration import denoise_nl_means, estimate_sigma

    x = noisy.astype(np.float64)
    if anscombe:  # Makitalo & Foi 2013, eq. 4-5: Poisson-Gaussian -> unit-variance Gaussian
        x = 2 / gain * np.sqrt(np.maximum(gain * x + 3 / 8 * gain**2 + read_noise**2 - gain * offset, 0))
    lo, hi = np.percentile(x, [0.1, 99.9])
    z = (x - lo) / (hi - lo)
    sigma = float(estimate_sigma(z))
    d = denoise_nl_means(z, h=0.8 * sigma, sigma=sigma, fast_mode=True, patch_size=5, patch_distance=6)
    d = d * (hi - lo) + lo
    if anscombe:  # the algebraic inverse; CARE's affine fit in the scores absorbs most of its bias
        d = ((gain * d / 2) ** 2 - 3 / 8 * gain**2 - read_noise**2 + gain * offset) / gain
    return d


def level(photons: float, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Train both models at one photon level and score every method on the held-out images."""
    from sciddpm_microscopy.demo import OFFSET, READ_NOISE, make_demo_data
    from sciddpm_microscopy.metrics import error_std_spearman, interval_coverage, psnr, ssim
    from sciddpm_microscopy.reading import find_images, read_image
    from sciddpm_microscopy.restoration import restore
    from sciddpm_microscopy.source import ImageSource, ImageSourceConfig

    from sciddpm.config import load_run
    from sciddpm.training.trainer import train

    folders = make_demo_data(work / "data", train=args.train, test=args.test, seed=args.seed, photons=photons)
    raw = _run(folders, args.train_steps, args.seed)
    t0 = time.perf_counter()
    pipe = train(load_run(raw), work / "model", progress=False)
    diffusion_seconds = time.perf_counter() - t0
    source = ImageSource(ImageSourceConfig(**{k: v for k, v in raw["data"].items() if k != "type"}))
    care, care_steps = train_care(
        pipe, source, diffusion_seconds, raw["train"]["lr"], raw["train"]["batch_size"], args.seed
    )
    methods = [
        "input",
        "nlm",
        "nlm_anscombe",
        "care",
        "sciddpm_one_member",
        "sciddpm_mean_8",
        "sciddpm_mean_20",
    ]
    scores: dict[str, dict[str, list[float]]] = {m: {"psnr": [], "ssim": []} for m in methods}
    coverage, spearman, sample_seconds = [], [], 0.0
    for path in find_images(folders["test/low"]):
        noisy = read_image(path).to_axes("CYX").astype(np.float32)
        truth = read_image(folders["test/gt"] / path.name).to_axes("CYX").astype(np.float64)[0]
        t1 = time.perf_counter()
        out = restore(pipe, noisy, members=MEMBERS, steps=SAMPLE_STEPS, seed=args.seed, level=0.9)
        sample_seconds += time.perf_counter() - t1
        members = out.samples.double().numpy()[:, 0]
        predictions = {
            "input": noisy[0],
            "nlm": nlm(noisy[0], False, 1.0, OFFSET, READ_NOISE),
            "nlm_anscombe": nlm(noisy[0], True, 1.0, OFFSET, READ_NOISE),
            "care": care_predict(pipe, care, noisy)[0],
            "sciddpm_one_member": members[0],
            "sciddpm_mean_8": members[:8].mean(0),
            "sciddpm_mean_20": members.mean(0),
        }
        for m, p in predictions.items():
            scores[m]["psnr"].append(psnr(p, truth))
            scores[m]["ssim"].append(ssim(p, truth))
        coverage.append(interval_coverage(members, truth, level=0.9))
        spearman.append(error_std_spearman(members.mean(0), members.std(0, ddof=1), truth))
    table = {m: {k: float(np.mean(v)) for k, v in s.items()} for m, s in scores.items()}
    return {
        "photons": photons,
        "scores": table,
        "coverage_90": float(np.mean(coverage)),
        "spearman_error_std": float(np.mean(spearman)),
        "diffusion_train_seconds": diffusion_seconds,
        "diffusion_train_steps": args.train_steps,
        "care_train_seconds": diffusion_seconds,
        "care_train_steps": care_steps,
        "sciddpm_restore_seconds_per_image": sample_seconds / args.test,
        "targets": {
            "mean_8_psnr_ge_care": table["sciddpm_mean_8"]["psnr"] >= table["care"]["psnr"],
            "mean_8_psnr_ge_nlm_plus_3db": table["sciddpm_mean_8"]["psnr"]
            >= max(table["nlm"]["psnr"], table["nlm_anscombe"]["psnr"]) + 3,
            "coverage_90_in_0.85_0.95": 0.85 <= float(np.mean(coverage)) <= 0.95,
            "spearman_ge_0.5": float(np.mean(spearman)) >= 0.5,
        },
    }


class _RssWatch:
    """The process's current resident memory, sampled every 20 ms on a thread: the peak above a baseline.

    ``ru_maxrss`` is a high-water mark of the whole process, so set-up that peaked higher (making
    the test image) would hide what restoring costs; this measures from the RSS just before it.
    """

    def __init__(self) -> None:
        import gc
        import os
        import threading

        gc.collect()
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.peak = self._rss()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self.page

    def _watch(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def done(self) -> tuple[float, float]:
        """``(baseline, peak growth)`` in MiB."""
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self._rss())
        return self.base / 2**20, (self.peak - self.base) / 2**20


def tiled_child(model: Path, size: int, seed: int, steps: int, whole: bool) -> None:
    """In a fresh process: restore one ``size``-pixel image in tiles; print JSON of seams and memory.

    ``whole``: the whole image in one tiled run (a block as large as the image), the peer of the
    default block-wise restoration.
    """
    from sciddpm_microscopy.camera import CameraConfig, degrade, expected_electrons
    from sciddpm_microscopy.demo import OFFSET, PHOTONS_HIGH, PSF_SIGMA, READ_NOISE
    from sciddpm_microscopy.restoration import restore
    from sciddpm_microscopy.synthetic import nuclei

    from sciddpm import Pipeline

    photons = json.loads((model.parent / "photons.json").read_text())
    rng = np.random.default_rng(seed)
    clean = nuclei((size, size), rng)
    low = CameraConfig(photons=photons, read_noise=READ_NOISE, offset=OFFSET, psf_sigma=[PSF_SIGMA])
    high = CameraConfig(photons=PHOTONS_HIGH, read_noise=0.0, offset=OFFSET, psf_sigma=[PSF_SIGMA])
    truth = expected_electrons(clean, high, spatial_dims=2) + OFFSET
    noisy = np.clip(np.rint(degrade(clean, low, rng)), 0, 65535)[None].astype(np.float32)
    del clean
    pipe = Pipeline.load(model)
    patch = pipe.data_shape[1]
    overlap = patch // 4
    watch = _RssWatch()
    t0 = time.perf_counter()
    # Default blocks (8 patches a side, grown by one patch), or one block: the whole image at once.
    out = restore(pipe, noisy, members=2, steps=steps, seed=seed, overlap=overlap, keep_samples=False,
                  block=size if whole else None)  # fmt: skip
    seconds = time.perf_counter() - t0
    baseline, growth = watch.done()
    from sciddpm.pipeline.tiling import tile_origins

    # Pixels on a tile's first or last row/column, and on a block's, where a seam would show.
    edge = np.zeros(size, bool)
    for o in tile_origins(size, patch, overlap):
        edge[[o, o + patch - 1]] = True
    block = out.run.get("block", [size])[0]
    block_edge = np.zeros(size, bool)
    for o in range(0, size, block):
        block_edge[[o, min(o + block, size) - 1]] = True
    on_edge = edge[:, None] | edge[None, :]
    on_block_edge = block_edge[:, None] | block_edge[None, :]
    on_block_edge[[0, -1], :] = on_block_edge[:, [0, -1]] = False  # the image's own border is no seam
    error = np.abs(out.mean[0].double().numpy() - truth)
    interior = ~on_edge & ~on_block_edge
    print(json.dumps({
        "size": size,
        "mode": "whole image" if whole else "blocks",
        "steps": steps,
        "seconds": seconds,
        "block": block,
        "rss_before_mib": baseline,
        "rss_growth_mib": growth,
        "outputs_mib": 4 * size * size * 4 / 2**20,  # mean, std, lower, upper (float32)
        "edge_error": float(error[on_edge].mean()),
        "block_edge_error": float(error[on_block_edge].mean()) if on_block_edge.any() else None,
        "interior_error": float(error[interior].mean()),
    }))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photons", type=float, nargs="+", default=[3.0, 12.0])
    parser.add_argument("--train", type=int, default=16)
    parser.add_argument("--test", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=1500)
    parser.add_argument("--tiled-sizes", type=int, nargs="*", default=[512, 1024, 2048])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sciddpm_microscopy_bench"))
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/microscopy.json")
    parser.add_argument("--tiled-only", action="store_true",
                        help="only the tiled part, with the model a previous run left in --work")  # fmt: skip
    parser.add_argument(
        "--tiled-steps", type=int, default=TILED_STEPS, help="sampler steps of the tiled part"
    )
    parser.add_argument("--whole", action="store_true",
                        help="also restore each size as one block, the whole image at once")  # fmt: skip
    parser.add_argument("--tiled-child", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tiled_child:
        tiled_child(
            Path(args.tiled_child[0]), int(args.tiled_child[1]), args.seed, args.tiled_steps, args.whole
        )
        return
    import shutil

    begin = time.perf_counter()
    levels = []
    for photons in args.photons if not args.tiled_only else []:
        work = args.work / f"photons_{photons:g}"
        shutil.rmtree(work, ignore_errors=True)
        levels.append(level(photons, args, work))
        (work / "photons.json").write_text(json.dumps(photons))
        print(f"photons {photons:g}: done at {time.perf_counter() - begin:.0f} s", flush=True)
    tiled = []
    model = args.work / f"photons_{args.photons[0]:g}" / "model"
    for size in args.tiled_sizes:
        for whole in (False, True) if args.whole else (False,):
            command = [sys.executable, __file__, "--tiled-child", str(model), str(size),
                       "--seed", str(args.seed), "--tiled-steps", str(args.tiled_steps)]  # fmt: skip
            command += ["--whole"] if whole else []
            result = subprocess.run(command, check=True, capture_output=True, text=True)
            tiled.append(json.loads(result.stdout.strip().splitlines()[-1]))
            print(
                f"tiled {size} ({tiled[-1]['mode']}): done at {time.perf_counter() - begin:.0f} s", flush=True
            )

    print(
        f"\n{args.train} training / {args.test} held-out 96 x 96 images, {MEMBERS} members, "
        f"{SAMPLE_STEPS} steps"
    )
    for lv in levels:
        print(f"\nphotons {lv['photons']:g} (train {lv['diffusion_train_seconds']:.0f} s each; CARE took "
              f"{lv['care_train_steps']} steps, diffusion {lv['diffusion_train_steps']})")  # fmt: skip
        print("| method | PSNR (dB) | SSIM |")
        print("|---|---|---|")
        for m, s in lv["scores"].items():
            print(f"| {m} | {s['psnr']:.2f} | {s['ssim']:.3f} |")
        print(f"coverage of the 90 % interval {lv['coverage_90']:.3f}; Spearman |error| vs std "
              f"{lv['spearman_error_std']:.3f}; targets {lv['targets']}")  # fmt: skip
    print("\n| tiled size | mode | seconds | RSS growth while restoring (MiB) | outputs (MiB) | "
          "tile-edge / interior error | block-edge / interior error |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for t in tiled:
        inner = t["interior_error"]
        blocks = "-" if t["block_edge_error"] is None else f"{t['block_edge_error'] / inner:.3f}"
        print(f"| {t['size']} | {t['mode']} | {t['seconds']:.0f} | {t['rss_growth_mib']:.0f} | "
              f"{t['outputs_mib']:.0f} | {t['edge_error'] / inner:.3f} | {blocks} |")  # fmt: skip
    if args.tiled_only:
        path = args.json.with_name(args.json.stem + "_tiled.json")
        path.write_text(json.dumps({"tiled": tiled, "machine": platform.platform(),
                                    "threads": torch.get_num_threads()}, indent=1) + "\n")  # fmt: skip
        return
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "train_images": args.train, "test_images": args.test, "members": MEMBERS,
        "sample_steps": SAMPLE_STEPS,
        "levels": levels, "tiled": tiled, "seconds": time.perf_counter() - begin,
        "care_peer": "CARE-equivalent U-Net regression (CAREamics needs torch 2.11 + CUDA wheels)",
    }, indent=1) + "\n")  # fmt: skip
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
