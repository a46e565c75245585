"""
# The DDPM algorithm, written out

`sciddpm train` and `Pipeline.sample` run two short loops. Here they are by hand, with sciddpm's
pieces, on the 8 x 8 digits that ship with scikit-learn (after Ho et al. 2020, Algorithms 1 and 2):

- **training**: take clean data `x0`, a time `t` uniform in {1, ..., T}/T and noise `eps`;
  noise the data, `x_t = alpha_t x0 + sigma_t eps`; ask the network for the target back; minimise
  the squared error;
- **sampling**: start from pure noise at `t = 1` and step down to `t = 0`, each step drawing
  `x_{t-1}` from the Gaussian posterior `q(x_{t-1} | x_t, x0)` at the network's estimate of `x0`.

Two departures from the paper, both as in the digits demo: the cosine schedule (Nichol & Dhariwal
2021) instead of the linear one, and the network predicts `v = alpha eps - sigma x0` (Salimans &
Ho 2022) instead of `eps`. At the cosine schedule's last step `alpha` is about 5e-5, and an x0
estimate from a predicted `eps`, `(x_t - sigma eps) / alpha`, multiplies the network's error by
20 000; `v` keeps it bounded. Algorithm 2's update written with `eps` is the same posterior step
written with `x0` (Ho et al., Eqs. 6-7, 11).

Nothing here is specific to images: the same loop trains on climate fields or microscopy stacks.
This run is small (400 steps, about half a minute on 2 CPU cores), so the digits are rough.
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
# predicts v. Preconditioned makes the network a denoiser: it scales the input and turns the
# network's output into an x0 estimate, for training and sampling alike.
scheduler = build_scheduler("ddpm", schedule="cosine")
network = get_registry().build(
    "denoiser", "unet", dims=2, in_channels=1, out_channels=1, channels=[32, 64],
    blocks_per_level=1, groups=8, heads=1, mid_attention=False, prediction="v",
)  # fmt: skip
denoiser = Preconditioned(network, scheduler, "v")

# %%
# Training (Algorithm 1). The loss is the mean squared error to the target of the prediction
# type (here v), which Preconditioned.loss computes.
optimiser = torch.optim.AdamW(network.parameters(), lr=2e-3)
losses = []
for _ in range(400):
    x0 = x_data[torch.randint(0, len(x_data), (64,))]
    t = scheduler.sample_t(64)  # uniform in {1, ..., T} / T
    eps = torch.randn_like(x0)
    x_t = scheduler.process.add_noise(x0, eps, t)
    loss, _ = denoiser.loss(denoiser.output(x_t, t), x0, eps, t)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    losses.append(loss.item())

fig, ax = plt.subplots(figsize=(5, 2.5))
ax.plot(losses, lw=0.8)
ax.set_xlabel("step")
ax.set_ylabel("v MSE")
ax.set_yscale("log")
ax.set_title("training loss")
fig.tight_layout()

# %%
# Sampling (Algorithm 2): from noise at t = 1, each step asks the denoiser for x0 and lets the
# scheduler draw x_t at the next, lower time from the posterior (DDPM's step adds fresh noise).
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
