"""The analytic start: carry the initial noise along a Gaussian's exact flow, at no network cost.

At high noise a trained denoiser is nearly the posterior mean of a Gaussian with the data's mean
``mu`` and covariance ``Sigma``, and the probability-flow ODE of ``N(mu, Sigma)`` is solved in
closed form: in the eigenbasis ``Sigma = U diag(lam) U^T`` each coordinate scales as
``sqrt((lam + sigma^2) / (lam + sigma_from^2))`` (Wang & Vastola 2023, "The hidden linear structure
in score-based models", https://arxiv.org/abs/2311.10892, "analytical teleportation"). Starting
a sampler at a lower noise level from the transported point spends no evaluation where the model
is nearly linear, so a small budget goes where the data's structure is decided; how low is safe
depends on the data, which is what :func:`sciddpm.steps.optimize_timesteps` with ``start=``
measures and chooses.

:class:`GaussianStart` holds the mean, the leading eigenpairs of the covariance and one variance
for the remaining directions (so image-sized data keeps a low rank), all in model space: the
space the denoiser sees (``pipe.encoder.encode(x)`` for a pipeline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from sciddpm.diffusion import NoiseProcess
from sciddpm.interfaces import Scheduler

__all__ = ["GaussianStart"]


@dataclass
class GaussianStart:
    """``N(mean, eigvecs diag(eigvals) eigvecs^T + residual (I - eigvecs eigvecs^T))`` over flattened samples.

    ``mean (D,)``, ``eigvecs (D, k)`` orthonormal columns, ``eigvals (k,)``, ``residual`` the
    variance of every direction orthogonal to ``eigvecs`` (0 when ``k = D``); float64.
    """

    mean: torch.Tensor
    eigvecs: torch.Tensor
    eigvals: torch.Tensor
    residual: float = 0.0

    @classmethod
    def fit(cls, samples: torch.Tensor, rank: int | None = None) -> GaussianStart:
        """Mean and covariance of ``samples (n, ...)`` (model space), keeping ``rank`` eigenpairs.

        ``rank`` defaults to every direction the samples resolve (``min(n - 1, D)``); the variance
        left over is spread evenly over the other directions.
        """
        if samples.ndim < 2 or len(samples) < 2:
            raise ValueError(
                f"fit needs a batch of at least 2 samples (n, ...), got shape {tuple(samples.shape)}"
            )
        x = samples.reshape(len(samples), -1).double()
        n, d = x.shape
        limit = min(n - 1, d)
        rank = limit if rank is None else rank
        if not 1 <= rank <= limit:
            raise ValueError(f"rank must be in 1..{limit} for {n} samples of {d} values, got {rank}")
        mean = x.mean(0)
        # The right singular vectors of the centred data are the covariance's eigenvectors.
        _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
        eigvals = s**2 / (n - 1)
        total = float(x.var(0).sum())
        residual = max(total - float(eigvals[:rank].sum()), 0.0) / (d - rank) if rank < d else 0.0
        return cls(mean, vh[:rank].T.contiguous(), eigvals[:rank].clone(), residual)

    @property
    def dim(self) -> int:
        """The number of values ``D`` in one flattened sample."""
        return len(self.mean)

    def transport(self, x_t: torch.Tensor, alpha: float, sigma: float, sigma_to: float) -> torch.Tensor:
        """Carry ``x_t = alpha x0 + sigma eps`` to noise level ``sigma_to`` along this Gaussian's PF-ODE.

        Returns the point in VE units (``x = x0 + sigma_to eps``), shaped like ``x_t``; ``alpha``
        may be 0 (pure noise, the flow process at t = 1).
        """
        if x_t.ndim < 2 or x_t[0].numel() != self.dim:
            raise ValueError(
                f"samples of shape {tuple(x_t.shape[1:])} hold {x_t[0].numel() if x_t.ndim else 0} "
                f"values but this GaussianStart was fitted on {self.dim}; fit it on model-space "
                "samples of the same shape"
            )
        if sigma_to < 0 or sigma <= 0 or alpha < 0:
            raise ValueError(f"need alpha >= 0, sigma > 0, sigma_to >= 0; got {alpha}, {sigma}, {sigma_to}")
        # float64 on the samples' device: the gains span many decades at high noise.
        mean, eigvecs, eigvals = (
            v.to(x_t.device, torch.float64) for v in (self.mean, self.eigvecs, self.eigvals)
        )
        centred = x_t.reshape(len(x_t), -1).double() - alpha * mean

        # (lam + sigma_to^2) / (lam + (sigma / alpha)^2), written so alpha = 0 stays finite.
        def gain(lam: torch.Tensor | float) -> torch.Tensor | float:
            if isinstance(lam, float):
                return math.sqrt((lam + sigma_to**2) / (alpha**2 * lam + sigma**2))
            return ((lam + sigma_to**2) / (alpha**2 * lam + sigma**2)).sqrt()

        along = centred @ eigvecs  # (B, k)
        out = gain(self.residual) * (centred - along @ eigvecs.T) + (gain(eigvals) * along) @ eigvecs.T
        return (mean + out).to(x_t.dtype).reshape(x_t.shape)

    def save(self, path: str | Path) -> Path:
        """Write the statistics to a safetensors file (no pickle)."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {
            "mean": self.mean,
            "eigvecs": self.eigvecs,
            "eigvals": self.eigvals,
            "residual": torch.tensor([self.residual], dtype=torch.float64),
        }
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
        return path

    @classmethod
    def load(cls, path: str | Path) -> GaussianStart:
        """Read a file written by :meth:`save`."""
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        missing = {"mean", "eigvecs", "eigvals", "residual"} - set(tensors)
        if missing:
            raise ValueError(f"{path} is not a GaussianStart file: it lacks {sorted(missing)}")
        return cls(tensors["mean"], tensors["eigvecs"], tensors["eigvals"], float(tensors["residual"][0]))


