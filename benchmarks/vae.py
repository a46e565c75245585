"""Latent diffusion on 32x32 digits: sciddpm's KL-VAE vs diffusers' AutoencoderKL, then diffusion.

Three measurements in one process, on scikit-learn's digits upsampled to 32x32 (physical
units 0..16, ``DigitsSource(size=32)``, the seeded 80/20 split):

1. **Autoencoder.** sciddpm's ``vae`` encoder is trained on the train split by its own
   stage (``VAE.fit``); its reconstruction PSNR (data range 16, mean over images) is
   measured on the held-out test split.
2. **Peer.** diffusers' ``AutoencoderKL`` at a matched size (same widths, one residual block
   per encoder level, two per decoder level, no attention, no quant convs; parameters within
   a few %) is trained on the same standardised batches, in the same order, with the same
   loss (``sciddpm.components.vae.vae_loss``: squared error + beta * KL, posterior samples by
   reparameterisation), optimiser, LR schedule and step count, then scored the same way.
   The difference is therefore the network and its implementation, not the recipe.
3. **Latent diffusion.** A class-conditional U-Net is trained on the VAE's scaled latents
   (``encoder = {type = "vae", weights = ...}``, so the VAE is reused, not retrained); 20
   samples per class are decoded and scored by ``sciddpm.components.metrics.DigitsClassifier(size=32)``,
   the accuracy of a classifier trained on real digits at recognising the requested class.

Targets (issue 5): PSNR >= 24 dB, classified correctly >= 0.8. Torch runs on one thread.

Usage::

    python benchmarks/vae.py                  # everything, a few minutes on one core
    python benchmarks/vae.py --skip-peer --vae-steps 200 --diffusion-steps 200   # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from sciddpm.cli.demo import DEMO_RUN, GUIDANCE, SAMPLE_STEPS, SAMPLES_PER_CLASS

SIZE = 32
DATA_RANGE = 16.0
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "vae.json"
VAE = {
    "type": "vae",
    "channels": [16, 32, 32],
    "latent_channels": 4,
    "blocks_per_level": 1,
    "groups": 8,
    "batch_size": 32,
    "lr": 2e-3,
    "warmup_steps": 20,
    "beta": 1e-4,
    "device": "cpu",
}
DIFFUSION = {
    "denoiser": {
        "type": "unet",
        "channels": [32, 64],
        "blocks_per_level": 1,
        "attention_levels": [],
        "mid_attention": True,
        "prediction": "v",
    },
    # The digits demo's conditioner, scheduler, training recipe and sampling settings.
    "conditioner": DEMO_RUN["pipeline"]["conditioner"],
    "scheduler": DEMO_RUN["pipeline"]["scheduler"],
}


def psnr(reconstruction: torch.Tensor, x: torch.Tensor) -> float:
    """Mean over images of ``10 log10(range^2 / MSE)`` with the digits' range 16."""
    mse = (reconstruction.double() - x.double()).square().flatten(1).mean(1).clamp_min(1e-12)
    return float((10 * torch.log10(DATA_RANGE**2 / mse)).mean())


def digits(split: str) -> Any:
    from sciddpm.data import DigitsSource, DigitsSourceConfig

    return DigitsSource(DigitsSourceConfig(size=SIZE, split=split))


def run_sciddpm_vae(steps: int, seed: int, out: Path) -> tuple[dict, Path]:
    from sciddpm.components.vae import VAE as VAEModel
    from sciddpm.components.vae import VAEConfig

    params = {k: v for k, v in VAE.items() if k != "type"}
    vae = VAEModel(VAEConfig(dims=2, in_channels=1, steps=steps, seed=seed, **params))
    begin, cpu = time.perf_counter(), time.process_time()
    vae.fit(digits("train"))
    seconds, cpu = time.perf_counter() - begin, time.process_time() - cpu
    test = torch.stack([s.x for s in digits("test")])
    with torch.no_grad():
        value = psnr(vae.reconstruct(test), test)
    vae.save(out)
    row = {
        "library": "sciddpm",
        "model": "vae encoder (sciddpm.nn.vae.AutoencoderKL)",
        "parameters": sum(p.numel() for p in vae.net.parameters()),
        "steps": steps,
        "train_seconds": seconds,
        "train_cpu_seconds": cpu,
        "psnr_db": value,
        "final_reconstruction": vae.last_fit["final_reconstruction"],
        "final_kl": vae.last_fit["final_kl"],
        "latent_shape": list(vae.latent_shape((1, SIZE, SIZE))),
        "scale": float(vae.scale),
    }
    return row, out


