"""The diffusers bridge: same samples as diffusers, at what cost? (issue 18)

A DDPM-sized pixel U-Net (diffusers' ``UNet2DModel`` defaults for 32 x 32 RGB, as google/ddpm-cifar10
uses: widths 128-256-256-256, two blocks per level, attention at 16 x 16; randomly initialised and
perturbed, since no weights can be downloaded here) is saved by diffusers as a ``DDIMPipeline`` and
sampled for ``--steps`` DDIM steps from the same noise three ways, side by side in one run:

- **diffusers**: its own ``UNet2DModel`` + ``DDIMScheduler`` loop (what ``DDIMPipeline`` runs);
- **sciddpm, wrapped**: ``Pipeline.from_diffusers`` of that folder (the ``diffusers_unet`` denoiser);
- **sciddpm, native**: the same network in sciddpm's own ``unet``, exported by ``to_diffusers`` and
  sampled there by diffusers' loop too (a ``scale_shift`` U-Net of the same widths).

It reports each way's wall time, the largest difference of the samples from diffusers', the time
to import and to export the folder, and the weights' size.

Usage::

    python benchmarks/diffusers_bridge.py                  # benchmarks/results/diffusers_bridge.json
    python benchmarks/diffusers_bridge.py --batch 2 --steps 5 --json /tmp/b.json   # a quick look
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import diffusers
import torch

from sciddpm import seeding
from sciddpm.pipeline import Pipeline

UNET = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (128, 256, 256, 256),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "layers_per_block": 2,
    "attention_head_dim": 256,
}


def _perturb(model: torch.nn.Module) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return model.eval()


REPEATS = 3  # each way is timed this often, interleaved with the others; the minimum is reported


def _diffusers_loop(unet: Any, scheduler: Any, noise: torch.Tensor, steps: int) -> tuple[torch.Tensor, float]:
    scheduler.set_timesteps(steps)
    start = time.perf_counter()
    z = noise
    with torch.no_grad():
        for t in scheduler.timesteps:
            z = scheduler.step(unet(z, t).sample, t, z).prev_sample
    return (z + 1) / 2, time.perf_counter() - start


def _timed_sample(pipe: Pipeline, n: int, steps: int) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    with torch.no_grad():
        x = pipe.sample(n, steps=steps, seed=0, batch_size=n)
    return x, time.perf_counter() - start


def _best(runs: list[tuple[torch.Tensor, float]]) -> tuple[torch.Tensor, float]:
    return runs[0][0], min(seconds for _, seconds in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "diffusers_bridge.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp())
    rows: list[dict[str, Any]] = []

    unet = _perturb(diffusers.UNet2DModel(**UNET))
    scheduler = diffusers.DDIMScheduler(clip_sample=False, timestep_spacing="trailing")
    diffusers.DDIMPipeline(unet=unet, scheduler=scheduler).save_pretrained(work / "ddpm")
    noise = seeding.noise_for((3, 32, 32), 0, 0, args.batch)
    start = time.perf_counter()
    wrapped = Pipeline.from_diffusers(work / "ddpm")
    import_seconds = time.perf_counter() - start

    native_cfg = {
        "encoder": {"type": "range"},
        "denoiser": {
            "type": "unet",
            "channels": list(UNET["block_out_channels"]),
            "blocks_per_level": 2,
            "attention_levels": [1],
            "mid_attention": True,
            "heads": 1,
            "groups": 32,
            "prediction": "eps",
        },
        "scheduler": {"type": "ddim", "discrete_betas": True},
    }
    native = Pipeline.from_config(native_cfg, data_shape=(3, 32, 32), fit=False)
    _perturb(native.denoiser)
    native.ema.load_state_dict(native.trainable.state_dict())
    native.eval()
    start = time.perf_counter()
    native.to_diffusers(work / "native")
    export_seconds = time.perf_counter() - start
    theirs_unet = diffusers.UNet2DModel.from_pretrained(work / "native", subfolder="unet").eval()
    theirs_sched = diffusers.DDIMScheduler.from_pretrained(work / "native", subfolder="scheduler")

    ways: dict[str, list[tuple[torch.Tensor, float]]] = {k: [] for k in ("d", "w", "n", "dn")}
    for _ in range(REPEATS):  # interleaved, so a slow spell of the machine hits every way alike
        ways["d"].append(_diffusers_loop(unet, scheduler, noise, args.steps))
        ways["w"].append(_timed_sample(wrapped, args.batch, args.steps))
        ways["n"].append(_timed_sample(native, args.batch, args.steps))
        ways["dn"].append(_diffusers_loop(theirs_unet, theirs_sched, noise, args.steps))
    (want, t_d), (got, t_w), (ours, t_n), (theirs, t_dn) = (_best(ways[k]) for k in ("d", "w", "n", "dn"))
    rows.append({"way": "diffusers UNet2DModel + DDIMScheduler", "seconds": t_d, "max_diff": 0.0})
    rows.append(
        {
            "way": "sciddpm from_diffusers (diffusers_unet)",
            "seconds": t_w,
            "max_diff": (got - want).abs().max().item(),
        }
    )
    diff = (ours - theirs).abs().max().item()
    rows.append({"way": "sciddpm unet (native), exported", "seconds": t_n, "max_diff": diff})
    rows.append({"way": "diffusers, on sciddpm's export", "seconds": t_dn, "max_diff": diff})

    size_mb = (work / "ddpm" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size / 2**20
    print(f"{args.batch} samples of 3 x 32 x 32, {args.steps} DDIM steps, U-Net {size_mb:.0f} MiB")
    print(f"{'way':44s} {'seconds':>8s} {'max |diff|':>11s}")
    for row in rows:
        print(f"{row['way']:44s} {row['seconds']:8.2f} {row['max_diff']:11.2e}")
    scale = max(want.abs().max().item(), theirs.abs().max().item())
    print(f"import (from_diffusers) {import_seconds:.2f} s, export (to_diffusers) {export_seconds:.2f} s")
    print(f"largest sample value {scale:.1f} (the random U-Net's samples are not images)")
    result = {
        "machine": {
            "platform": platform.platform(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "diffusers": diffusers.__version__,
        "batch": args.batch,
        "steps": args.steps,
        "unet_mib": size_mb,
        "import_seconds": import_seconds,
        "export_seconds": export_seconds,
        "largest_sample_value": scale,
        "rows": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
