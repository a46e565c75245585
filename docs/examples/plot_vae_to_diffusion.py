"""
# From VAEs to diffusion

Before diffusion models, a variational autoencoder (VAE; Kingma & Welling 2014) was the simplest
generative model to train: an encoder maps an image to a small latent code, a decoder maps the
code back, and a KL term pulls the codes towards `N(0, I)` so that decoding random normal codes
gives new images. The weaker the KL term, the sharper the reconstructions, and the further the
codes drift from `N(0, I)`: random codes then decode to blur. GANs avoid blur but are hard to
train and drop modes.

Latent diffusion (Rombach et al. 2022) keeps the VAE for what it does well, compressing, and lets
a diffusion model learn the distribution of its codes instead of assuming `N(0, I)`. Below, one
run trains both on the bundled digits (upsampled to 16 x 16): sciddpm's `vae` encoder (2 latent
channels at 8 x 8) and a class-conditional U-Net on its latents; about a minute on 2 CPU cores.
"""

# %%
import tempfile

import matplotlib.pyplot as plt
import numpy as np
import torch

from sciddpm import train
from sciddpm.registry import get_registry

run = {
    "data": {"type": "digits", "size": 16, "split": "train"},
    "pipeline": {
        "encoder": {"type": "vae", "channels": [16, 32], "latent_channels": 2, "beta": 1e-4, "steps": 300,
                    "batch_size": 32, "lr": 2e-3, "warmup_steps": 20, "seed": 0},
        "denoiser": {"type": "unet", "channels": [32, 64], "blocks_per_level": 1, "attention_levels": [],
                     "mid_attention": False, "prediction": "v"},
        "conditioner": {"type": "class_label", "dim": 32},
        "scheduler": {"type": "ddim", "schedule": "cosine"},
    },
    "train": {"steps": 400, "batch_size": 64, "lr": 2e-3, "warmup_steps": 40, "ema_decay": 0.99,
              "cond_drop": 0.1, "checkpoint_every": 0, "log_every": 100},
}  # fmt: skip
pipe = train(run, f"{tempfile.mkdtemp()}/latent_digits", progress=False)
vae = pipe.encoder
source = get_registry().build("data", run["data"])
x = torch.stack([source[i].x for i in range(len(source))])
labels = np.array([source[i].condition for i in range(len(source))])

# %%
# The autoencoder: originals (top) and their reconstructions through the 2 x 8 x 8 code.
with torch.no_grad():
    codes = vae.encode(x)
    reconstructions = vae.decode(codes)
fig, axes = plt.subplots(2, 10, figsize=(9, 2))
for col in range(10):
    for row, images in enumerate((x, reconstructions)):
        axes[row, col].imshow(images[col * 7, 0].numpy(), cmap="gray_r", vmin=0, vmax=16)
        axes[row, col].axis("off")
fig.suptitle(f"reconstructions: the latent is {tuple(codes.shape[1:])}, the data {tuple(x.shape[1:])}")
fig.tight_layout()

# %%
# The latent space: the codes' first two principal components, coloured by digit. Classes form
# regions, but nothing makes the codes as a whole a standard normal.
flat = codes.flatten(1).numpy()
flat = flat - flat.mean(0)
_, _, components = np.linalg.svd(flat, full_matrices=False)
projected = flat @ components[:2].T
fig, ax = plt.subplots(figsize=(5, 4))
points = ax.scatter(projected[:, 0], projected[:, 1], c=labels, cmap="tab10", s=5)
fig.colorbar(points, ax=ax, label="digit")
ax.set_title("VAE codes, first two principal components")
fig.tight_layout()

# %%
# Generating: decode random N(0, I) codes (the VAE's own generative model), against samples of the
# diffusion model trained on the codes, decoded by the same decoder.
generator = torch.Generator().manual_seed(0)
with torch.no_grad():
    prior = vae.decode(torch.randn(10, *codes.shape[1:], generator=generator))
diffusion = pipe.sample(10, list(range(10)), steps=30, seed=0)
fig, axes = plt.subplots(2, 10, figsize=(9, 2.2))
for col in range(10):
    for row, images in enumerate((prior, diffusion)):
        axes[row, col].imshow(images[col, 0].numpy(), cmap="gray_r", vmin=0, vmax=16)
        axes[row, col].axis("off")
axes[0, 0].set_title("decoded N(0, I) codes", fontsize=8, loc="left")
axes[1, 0].set_title("latent diffusion, digits 0-9", fontsize=8, loc="left")
fig.tight_layout()