def peer_model() -> torch.nn.Module:
    from diffusers import AutoencoderKL

    widths = tuple(VAE["channels"])
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * len(widths),
        up_block_types=("UpDecoderBlock2D",) * len(widths),
        block_out_channels=widths,
        layers_per_block=VAE["blocks_per_level"],
        latent_channels=VAE["latent_channels"],
        norm_num_groups=VAE["groups"],
        sample_size=SIZE,
        mid_block_add_attention=False,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def step_ms(repeats: int = 12) -> dict[str, float]:
    """Median ms of one training step (forward + backward) of each network on the same batch,
    measured alternately in this process, so machine load affects both alike."""
    import statistics

    from sciddpm.nn.vae import AutoencoderKL

    params = {k: VAE[k] for k in ("channels", "latent_channels", "blocks_per_level", "groups")}
    ours, peer = AutoencoderKL(dims=2, in_channels=1, **params), peer_model()
    batch, latent = VAE["batch_size"], (VAE["batch_size"], VAE["latent_channels"], 8, 8)
    x = torch.randn(batch, 1, SIZE, SIZE)

    def sciddpm_step() -> None:
        recon, mean, _ = ours(x, torch.randn(latent))
        ((recon - x).square().mean() + mean.square().mean()).backward()

    def diffusers_step() -> None:
        posterior = peer.encode(x).latent_dist
        recon = peer.decode(posterior.mean + posterior.std * torch.randn(latent)).sample
        ((recon - x).square().mean() + posterior.mean.square().mean()).backward()

    times: dict[str, list[float]] = {"sciddpm": [], "diffusers": []}
    for _ in range(repeats):
        for name, step in (("sciddpm", sciddpm_step), ("diffusers", diffusers_step)):
            begin = time.perf_counter()
            step()
            times[name].append(1000 * (time.perf_counter() - begin))
    return {name: statistics.median(t) for name, t in times.items()}


def run_peer(steps: int, seed: int) -> dict:
    """diffusers' AutoencoderKL trained exactly as sciddpm's VAE stage trains its network."""
    from sciddpm.components.encoders import Standardize
    from sciddpm.components.vae import vae_loss
    from sciddpm.config import TrainConfig
    from sciddpm.pipeline import _child_seed
    from sciddpm.training.stage import lr_at

    train, test = digits("train"), digits("test")
    norm = Standardize()
    norm.fit(train)
    x_train = norm.encode(torch.stack([s.x for s in train]))
    torch.manual_seed(seed)
    model = peer_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=VAE["lr"], weight_decay=0.0)
    schedule = TrainConfig(steps=steps, lr=VAE["lr"], warmup_steps=VAE["warmup_steps"])
    g = torch.Generator().manual_seed(_child_seed(seed, 4))  # the same batches and noise as sciddpm
    order = torch.empty(0, dtype=torch.long)
    batch = VAE["batch_size"]
    model.train()
    begin, cpu = time.perf_counter(), time.process_time()
    for step in range(steps):
        while len(order) < batch:
            order = torch.cat([order, torch.randperm(len(x_train), generator=g)])
        index, order = order[:batch], order[batch:]
        x = x_train[index]
        posterior = model.encode(x).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=g)
        recon = model.decode(posterior.mean + posterior.std * noise).sample
        parts = vae_loss(x, recon, posterior.mean, posterior.logvar, beta=VAE["beta"])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, schedule)
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    seconds, cpu = time.perf_counter() - begin, time.process_time() - cpu
    model.eval()
    x_test = torch.stack([s.x for s in test])
    with torch.no_grad():
        recon = norm.decode(model.decode(model.encode(norm.encode(x_test)).latent_dist.mean).sample)
    return {
        "library": "diffusers",
        "model": "diffusers.AutoencoderKL (matched widths, no attention, no quant convs)",
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": steps,
        "train_seconds": seconds,
        "train_cpu_seconds": cpu,
        "psnr_db": psnr(recon, x_test),
        "final_reconstruction": float(parts["reconstruction"].detach()),
        "final_kl": float(parts["kl"].detach()),
    }


