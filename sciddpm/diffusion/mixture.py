"""A Gaussian mixture with a closed-form denoiser: sampler error with no network error.

Data ``x0 ~ sum_k w_k N(mu_k, s_k^2 I)``; noised ``x = x0 + sigma eps`` (the VE view of every
process) is again a mixture, with ``E[x0 | x] = sum_k r_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2)
(x - mu_k))`` and ``r_k`` its posterior component weights. Used by the sampler tests and
``benchmarks/samplers.py``; handy for checking a sampler of one's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from sciddpm.diffusion.loop import build_scheduler, sample_callable
from sciddpm.diffusion.parametrization import from_x0, per_sample
from sciddpm.diffusion.processes import NoiseProcess
from sciddpm.diffusion.spacing import log_snr_sigmas
from sciddpm.interfaces import PredictionType
from sciddpm.seeding import noise_for

__all__ = ["GaussianMixture"]


@dataclass
class GaussianMixture:
    """Isotropic Gaussian mixture: ``weights (K,)``, ``means (K, D)``, ``stds (K,)``, float64."""

    weights: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor

    @classmethod
    def random(
        cls,
        dim: int,
        components: int,
        seed: int = 0,
        spread: float = 2.0,
        stds: tuple[float, float] = (0.1, 0.5),
    ) -> GaussianMixture:
        """A random mixture: means ~ N(0, spread^2), stds uniform in ``stds``, Dirichlet(1) weights."""
        g = torch.Generator().manual_seed(seed)
        f64 = torch.float64
        weights = -torch.rand(components, generator=g, dtype=f64).log()
        means = spread * torch.randn(components, dim, generator=g, dtype=f64)
        lo, hi = stds
        std = lo + (hi - lo) * torch.rand(components, generator=g, dtype=f64)
        return cls(weights / weights.sum(), means, std)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws ``(n, D)``."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.means.shape[1], generator=generator, dtype=self.means.dtype)
        return self.means[k] + self.stds[k, None] * eps

    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """``E[x0 | x0 + sigma eps = x]``; ``x = (B, ...)`` flattens to (B, D), sigma scalar or ``(B,)``."""
        shape, dtype = x.shape, x.dtype
        x = x.reshape(len(x), -1).to(self.means.dtype)
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1)  # (B or 1, 1)
        var = self.stds**2 + sigma**2  # (B, K)
        diff = x[:, None, :] - self.means  # (B, K, D)
        d = x.shape[1]
        log_r = self.weights.log() - 0.5 * (diff**2).sum(-1) / var - 0.5 * d * var.log()
        r = torch.softmax(log_r, dim=1)
        x0 = self.means + (self.stds**2 / var)[..., None] * diff
        return (r[..., None] * x0).sum(1).to(dtype).reshape(shape)

    def model(self, process: NoiseProcess, prediction_type: PredictionType = "eps", sigma_data: float = 1.0):
        """The exact ``model(x_t, t) -> prediction`` of ``prediction_type`` on ``process``.

        ``sigma_data`` is the data scale an ``edm`` output is preconditioned with (the scheduler's).
        """

        def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            alpha, sigma = process.alpha_sigma(t)
            x0 = self.denoise(x_t / per_sample(alpha, x_t), sigma / alpha)
            return from_x0(
                x0, x_t, per_sample(alpha, x_t), per_sample(sigma, x_t), prediction_type, sigma_data
            )

        return model

    def trajectory_reference(
        self,
        process: str,
        spacing: str,
        steps: int,
        samples: int = 512,
        seed: int = 1,
        reference_steps: int = 400,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The start and the fine reference run of :meth:`solver_errors`: ``(x_t, final samples)``.

        ``x_t`` is ``(samples, D)``: the noise of samples ``0 .. samples - 1`` of ``seed`` at the
        first time of ``steps`` steps of ``spacing`` on ``process``; the reference is
        ``reference_steps`` DPM-Solver++(2M) steps equally spaced in log-SNR from that time, with
        this mixture's exact x0 model (data units). Runs of other step counts that start at the
        same time share it. Raises what ``build_scheduler`` raises for an unknown process or spacing.
        """
        f64 = torch.float64
        sched = build_scheduler("dpmpp_2m", process=process, spacing=spacing)
        sched.set_timesteps(steps)
        model = self.model(sched.process, "x0")
        t0 = float(sched.timesteps[0])
        x = noise_for((self.means.shape[1],), seed, 0, samples).to(f64) * sched.init_noise_sigma
        lo, _ = sched.sigma_range()
        sigma0 = float(sched.process.sigma_ve(torch.tensor(t0, dtype=f64)))
        fine = log_snr_sigmas(reference_steps, lo, sigma0)
        ref_t = sched.process.t_from_sigma_ve(torch.tensor(fine, dtype=f64)).tolist()
        ref_t = [t0] + [t for t in ref_t[1:] if t < t0]
        ref = sample_callable(
            model, x, {"type": "dpmpp_2m", "timesteps": ref_t}, len(ref_t), "x0", process=process
        )
        return x, ref

    def component(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable component of each clean sample: ``x (B, D)`` to indices ``(B,)``.

        The argmax over k of ``log w_k + log N(x; mu_k, s_k^2 I)`` (the posterior at sigma = 0). A
        solver whose sample lands in another component than its reference has crossed the boundary
        between two basins of the probability-flow ODE: one such draw outweighs thousands of others
        in an RMS (docs/benchmarks.md, "Solver order across processes").
        """
        x = x.reshape(len(x), -1).to(self.means.dtype)
        var = self.stds**2
        sq = ((x[:, None, :] - self.means) ** 2).sum(-1)  # (B, K)
        log_p = self.weights.log() - 0.5 * sq / var - 0.5 * x.shape[1] * var.log()
        return log_p.argmax(dim=1)

    def draw_errors(
        self,
        samplers: Mapping[str, tuple[str, Mapping[str, Any]]],
        process: str,
        spacing: str,
        steps: int,
        samples: int = 512,
        seed: int = 1,
        reference_steps: int = 400,
        reference: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Each sampler's error on each draw: final samples minus the reference's, ``{label: (samples, D)}``.

        The runs of :meth:`solver_errors` (which reduces these to an RMS), kept draw by draw for
        paired statistics: two samplers run from the same starts, so their errors on one draw can
        be compared or resampled together (``benchmarks/solver_orders.py``). ``reference`` is
        :meth:`trajectory_reference`'s result, given to skip recomputing it. Raises what
        ``build_scheduler`` raises for an unknown name or option.
        """
        x, ref = reference or self.trajectory_reference(
            process, spacing, steps, samples, seed, reference_steps
        )
        model = self.model(build_scheduler("dpmpp_2m", process=process).process, "x0")
        return {
            label: sample_callable(model, x, name, steps, "x0", process=process, spacing=spacing, **options)
            - ref
            for label, (name, options) in samplers.items()
        }

    def solver_errors(
        self,
        samplers: Mapping[str, tuple[str, Mapping[str, Any]]],
        process: str,
        spacing: str,
        steps: int,
        samples: int = 512,
        seed: int = 1,
        reference_steps: int = 400,
        reference: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, float]:
        """RMS distance of each sampler's final samples to a fine reference run from the same noise.

        ``samplers`` maps a label to ``(scheduler name, options)``; each runs ``steps`` steps of
        ``spacing`` on ``process`` with this mixture's exact x0 model, from the start of
        :meth:`trajectory_reference` (the measure of issue 21 and ``benchmarks/solver_orders.py``),
        whose result ``reference`` may be given to skip recomputing it. Returns ``{label: rms}``
        (data units). Raises what ``build_scheduler`` raises for an unknown name or option.
        """
        errors = self.draw_errors(
            samplers, process, spacing, steps, samples, seed, reference_steps, reference
        )
        return {label: float(e.pow(2).mean().sqrt()) for label, e in errors.items()}
