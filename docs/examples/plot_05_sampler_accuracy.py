"""
# Why ten steps can be enough: sampler accuracy against the number of evaluations

A sampler's error is measured here with no network in the way: the denoiser of a 4-D Gaussian
mixture is exact (`GaussianMixture.solver_errors`), so every difference from a reference run from
the same noise (400 steps of DPM-Solver++(2M), far more accurate than any run here) is the
solver's. Higher-order solvers reuse earlier denoiser outputs (DPM-Solver++ 2M, UniPC) and reach
the error of many Euler steps in a few. Heun evaluates the network about twice per step, so its
points sit further right.
"""

# %%
import matplotlib.pyplot as plt

from sciddpm.diffusion.loop import build_scheduler
from sciddpm.diffusion.mixture import GaussianMixture

mixture = GaussianMixture.random(4, 3, seed=0, stds=(0.18, 0.28))
samplers = {
    "euler": ("euler", {}),
    "heun": ("heun", {}),
    "dpmpp_2m": ("dpmpp_2m", {}),
    "unipc": ("unipc", {"order": 2}),
}
budgets = [4, 6, 8, 10, 15, 20, 30]
errors = {label: [] for label in samplers}
for steps in budgets:
    for label, value in mixture.solver_errors(samplers, "vp", "log_snr", steps, samples=256).items():
        errors[label].append(value)

fig, ax = plt.subplots(figsize=(6, 3.8))
for label, values in errors.items():
    nfe = []  # Heun evaluates the network twice on most steps: count what each run costs
    for steps in budgets:
        scheduler = build_scheduler(samplers[label][0], process="vp", spacing="log_snr", **samplers[label][1])
        scheduler.set_timesteps(steps)
        nfe.append(len(scheduler.timesteps))
    ax.loglog(nfe, values, marker="o", label=label)
ax.set_xlabel("network evaluations")
ax.set_ylabel("RMS distance to the reference")
ax.set_title("VP process, log-SNR spacing, exact denoiser")
ax.legend()
fig.tight_layout()

# %%
# The table behind the plot: RMS error per number of steps (not evaluations: see the plot).
print("steps  " + "  ".join(f"{label:>9}" for label in samplers))
for i, steps in enumerate(budgets):
    print(f"{steps:5d}  " + "  ".join(f"{errors[label][i]:9.4f}" for label in samplers))