def initial_x(start: GaussianStart | None, scheduler: Scheduler, noise: torch.Tensor) -> torch.Tensor:
    """``x_t`` at ``scheduler.timesteps[0]`` from unit ``noise`` drawn for t = 1.

    Without a ``start`` that is the noise times ``init_noise_sigma`` (the run starts from noise at
    its first time, as usual); with one, the noise at t = 1 is carried to the first time.
    """
    if start is None:
        return noise * scheduler.init_noise_sigma
    alpha_1, sigma_1 = _alpha_sigma_1(scheduler)
    return carry(start, scheduler, noise * math.sqrt(alpha_1**2 + sigma_1**2))


def carry(start: GaussianStart, scheduler: Scheduler, x_1: torch.Tensor) -> torch.Tensor:
    """``x_t`` at ``scheduler.timesteps[0]`` from ``x_1``, the ``x_t`` at t = 1, along ``start``'s flow."""
    process = _process(scheduler)
    alpha_1, sigma_1 = _alpha_sigma_1(scheduler)
    t_first = scheduler.timesteps[0].double()
    x_ve = start.transport(x_1, alpha_1, sigma_1, float(process.sigma_ve(t_first)))
    return x_ve * float(process.alpha(t_first))


def _process(scheduler: Scheduler) -> NoiseProcess:
    process = getattr(scheduler, "process", None)
    if not isinstance(process, NoiseProcess):
        raise TypeError(
            f"scheduler {type(scheduler).__name__} exposes no noise process (.process), which a "
            "GaussianStart needs to carry the noise; use one of sciddpm's schedulers"
        )
    return process


def _alpha_sigma_1(scheduler: Scheduler) -> tuple[float, float]:
    alpha, sigma = _process(scheduler)._alpha_sigma(torch.tensor(1.0, dtype=torch.float64))
    return float(alpha), float(sigma)
