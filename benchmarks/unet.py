"""U-Net speed: sciddpm's ``UNet`` against diffusers' ``UNet2DModel`` at a matched configuration.

Both networks are built to the same architecture, as far as the two libraries allow it:
the same widths per level, 2 residual blocks per level on the way down and 3 on the way up,
GroupNorm with 8 groups, the noise embedding as a scale-and-shift of the second norm (FiLM:
sciddpm's only mode, diffusers' ``resnet_time_scale_shift="scale_shift"``), self-attention
with heads of width 32 at the lowest resolution and in the bottleneck, stride-2 conv
downsampling and nearest + conv upsampling. Parameter counts agree to 0.01 % and the
multiply-adds of the textbook forms are the same (sciddpm computes its upsampling convs in
sub-pixel form, which needs fewer; the function is the same).

Timing: each model gets the same batch, noise levels and target; a train step is forward +
MSE loss + backward + ``torch.optim.AdamW.step`` (default settings, lr 1e-4), inference is a
``no_grad`` forward in eval mode. After warm-up the two models alternate repetition by
repetition in this one process (the order flips every repetition), so a change of machine
load hits both; the figure is the median wall time. ``ratio`` = diffusers' time / sciddpm's
(above 1: sciddpm is faster).

Memory: each model's train step runs in its own fresh subprocess with glibc's mmap threshold
fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``), so every tensor larger than that is mapped on
allocation and returned to the system when freed, and resident memory follows live tensors.
After one warm-up step (which creates the optimizer state) the kernel's resident high-water
mark is reset (``/proc/self/clear_refs``); ``step_peak_mb`` is the high-water mark of the next
train step minus the resident memory just before it: activations kept for backward,
gradients and temporaries. ``peak_mem_ratio`` = diffusers' step peak / sciddpm's (above 1:
sciddpm needs less). Linux only. The process-wide peaks (torch itself, weights, optimizer
state included) are recorded too.

Usage::

    python benchmarks/unet.py               # table + benchmarks/results/unet.json (~2 min, idle machine)
    python benchmarks/unet.py --threads 1    # on a shared machine: 2 threads stall when cores are busy
    python benchmarks/unet.py --configs 32x32x1 --sciddpm-checkpointing --json /tmp/ckpt.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "unet.json"

# name: (resolution, channels of the data, widths per level, batch)
CONFIGS: dict[str, tuple[int, int, tuple[int, ...], int]] = {
    "32x32x1": (32, 1, (32, 64, 128), 16),
    "64x64x3": (64, 3, (32, 64, 128, 256), 8),
}
HEAD_WIDTH = 32


def build(library: str, config: str, checkpointing: bool = False) -> torch.nn.Module:
    """The model of ``library`` ("sciddpm" or "diffusers") for ``config``, seeded."""
    res, c, widths, _ = CONFIGS[config]
    torch.manual_seed(0)
    if library == "sciddpm":
        from sciddpm.nn.unet import UNet, UNetConfig

        return UNet(
            UNetConfig(
                dims=2,
                in_channels=c,
                channels=list(widths),
                blocks_per_level=2,
                attention_levels=[len(widths) - 1],
                mid_attention=True,
                heads=widths[-1] // HEAD_WIDTH,
                groups=8,
                # only when asked, so that the script also runs against older sciddpm versions
                **({"checkpointing": True} if checkpointing else {}),
            )
        )
    from diffusers import UNet2DModel

    levels = len(widths)
    return UNet2DModel(
        sample_size=res,
        in_channels=c,
        out_channels=c,
        block_out_channels=widths,
        layers_per_block=2,
        down_block_types=("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
        norm_num_groups=8,
        attention_head_dim=HEAD_WIDTH,
        resnet_time_scale_shift="scale_shift",
    )


def inputs(config: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x_t``, the noise levels (DDPM's 0..1000 scale, which both embed) and an eps target."""
    res, c, _, batch = CONFIGS[config]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, c, res, res, generator=gen)
    t = torch.rand(batch, generator=gen) * 1000
    return x, t, torch.randn(batch, c, res, res, generator=gen)


