"""Side-by-side benchmark: sciddpm's class-conditional digits demo vs a diffusers notebook recipe.

Both libraries learn scikit-learn's ``load_digits`` (8x8, 0..16 ink units) upsampled to 16x16,
generate ``--samples-per-class`` digits for each of the ten classes, and are scored by the same
yardstick: the accuracy of ``sciddpm.components.metrics.DigitsClassifier`` at recognising each sample as
the class it was asked to be.

The peer is the recipe of a workshop's diffusers notebook, reproduced here as it is usually
written:

* data: ``load_digits().images`` upsampled 8x8 -> 16x16 bilinearly, scaled ``x / 16 * 2 - 1``;
* model: ``UNet2DModel(sample_size=16, in_channels=1, out_channels=1, num_class_embeds=10,
  block_out_channels=(32, 64, 64), layers_per_block=1,
  down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
  up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))`` -- one attention level at 8x8
  plus the default attention in the mid block, 1.1 M parameters. ``layers_per_block=1`` because
  on a 2-core CPU it takes ~0.23 s a step against ~0.38 s for 2, and in a 200 s budget the
  extra steps win (classifier accuracy ~0.84 vs ~0.65);
* noise: ``DDPMScheduler(num_train_timesteps=200)`` with its defaults (linear betas from the
  T=1000 recipe, so alpha_bar_T = 0.13 rather than ~0; ``clip_sample=True``), MSE on eps,
  AdamW at lr 1e-3, batch 64, no EMA;
* training stops after ``--peer-seconds`` of wall clock (default 200 s), then the full 200-step
  ancestral DDPM draws the samples in batches of 100 (as sciddpm's demo does; on this CPU one
  batch of 200 costs ~5x more per sample than two of 100).

Both budgets are wall clock, so the numbers only mean something on an otherwise idle machine:
each row records the load average, and the peer row the cores its training actually got.

sciddpm runs as ``python -m sciddpm demo --out DIR`` in a subprocess; its row takes the
timings and classifier accuracy from ``DIR/report.json`` and adds the subprocess wall clock.

Usage::

    python benchmarks/digits.py                       # both, 200 s peer budget
    python benchmarks/digits.py --peer-seconds 20 --skip-sciddpm
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

N_CLASSES = 10
SIZE = 16
PEER_TIMESTEPS = 200
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "digits.json"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def machine_info() -> dict[str, Any]:
    try:
        import diffusers

        diffusers_version = diffusers.__version__
    except ImportError:
        diffusers_version = None
    return {
        "processor": platform.processor(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers_version,
    }


def score(samples: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of the shared digits classifier on ``samples`` (N, 1, 16, 16) in 0..16 units."""
    from sciddpm.components.metrics import DigitsClassifier

    return float(DigitsClassifier(size=SIZE).accuracy(samples, labels))


# --- the peer: a diffusers notebook recipe ---------------------------------------------------


def peer_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The notebook's data: 16x16 digits in [-1, 1] and their labels."""
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None]  # (N, 1, 8, 8), 0..16
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return x / 16 * 2 - 1, torch.tensor(digits.target, dtype=torch.long)


def peer_model(layers_per_block: int = 1) -> torch.nn.Module:
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=SIZE,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 64),
        layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        num_class_embeds=N_CLASSES,
    )


def run_peer(
    seconds: float,
    max_steps: int | None,
    samples_per_class: int,
    batch_size: int,
    sample_batch_size: int,
    lr: float,
    seed: int,
    layers_per_block: int = 1,
    beta_schedule: str = "linear",
    save_samples: Path | None = None,
) -> dict:
    from diffusers import DDPMScheduler

    seed_everything(seed)
    t_start = time.perf_counter()
    x0_all, y_all = peer_digits()
    model = peer_model(layers_per_block)
    scheduler = DDPMScheduler(num_train_timesteps=PEER_TIMESTEPS, beta_schedule=beta_schedule)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    n_params = sum(p.numel() for p in model.parameters())

    def done() -> bool:
        return time.perf_counter() - t_train >= seconds or (max_steps is not None and steps >= max_steps)

    model.train()
    steps, epochs, last_loss = 0, 0, float("nan")
    t_train, cpu_train = time.perf_counter(), time.process_time()
    while not done():
        order = torch.randperm(len(x0_all))
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            x0, y = x0_all[idx], y_all[idx]
            eps = torch.randn_like(x0)
            t = torch.randint(0, PEER_TIMESTEPS, (len(x0),))
            x_t = scheduler.add_noise(x0, eps, t)
            loss = torch.nn.functional.mse_loss(model(x_t, t, class_labels=y).sample, eps)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps, last_loss = steps + 1, loss.item()
            if done():
                break
        else:
            epochs += 1
    train_seconds = time.perf_counter() - t_train
    # ~threads x train_seconds on an idle machine; much less means other work shared the cores.
    train_cpu_seconds = time.process_time() - cpu_train

    model.eval()
    generator = torch.Generator().manual_seed(seed + 1)
    labels = torch.arange(N_CLASSES).repeat_interleave(samples_per_class)
    scheduler.set_timesteps(PEER_TIMESTEPS)
    chunks = []
    t_sample = time.perf_counter()
    with torch.inference_mode():
        for y in labels.split(sample_batch_size):
            x = torch.randn((len(y), 1, SIZE, SIZE), generator=generator)
            for t in scheduler.timesteps:
                eps_hat = model(x, t, class_labels=y).sample
                x = scheduler.step(eps_hat, t, x, generator=generator).prev_sample
            chunks.append(x)
    sample_seconds = time.perf_counter() - t_sample
    total_seconds = time.perf_counter() - t_start

    samples = ((torch.cat(chunks).clamp(-1, 1) + 1) / 2 * 16).numpy()  # back to 0..16 ink units
    if save_samples is not None:
        save_samples.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(save_samples, samples=samples, labels=labels.numpy())
    try:
        accuracy, error = score(samples, labels.numpy()), None
    except Exception as exc:  # keep the timings even if the shared classifier is unavailable
        accuracy, error = None, f"{type(exc).__name__}: {exc}"
    cores_used = train_cpu_seconds / train_seconds
    threads = torch.get_num_threads()
    warning = (
        f"training got {cores_used:.2f} of {threads} cores (machine busy?); "
        "its timings and accuracy understate the recipe"
        if cores_used < 0.8 * threads
        else None
    )
    return {
        "library": "diffusers",
        "recipe": f"notebook UNet2DModel + {PEER_TIMESTEPS}-step DDPM, {seconds:g} s budget"
        + (f" / {max_steps} steps" if max_steps is not None else ""),
        "train_seconds": train_seconds,
        "sample_seconds": sample_seconds,
        "total_seconds": total_seconds,
        "classifier_accuracy": accuracy,
        "samples_per_class": samples_per_class,
        "train_cpu_seconds": train_cpu_seconds,
        "train_steps": steps,
        "epochs": epochs,
        "final_loss": last_loss,
        "parameters": n_params,
        "batch_size": batch_size,
        "lr": lr,
        "layers_per_block": layers_per_block,
        "beta_schedule": beta_schedule,
        "error": error,
        "warning": warning,
    }


