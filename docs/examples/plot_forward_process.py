"""
# The forward process and its reverse, on data whose score is known

Diffusion models noise data step by step, `x_t = alpha_t x0 + sigma_t eps`, and learn to undo it.
On a Gaussian mixture the best denoiser `E[x0 | x_t]` is known in closed form
(`sciddpm.diffusion.mixture.GaussianMixture`), so we can watch both directions with no network
and no training: the data's density spreading into a Gaussian as the noise grows, and the
probability-flow ODE carrying noise back to the data along deterministic paths.
"""

# %%
# A 1-D mixture of three Gaussians, noised on the variance-preserving (VP) process.
import matplotlib.pyplot as plt
import torch

from sciddpm.diffusion.loop import build_scheduler
from sciddpm.diffusion.mixture import GaussianMixture

mixture = GaussianMixture(
    weights=torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64),
    means=torch.tensor([[-2.0], [0.5], [2.5]], dtype=torch.float64),
    stds=torch.tensor([0.3, 0.4, 0.2], dtype=torch.float64),
)
generator = torch.Generator().manual_seed(0)
x0 = mixture.sample(4000, generator)
scheduler = build_scheduler("dpmpp_2m", process="vp")
process = scheduler.process

fig, axes = plt.subplots(1, 5, figsize=(12, 2.4), sharey=True)
for ax, t in zip(axes, [0.0, 0.2, 0.4, 0.6, 1.0], strict=True):
    alpha, sigma = (float(v) for v in process.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
    x_t = alpha * x0 + sigma * torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    ax.hist(x_t.numpy().ravel(), bins=80, density=True, color="tab:blue")
    ax.set_title(f"t = {t:.1f}\nalpha {alpha:.2f}, sigma {sigma:.2f}", fontsize=9)
    ax.set_xlim(-4, 4)
axes[0].set_ylabel("density")
fig.suptitle("forward process: the data's density diffuses into N(0, 1)")
fig.tight_layout()

# %%
# Reverse: the probability-flow ODE, solved with DPM-Solver++(2M) and the exact denoiser. Each
# line is one sample's path from noise (t = 1, left) to data (t = 0, right); where the paths
# split is where the model decides which component a sample belongs to.
scheduler.set_timesteps(40)
model = mixture.model(process, "x0")
x = torch.linspace(-3, 3, 40, dtype=torch.float64)[:, None] * scheduler.init_noise_sigma
paths, times = [x.clone()], [float(scheduler.timesteps[0])]
for i, t in enumerate(scheduler.timesteps):
    x0_hat = model(x, torch.full((len(x),), float(t), dtype=torch.float64))
    x = scheduler.step(x0_hat, i, x, "x0").prev_sample
    paths.append(x.clone())
    times.append(float(scheduler.timesteps[i + 1]) if i + 1 < len(scheduler.timesteps) else 0.0)
paths = torch.stack(paths)[..., 0]

fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(times, paths.numpy(), color="tab:blue", lw=0.8)
ax.invert_xaxis()
ax.set_xlabel("t (1 = noise, 0 = data)")
ax.set_ylabel("x_t")
ax.set_title("probability-flow ODE paths with the exact denoiser")
for mean in mixture.means[:, 0]:
    ax.axhline(float(mean), color="gray", ls=":", lw=0.8)
fig.tight_layout()