def run_latent_diffusion(vae_dir: Path, steps: int, seed: int, out: Path, png: Path) -> dict:
    from sciddpm.components.metrics import DigitsClassifier
    from sciddpm.config import load_run
    from sciddpm.plot import save_grid
    from sciddpm.training.trainer import train

    run = load_run(
        {
            "data": {"type": "digits", "size": SIZE, "split": "train"},
            "pipeline": {"encoder": {"type": "vae", "weights": str(vae_dir)}, **DIFFUSION},
            "train": {**DEMO_RUN["train"], "steps": steps, "seed": seed},
        }
    )
    begin = time.perf_counter()
    pipe = train(run, out / "model", progress=False)
    trained = time.perf_counter()
    labels = [k for k in range(10) for _ in range(SAMPLES_PER_CLASS)]
    samples = pipe.sample(
        len(labels), labels, steps=SAMPLE_STEPS, guidance_scale=GUIDANCE, seed=seed, batch_size=100
    )
    sampled = time.perf_counter()
    accuracy = DigitsClassifier(size=SIZE).accuracy(samples.numpy(), labels)
    grid = torch.stack([samples[k * SAMPLES_PER_CLASS + j] for k in range(10) for j in range(10)])
    title = f"latent diffusion on 32x32 digits: classified correctly {accuracy:.2f}"
    save_grid(grid, png, nrow=10, row_labels=[str(k) for k in range(10)], title=title)
    return {
        "library": "sciddpm",
        "model": "class-conditional U-Net on the VAE's latents",
        "latent_shape": list(pipe.latent_shape),
        "parameters": sum(p.numel() for p in pipe.trainable.parameters()),
        "steps": steps,
        "train_seconds": trained - begin,
        "sample_seconds": sampled - trained,
        "samples_per_class": SAMPLES_PER_CLASS,
        "sample_steps": SAMPLE_STEPS,
        "guidance_scale": GUIDANCE,
        "classifier_accuracy": accuracy,
        "samples_png": png.name,
    }


def machine() -> dict[str, Any]:
    import diffusers

    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "load_average_before": list(os.getloadavg()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vae-steps", type=int, default=300, help="autoencoder steps (both libraries)")
    parser.add_argument("--diffusion-steps", type=int, default=500, help="latent diffusion steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-peer", action="store_true", help="no diffusers AutoencoderKL row")
    parser.add_argument("--out", type=Path, default=None, help="keep the models here (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        vae_row, vae_dir = run_sciddpm_vae(args.vae_steps, args.seed, out / "vae")
        rows = [vae_row]
        if not args.skip_peer:
            rows.append(run_peer(args.vae_steps, args.seed))
            for row, ms in zip(rows, step_ms().values(), strict=True):
                row["step_ms"] = ms
        png = args.json.with_name("vae_samples.png")
        diffusion = run_latent_diffusion(vae_dir, args.diffusion_steps, args.seed, out, png)

    print(f"\nautoencoder on {SIZE}x{SIZE} digits, {args.vae_steps} steps, PSNR on held-out test digits")
    print(
        f"  {'library':10} {'parameters':>10} {'step ms':>8} {'train s':>8} {'cpu s':>6} {'PSNR dB':>8} "
        f"{'final MSE':>10}"
    )
    for r in rows:
        ms = f"{r['step_ms']:.0f}" if "step_ms" in r else "-"
        print(
            f"  {r['library']:10} {r['parameters']:>10,} {ms:>8} {r['train_seconds']:>8.1f} "
            f"{r['train_cpu_seconds']:>6.1f} {r['psnr_db']:>8.2f} {r['final_reconstruction']:>10.5f}"
        )
    print(
        "  (step ms: median forward + backward, the two measured alternately; train s: wall clock of "
        "the whole stage, cpu s: its process CPU time, which other load on the machine inflates less)"
    )
    d = diffusion
    print(
        f"latent diffusion on {tuple(d['latent_shape'])} latents: {d['steps']} steps in "
        f"{d['train_seconds']:.0f} s, {10 * d['samples_per_class']} samples in {d['sample_seconds']:.0f} s, "
        f"classified correctly {d['classifier_accuracy']:.3f}"
    )
    targets = {"psnr_db": 24.0, "classifier_accuracy": 0.8}
    met = {
        "psnr_db": vae_row["psnr_db"] >= targets["psnr_db"],
        "classifier_accuracy": d["classifier_accuracy"] >= targets["classifier_accuracy"],
    }
    result = {
        "benchmark": "vae",
        "seed": args.seed,
        "vae_config": VAE,
        "autoencoder": rows,
        "latent_diffusion": {**d, "config": DIFFUSION},
        "targets": targets,
        "targets_met": met,
        "machine": {**info, "load_average_after": list(os.getloadavg())},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"targets met: {met}; wrote {args.json}")
    if not all(math.isfinite(r["psnr_db"]) for r in rows):
        raise SystemExit("a PSNR is not finite")


if __name__ == "__main__":
    main()
