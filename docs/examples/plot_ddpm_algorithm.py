"""
# The DDPM algorithm, written out

`sciddpm train` and `Pipeline.sample` run two short loops. Here they are by hand, with sciddpm's
pieces, on the 8 x 8 digits that ship with scikit-learn (Ho et al. 2020, Algorithms 1 and 2):

- **training**: take clean data `x0`, a time `t ~ U(0, 1]` and noise `eps`; noise the data,
  `x_t = alpha_t x0 + sigma_t eps`; ask the network for `eps` back; minimise the squared error;
- **sampling**: start from pure noise at `t = 1` and step down to `t = 0`, each step using the
  network's estimate of the clean data `x0` at the current `x_t`.

Nothing here is specific to images: the same loop trains on climate fields or microscopy stacks.
This run is small (a few hundred steps on 2 CPU cores, about a minute), so the digits are rough.
"""

# %%
# Data in model space: the digits' pixel values 0-16 mapped to [-1, 1].
import matplotlib.pyplot as plt
import torch
from sklearn.datasets import load_digits

from sciddpm.diffusion.loop import build_scheduler
from sciddpm.diffusion.preconditioning import Preconditioned
from sciddpm.registry import get_registry

torch.manual_seed(0)
x_data = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 8 - 1  # (1797, 1, 8, 8)

# The noise process and its sampler (DDPM's, on the cosine schedule), and a small U-Net that
# predicts eps. Preconditioned makes the network a denoiser: it scales the input and turns the
# network's output into an x0 estimate, for training and sampling alike.
scheduler = build_scheduler("ddpm", schedule="cosine")
network = get_registry().build(
    "denoiser", "unet", dims=2, in_channels=1, out_channels=1, channels=[32, 64],
    blocks_per_level=1, groups=8, heads=1, mid_attention=False, prediction="eps",
)  # fmt: skip
denoiser = Preconditioned(network, scheduler, "eps")

# %%
# Training (Algorithm 1). The loss is the mean squared error to the target of the prediction
# type (here eps), which Preconditioned.loss computes.
optimiser = torch.optim.AdamW(network.parameters(), lr=2e-3)
losses = []
for _ in range(400):
    x0 = x_data[torch.randint(0, len(x_data), (64,))]
    t = torch.rand(64).clamp_min(1e-3)  # continuous time in (0, 1]
    eps = torch.randn_like(x0)
    x_t = scheduler.process.add_noise(x0, eps, t)
    loss, _ = denoiser.loss(denoiser.output(x_t, t), x0, eps, t)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    losses.append(float(loss))

fig, ax = plt.subplots(figsize=(5, 2.5))
ax.plot(losses, lw=0.8)
ax.set_xlabel("step")
ax.set_ylabel("eps MSE")
ax.set_yscale("log")
ax.set_title("training loss")
fig.tight_layout()

# %%
# Sampling (Algorithm 2): from noise at t = 1, each step asks the denoiser for x0 and lets the
# scheduler move x_t to the next, lower time (DDPM's ancestral step adds fresh noise).
scheduler.set_timesteps(50)
network.eval()
x = torch.randn(16, 1, 8, 8) * scheduler.init_noise_sigma
with torch.no_grad():
    for i, t in enumerate(scheduler.timesteps):
        x0_hat = denoiser(x, torch.full((len(x),), float(t)))
        x = scheduler.step(x0_hat, i, x, "x0").prev_sample

fig, axes = plt.subplots(2, 8, figsize=(8, 2.2))
for ax, image in zip(axes.flat, x[:, 0], strict=True):
    ax.imshow(image.numpy(), cmap="gray_r", vmin=-1, vmax=1)
    ax.axis("off")
fig.suptitle("samples after 400 training steps, 50 DDPM steps")
fig.tight_layout()

# %%
# The same in two lines of the everyday API, with EMA weights, a learning-rate schedule,
# checkpoints and a model card: `sciddpm.train(run, "runs/digits")` and
# `Pipeline.load("runs/digits").sample(16, steps=50)`; see the README.