# --- sciddpm's demo ----------------------------------------------------------------------------


def run_sciddpm(out: Path | None, seed: int, steps: int | None, timeout: float) -> dict:
    row: dict[str, Any] = {"library": "sciddpm", "recipe": "python -m sciddpm demo"}
    with tempfile.TemporaryDirectory(prefix="sciddpm-digits-") as tmp:
        out_dir = out or Path(tmp)
        cmd = [
            sys.executable,
            "-m",
            "sciddpm",
            "demo",
            "--out",
            str(out_dir),
            "--seed",
            str(seed),
            "--no-progress",
        ]
        if steps is not None:
            cmd += ["--steps", str(steps)]
        row["command"] = " ".join(cmd[1:])
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            row.update(wall_seconds=time.perf_counter() - t0, error=f"timed out after {timeout:g} s")
            return row
        row["wall_seconds"] = time.perf_counter() - t0
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            row["error"] = f"exit {proc.returncode}: " + " | ".join(tail)
            return row
        try:
            report = json.loads((out_dir / "report.json").read_text())
        except (OSError, ValueError) as exc:
            row["error"] = f"no readable report.json in {out_dir}: {exc}"
            return row
    row.update(
        train_seconds=report.get("train_seconds"),
        sample_seconds=report.get("sample_seconds"),
        total_seconds=report.get("total_seconds"),
        classifier_accuracy=report.get("classifier_accuracy"),
        samples_per_class=report.get("samples_per_class"),
        report=report,
        error=None,
    )
    return row


# --- report ------------------------------------------------------------------------------------


def print_table(rows: list[dict]) -> None:
    cols = ["library", "recipe", "train_s", "sample_s", "total_s", "classifier_accuracy"]
    keys = ["library", "recipe", "train_seconds", "sample_seconds", "total_seconds", "classifier_accuracy"]

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    cells = [[fmt(r.get(k)) for k in keys] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    for r in rows:
        for key in ("error", "warning"):
            if r.get(key):
                print(f"{r['library']} {key}: {r[key]}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer-seconds", type=float, default=200.0, help="peer training wall-clock budget")
    p.add_argument(
        "--peer-steps", type=int, default=None, help="also stop the peer after this many steps (development)"
    )
    p.add_argument("--peer-layers-per-block", type=int, default=1)
    p.add_argument("--peer-beta-schedule", default="linear", choices=["linear", "squaredcos_cap_v2"])
    p.add_argument("--samples-per-class", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--sample-batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sciddpm-out", type=Path, default=None, help="keep the demo's output here")
    p.add_argument("--sciddpm-steps", type=int, default=None, help="override the demo's training steps")
    p.add_argument("--sciddpm-timeout", type=float, default=3600.0)
    p.add_argument("--skip-sciddpm", action="store_true")
    p.add_argument("--skip-peer", action="store_true")
    p.add_argument("--save-samples", type=Path, default=None, help="write the peer's samples to this .npz")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    machine = machine_info()
    machine["load_average_before"] = os.getloadavg()
    rows = []
    if not args.skip_sciddpm:
        rows.append(run_sciddpm(args.sciddpm_out, args.seed, args.sciddpm_steps, args.sciddpm_timeout))
    if not args.skip_peer:
        rows.append(
            run_peer(
                args.peer_seconds,
                args.peer_steps,
                args.samples_per_class,
                args.batch_size,
                args.sample_batch_size,
                args.lr,
                args.seed,
                args.peer_layers_per_block,
                args.peer_beta_schedule,
                args.save_samples,
            )
        )
    for r in rows:
        r["machine"] = machine
        r["load_average_after"] = os.getloadavg()  # a busy machine makes the timings meaningless

    print_table(rows)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"benchmark": "digits", "seed": args.seed, "rows": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