class Runner:
    """One model with its optimizer; ``train()`` and ``infer()`` each return seconds of wall time."""

    def __init__(self, library: str, config: str, checkpointing: bool = False) -> None:
        self.library = library
        self.model = build(library, config, checkpointing)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.x, self.t, self.target = inputs(config)
        self.params = sum(p.numel() for p in self.model.parameters())

    def forward(self) -> torch.Tensor:
        out = self.model(self.x, self.t)
        return out if self.library == "sciddpm" else out.sample

    def train(self) -> float:
        self.model.train()
        start = time.perf_counter()
        loss = F.mse_loss(self.forward(), self.target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return time.perf_counter() - start

    def infer(self) -> float:
        self.model.eval()
        start = time.perf_counter()
        with torch.no_grad():
            self.forward()
        return time.perf_counter() - start


def interleaved(runners: list[Runner], kind: str, reps: int, warmup: int) -> list[list[float]]:
    """``reps`` timings per runner, alternating runners and flipping their order every repetition."""
    for _ in range(warmup):
        for r in runners:
            getattr(r, kind)()
    times: list[list[float]] = [[] for _ in runners]
    for rep in range(reps):
        order = list(range(len(runners)))[:: 1 if rep % 2 == 0 else -1]
        for i in order:
            times[i].append(getattr(runners[i], kind)())
    return times


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory_child(library: str, config: str, checkpointing: bool) -> dict[str, float]:
    """Runs in the subprocess: peak resident memory of one train step after a warm-up step."""
    runner = Runner(library, config, checkpointing)
    runner.train()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
    before = _status_kb("VmRSS")
    runner.train()
    peak = _status_kb("VmHWM")
    return {"rss_before_mb": before / 1024, "peak_mb": peak / 1024, "step_peak_mb": (peak - before) / 1024}


def measure_memory(library: str, config: str, threads: int, checkpointing: bool) -> dict[str, float]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
    cmd = [sys.executable, __file__, "--threads", str(threads), "--memory-child", library, config]
    cmd += ["--sciddpm-checkpointing"] if checkpointing else []
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine_info() -> dict[str, Any]:
    import diffusers

    model = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line
        ]
        model = names[0] if names else model
    return {
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
    }


def run_config(config: str, reps: int, threads: int, checkpointing: bool) -> dict[str, Any]:
    runners = [Runner("sciddpm", config, checkpointing), Runner("diffusers", config)]
    s, d = runners
    train = [statistics.median(t) * 1e3 for t in interleaved(runners, "train", reps, warmup=2)]
    infer = [statistics.median(t) * 1e3 for t in interleaved(runners, "infer", 2 * reps, warmup=1)]
    mem = [measure_memory(r.library, config, threads, checkpointing) for r in runners]
    _, _, widths, batch = CONFIGS[config]
    return {
        "config": config,
        "batch": batch,
        "channels": list(widths),
        "sciddpm_checkpointing": checkpointing,
        "params_sciddpm": s.params,
        "params_diffusers": d.params,
        "train_ms_sciddpm": round(train[0], 1),
        "train_ms_diffusers": round(train[1], 1),
        "train_ratio": round(train[1] / train[0], 3),
        "infer_ms_sciddpm": round(infer[0], 1),
        "infer_ms_diffusers": round(infer[1], 1),
        "infer_ratio": round(infer[1] / infer[0], 3),
        "step_peak_mb_sciddpm": round(mem[0]["step_peak_mb"], 1),
        "step_peak_mb_diffusers": round(mem[1]["step_peak_mb"], 1),
        "peak_mem_ratio": round(mem[1]["step_peak_mb"] / mem[0]["step_peak_mb"], 3),
        "process_peak_mb_sciddpm": round(mem[0]["peak_mb"], 1),
        "process_peak_mb_diffusers": round(mem[1]["peak_mb"], 1),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads (recorded in the JSON)")
    p.add_argument(
        "--reps", type=int, default=7, help="timed train steps per model (inference: twice as many)"
    )
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    p.add_argument("--sciddpm-checkpointing", action="store_true", help="sciddpm with gradient checkpointing")
    p.add_argument("--memory-child", nargs=2, metavar=("LIBRARY", "CONFIG"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(memory_child(*args.memory_child, args.sciddpm_checkpointing)))
        return

    machine = machine_info()
    machine["load_average_before"] = os.getloadavg()
    start = time.perf_counter()
    rows = []
    for config in args.configs:
        print(
            f"{config}: timing train steps, inference, then each model's memory in a subprocess", flush=True
        )
        rows.append(run_config(config, args.reps, args.threads, args.sciddpm_checkpointing))
    machine["load_average_after"] = os.getloadavg()  # well above 0 means other work shared the cores
    machine["seconds"] = round(time.perf_counter() - start, 1)

    header = [
        "config",
        "params sciddpm / diffusers",
        "train ms sciddpm / diffusers",
        "train ratio",
        "infer ms sciddpm / diffusers",
        "infer ratio",
        "step peak MB sciddpm / diffusers",
        "mem ratio",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = [
            r["config"],
            f"{r['params_sciddpm'] / 1e6:.3f} M / {r['params_diffusers'] / 1e6:.3f} M",
            f"{r['train_ms_sciddpm']:.0f} / {r['train_ms_diffusers']:.0f}",
            f"{r['train_ratio']:.2f}",
            f"{r['infer_ms_sciddpm']:.0f} / {r['infer_ms_diffusers']:.0f}",
            f"{r['infer_ratio']:.2f}",
            f"{r['step_peak_mb_sciddpm']:.0f} / {r['step_peak_mb_diffusers']:.0f}",
            f"{r['peak_mem_ratio']:.2f}",
        ]
        print("| " + " | ".join(cells) + " |")
    load = f"{machine['load_average_before'][0]:.2f} before, {machine['load_average_after'][0]:.2f} after"
    print(f"torch threads {machine['torch_threads']}, {machine['cpu']}, {machine['seconds']} s, load {load}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"configs": rows, "machine": machine}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
