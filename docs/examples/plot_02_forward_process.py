"""
# The forward process and its reverse, on data whose score is known

Diffusion models noise data step by step, `x_t = alpha_t x0 + sigma_t eps`, and learn to undo it.
On a Gaussian mixture the best denoiser `E[x0 | x_t]` is known in closed form
(`sciddpm.diffusion.mixture.GaussianMixture`), so we can watch both directions with no network
and no training: the data's density spreading into a Gaussian as the noise grows, particles in
2-D drifting and diffusing under the forward SDE with the score field that undoes it, and the two
ways back to the data: the reverse SDE (Anderson 1982; Song et al. 2021, Eq. 6), whose paths
are random, and the probability-flow ODE (Song et al. 2021, Eq. 13), whose paths are not; both
end on the same density.
"""

# %%
# A 1-D mixture of three Gaussians, noised on the variance-preserving (VP) process.
import matplotlib.pyplot as plt
import torch

from sciddpm.diffusion.loop import build_scheduler, sample_callable
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

# %%
# The same in 2-D, as particles. The forward SDE ``dx = f(t) x dt + g(t) dW`` pulls every particle
# towards the origin and kicks it at random (Brownian motion): the density obeys the Fokker-Planck
# equation and flattens into ``N(0, I)``. Each panel shows where the particles are at that time:
# fresh draws of ``alpha_t x0 + sigma_t eps``, which is the distribution the SDE carries them to
# (the paths themselves are not drawn). The arrows are the exact score
# ``grad log p_t(x) = (alpha_t E[x0 | x_t] - x_t) / sigma_t^2``, the direction in which the density
# grows; learning it is what training a diffusion model does (Tweedie's formula turns the
# denoiser into the score).
angles = torch.arange(6, dtype=torch.float64) * torch.pi / 3
ring = GaussianMixture(
    weights=torch.full((6,), 1 / 6, dtype=torch.float64),
    means=2.0 * torch.stack([angles.cos(), angles.sin()], dim=1),
    stds=torch.full((6,), 0.25, dtype=torch.float64),
)
particles = ring.sample(1500, generator)
ring_model = ring.model(process, "x0")
grid = torch.stack(torch.meshgrid(*(torch.linspace(-3.2, 3.2, 15, dtype=torch.float64),) * 2, indexing="xy"))
grid = grid.reshape(2, -1).T  # (225, 2) points where the score is drawn

fig, axes = plt.subplots(1, 5, figsize=(13, 2.9), sharex=True, sharey=True)
for ax, t in zip(axes, [0.02, 0.08, 0.14, 0.25, 1.0], strict=True):
    alpha, sigma = (float(v) for v in process.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
    x_t = alpha * particles + sigma * torch.randn(particles.shape, generator=generator, dtype=torch.float64)
    score = (alpha * ring_model(grid, torch.full((len(grid),), t, dtype=torch.float64)) - grid) / sigma**2
    score = score / score.norm(dim=1, keepdim=True).clamp(min=1e-12)  # directions only
    ax.scatter(x_t[:, 0], x_t[:, 1], s=1, alpha=0.4, color="tab:blue")
    ax.quiver(grid[:, 0], grid[:, 1], score[:, 0], score[:, 1], color="tab:red", scale=25, width=0.004)
    ax.set_title(f"t = {t:.2f}, sigma {sigma:.2f}", fontsize=9)
    ax.set_aspect("equal")
    ax.set_xlim(-3.4, 3.4)
    ax.set_ylim(-3.4, 3.4)
fig.suptitle("particles under the forward SDE (blue) and the direction of the score (red)")
fig.tight_layout()

# %%
# Two ways back. The reverse SDE ``dx = [f x - g^2 score] dt + g dW`` runs time backwards and
# keeps injecting noise, which the score term pulls back: DDPM's ancestral sampler is a
# discretisation of it (here 200 steps, ``ddpm``). The probability-flow ODE
# ``dx = [f x - g^2 score / 2] dt`` has the same density at every time with no noise at all
# (here DPM-Solver++(2M), 40 steps). From the same starting points the paths differ (left: the
# SDE's cross between components, the ODE's never cross), the final densities agree (right,
# against the true density). The ODE's smooth, deterministic paths are what make few-step
# solvers, fitted schedules and the Gaussian start practical; the SDE forgives a wrong score more, because its
# noise keeps correcting earlier errors (Karras et al. 2022, Sec. 4).
sde_scheduler = build_scheduler("ddpm")  # VP, like the ODE's scheduler; its own model below
sde_model = mixture.model(sde_scheduler.process, "x0")
starts = torch.linspace(-3, 3, 40, dtype=torch.float64)[:, None]
sde_paths = [starts.clone()]
sample_callable(
    sde_model, starts, sde_scheduler, steps=200, prediction_type="x0", seed=0,
    callback=lambda i, x_t, x0: sde_paths.append(x_t.clone()),
)  # fmt: skip
sde_paths = torch.stack(sde_paths)[..., 0]
sde_times = [*sde_scheduler.timesteps.tolist(), 0.0]  # the start, then the time after each step

noise = torch.randn(4000, 1, generator=generator, dtype=torch.float64)
ends = {
    "reverse SDE (ddpm, 200 steps)": sample_callable(sde_model, noise, sde_scheduler, 200, "x0"),
    "probability-flow ODE (dpmpp_2m, 40 steps)": sample_callable(model, noise, scheduler, 40, "x0"),
}
line = torch.linspace(-4, 4, 400, dtype=torch.float64)[:, None]
density = (
    mixture.weights
    * torch.exp(-0.5 * ((line - mixture.means[:, 0]) / mixture.stds) ** 2)
    / (mixture.stds * (2 * torch.pi) ** 0.5)
).sum(1)

fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.5), gridspec_kw={"width_ratios": [1.4, 1]})
left.plot(sde_times, sde_paths.numpy(), color="tab:orange", lw=0.6)
left.invert_xaxis()
left.set_xlabel("t (1 = noise, 0 = data)")
left.set_ylabel("x_t")
left.set_title("reverse-SDE paths from the ODE plot's starting points")
for (label, x), color in zip(ends.items(), ["tab:orange", "tab:blue"], strict=True):
    values = x.numpy().ravel()
    right.hist(values, bins=80, range=(-4, 4), density=True, histtype="step", color=color, label=label)
right.plot(line[:, 0], density, color="black", lw=1, label="true density")
right.set_xlabel("x0")
right.legend(fontsize=7)
right.set_title("both end on the data's density")
fig.tight_layout()
for label, x in ends.items():
    print(f"{label}: mean {float(x.mean()):+.3f}, std {float(x.std()):.3f}")
print(f"true: mean {float((mixture.weights * mixture.means[:, 0]).sum()):+.3f}, "
      f"std {float(mixture.sample(200_000, generator).std()):.3f}")  # fmt: skip
