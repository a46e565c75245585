"""The analytic start: carry the initial noise along a Gaussian's exact flow, at no network cost.

At high noise a trained denoiser is nearly the posterior mean of a Gaussian with the data's mean
``mu`` and covariance ``Sigma``, and the probability-flow ODE of ``N(mu, Sigma)`` is solved in
closed form: in the eigenbasis ``Sigma = U diag(lam) U^T`` each coordinate scales as
``sqrt((lam + sigma^2) / (lam + sigma_from^2))`` (Wang & Vastola 2023, "The hidden linear structure
in score-based models", https://arxiv.org/abs/2311.10892, "analytical teleportation"). Starting
a sampler at a lower noise level from the transported point spends no evaluation where the model
is nearly linear, so a small budget goes where the data's structure is decided; how low is safe
depends on the data, which is what :func:`sciddpm.diffusion.timesteps.optimize_timesteps` with ``start=``
measures and chooses.

:class:`GaussianStart` holds the mean, the leading eigenpairs of the covariance and one variance
for the remaining directions (so image-sized data keeps a low rank), all in model space: the
space the denoiser sees (``pipe.encoder.encode(x)`` for a pipeline).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from sciddpm.diffusion.solvers import Level
from sciddpm.interfaces import Scheduler

__all__ = ["GaussianStart", "alpha_sigma_at_1", "carry", "correct_first", "initial_x", "noise_at_1"]

START_CONFIG = "gaussian_start.json"
START_TENSORS = "gaussian_start.safetensors"


@dataclass
class GaussianStart:
    """``N(mean, eigvecs diag(eigvals) eigvecs^T + residual (I - eigvecs eigvecs^T))`` over flattened samples.

    ``mean (D,)``, ``eigvecs (D, k)`` orthonormal columns, ``eigvals (k,)``, ``residual`` the
    variance of every direction orthogonal to ``eigvecs`` (0 when ``k = D``); float64. It is the
    *unconditional* data Gaussian: with a condition, the model decides nothing above the first
    time, so keep that time high for strongly conditioned sampling (or let
    :func:`~sciddpm.diffusion.timesteps.optimize_timesteps` judge, given the condition).
    """

    mean: torch.Tensor
    eigvecs: torch.Tensor
    eigvals: torch.Tensor
    residual: float = 0.0

    def __post_init__(self) -> None:
        self.mean, self.eigvecs, self.eigvals = (
            torch.as_tensor(v).detach().double().cpu() for v in (self.mean, self.eigvecs, self.eigvals)
        )
        self.residual = float(self.residual)
        d, k = len(self.mean), len(self.eigvals)
        if self.mean.ndim != 1 or self.eigvecs.shape != (d, k) or self.eigvals.ndim != 1:
            raise ValueError(
                f"need mean (D,), eigvecs (D, k), eigvals (k,); got {tuple(self.mean.shape)}, "
                f"{tuple(self.eigvecs.shape)}, {tuple(self.eigvals.shape)}"
            )
        if not (torch.isfinite(self.eigvals).all() and (self.eigvals >= 0).all() and self.residual >= 0):
            raise ValueError(
                f"variances must be finite and >= 0; got eigvals min {float(self.eigvals.min()):.3g}, "
                f"residual {self.residual}"
            )

    @classmethod
    def fit(cls, samples: torch.Tensor, rank: int | None = None) -> GaussianStart:
        """Mean and covariance of ``samples (n, ...)`` (model space), keeping ``rank`` eigenpairs.

        ``rank`` defaults to every direction the samples resolve (``min(n - 1, D)``); the variance
        beyond ``rank`` is spread evenly over the other ``D - rank`` directions. With ``n <= D`` and
        the default rank nothing is left over, so the directions the samples do not span get no
        variance: give more samples than values, or a smaller ``rank``. Memory is that of an SVD of
        the ``(n, D)`` float64 samples.
        """
        if samples.ndim < 2 or len(samples) < 2:
            raise ValueError(
                f"fit needs a batch of at least 2 samples (n, ...), got shape {tuple(samples.shape)}"
            )
        x = samples.detach().reshape(len(samples), -1).double().cpu()
        if not torch.isfinite(x).all():
            raise ValueError(
                "samples hold NaN or inf (masked values?); fill or drop them before fitting a GaussianStart"
            )
        n, d = x.shape
        limit = min(n - 1, d)
        rank = limit if rank is None else rank
        if not isinstance(rank, int) or not 1 <= rank <= limit:
            raise ValueError(
                f"rank must be an integer in 1..{limit} for {n} samples of {d} values, got {rank}"
            )
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

    def transport(
        self, x_t: torch.Tensor, alpha: float, sigma: float, sigma_to: Level, alpha_to: float = 1.0
    ) -> torch.Tensor:
        """Carry ``x_t = alpha x0 + sigma eps`` to ``alpha_to x0 + sigma_to eps`` along the PF-ODE.

        With the default ``alpha_to = 1`` the result is in VE units (``x0 + sigma_to eps``). Either
        end may be pure noise (``alpha = 0``, as the flow process and zero-terminal-SNR schedules
        are at t = 1). A 0-dim tensor ``sigma_to`` carries its gradient to the result (schedule
        fitting). Returned shaped like ``x_t``, on its device.
        """
        if min(alpha, alpha_to, sigma_to) < 0 or sigma <= 0:
            raise ValueError(
                "need alpha, alpha_to, sigma_to >= 0 and sigma > 0; got "
                f"{alpha}, {alpha_to}, {sigma_to}, {sigma}"
            )
        centred = self._flat(x_t) - alpha * self.mean

        # Per direction of variance lam: sqrt((alpha_to^2 lam + sigma_to^2) / (alpha^2 lam + sigma^2)),
        # the ODE's solution in x_t units, finite where either alpha is 0.
        def gain(lam: torch.Tensor) -> torch.Tensor:
            return ((alpha_to**2 * lam + sigma_to**2) / (alpha**2 * lam + sigma**2)).sqrt()

        x = alpha_to * self.mean + self._scale(centred, gain)
        return x.to(device=x_t.device, dtype=x_t.dtype).reshape(x_t.shape)

    def denoise(self, x_t: torch.Tensor, alpha: float, sigma: Level) -> torch.Tensor:
        """The Gaussian's posterior mean ``E[x0 | x_t]`` at ``x_t = alpha x0 + sigma eps``.

        In the eigenbasis each coordinate of ``x_t / alpha - mu`` is shrunk by ``lam / (lam + s^2)``
        (``s = sigma / alpha``): the denoiser a model trained on this Gaussian would learn.
        Returned shaped like ``x_t``, in float64 on the CPU (the precision :meth:`correct` needs).
        """
        if alpha <= 0 or sigma <= 0:
            raise ValueError(f"need alpha > 0 and sigma > 0 to denoise, got {alpha}, {sigma}")
        s2 = (sigma / alpha) ** 2
        centred = self._flat(x_t) / alpha - self.mean
        x0 = self.mean + self._scale(centred, lambda lam: lam / (lam + s2))
        return x0.reshape(x_t.shape)

    def correct(
        self,
        x_t: torch.Tensor,
        x0: torch.Tensor,
        alpha: float,
        sigma: Level,
        alpha_from: float,
        sigma_from: float,
    ) -> torch.Tensor:
        """``x_t``, carried here from ``(alpha_from, sigma_from)`` by :meth:`transport`, corrected.

        ``x0`` is the model's estimate at ``x_t``. Where the denoiser differs from the Gaussian's by
        ``r = x0 - D_G(x_t)`` (:meth:`denoise`), the true flow differs from the Gaussian's: in the
        eigenbasis each coordinate of ``(x - mu) / sqrt(lam + s'^2)`` (VE units, ``s' = sigma /
        alpha``) moves by the integral of ``r / sqrt(lam + s'^2)`` over ``log s'``. At high noise the
        residual falls as ``s'^-2`` (the data's third cumulant is the leading term of ``log p``
        beyond the Gaussian's, and Tweedie's ``D = x + s'^2 grad log p`` scales it so), so ``r`` is
        taken as its value here times ``(s / s')^2`` over the carried interval ``s .. s_from``, an
        integral in closed form. This first-order correction of the start uses the evaluation the
        sampler makes anyway; it is exact for a denoiser ``D_G + c s'^-2`` and 0 where nothing was
        carried (``s = s_from``). Errors in the fitted mean and covariance add residuals that do
        not fall as ``s'^-2`` (a mean error stays constant), so the start is as good as the fit:
        fit on as many samples as there are. A guided estimate also carries the condition's pull,
        which does not fall as ``s'^-2`` either; under strong guidance keep the first time high or
        let the optimiser judge it.
        """
        if alpha <= 0 or sigma <= 0:
            return x_t  # pure noise or clean data: the carried interval is empty or meaningless
        s = sigma / alpha
        s_from = math.inf if alpha_from <= 0 else sigma_from / alpha_from
        if s >= s_from:
            return x_t
        flat = self._flat(x_t)
        r = self._flat(x0) - self.denoise(flat, alpha, sigma)

        def gain(lam: torch.Tensor) -> torch.Tensor:
            # Per direction of variance lam: the integral above with r = r_here (s / s')^2.
            term = -_tail(lam.sqrt() / s) / s
            if math.isfinite(s_from):
                term = term + _tail(lam.sqrt() / s_from) * s**2 / s_from**3
            return (lam + s**2).sqrt() * term

        out = flat + alpha * self._scale(r, gain)
        return out.to(device=x_t.device, dtype=x_t.dtype).reshape(x_t.shape)

    def _flat(self, x_t: torch.Tensor) -> torch.Tensor:
        """``x_t`` as ``(B, D)`` float64 on the CPU: the gains span many decades at high noise (and
        MPS has no float64). Not detached: schedule fitting differentiates through the start
        (:mod:`sciddpm.diffusion.descent`); sampling runs without gradients anyway."""
        if x_t.ndim < 2 or x_t[0].numel() != self.dim:
            raise ValueError(
                f"samples of shape {tuple(x_t.shape[1:])} hold {x_t[0].numel() if x_t.ndim else 0} "
                f"values but this GaussianStart was fitted on {self.dim}; fit it on model-space "
                "samples of the same shape"
            )
        return x_t.reshape(len(x_t), -1).double().cpu()

    def _scale(self, v: torch.Tensor, gain: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``v (B, D)`` with its part along each direction of variance ``lam`` scaled by ``gain(lam)``."""
        along = v @ self.eigvecs  # (B, k)
        rest = v - along @ self.eigvecs.T
        residual = torch.tensor(self.residual, dtype=torch.float64)
        return (gain(self.eigvals) * along) @ self.eigvecs.T + gain(residual) * rest

    def save(self, directory: str | Path) -> Path:
        """Write ``gaussian_start.json`` and ``gaussian_start.safetensors`` to ``directory``; returns it.

        The statistics in float64, nothing pickled (:mod:`sciddpm.persistence`). Raises ValueError
        for a path ending in ``.safetensors``: the start is a directory.
        """
        from sciddpm import persistence

        if Path(directory).suffix == ".safetensors":
            raise ValueError(
                f"GaussianStart.save takes a directory (it writes {START_CONFIG} and {START_TENSORS}), "
                f"got the file name {str(directory)!r}"
            )
        meta = {"dim": self.dim, "rank": len(self.eigvals), "residual": self.residual}
        tensors = {"mean": self.mean, "eigvecs": self.eigvecs, "eigvals": self.eigvals}
        return persistence.save(directory, START_CONFIG, meta, {START_TENSORS: tensors})

    @classmethod
    def load(cls, path: str | Path) -> GaussianStart:
        """Read a start written by :meth:`save` (a directory), or by sciddpm 0.1.0 (one safetensors file).

        Raises FileNotFoundError when ``path`` holds no start, ValueError for another format or a
        missing or misshapen tensor.
        """
        from sciddpm import persistence

        path = Path(path)
        if path.is_file():  # sciddpm 0.1.0 wrote the four tensors to one file
            tensors = persistence.read_tensors(path, None, "Gaussian start")
            missing = {"mean", "eigvecs", "eigvals", "residual"} - set(tensors)
            if missing:
                raise ValueError(f"{path} is not a GaussianStart file: it lacks {sorted(missing)}")
            return cls(tensors["mean"], tensors["eigvecs"], tensors["eigvals"], float(tensors["residual"][0]))
        meta = persistence.read_meta(path, START_CONFIG, "Gaussian start")
        d, k = int(meta["dim"]), int(meta["rank"])
        expected = {"mean": torch.empty(d), "eigvecs": torch.empty(d, k), "eigvals": torch.empty(k)}
        tensors = persistence.read_tensors(path / START_TENSORS, expected, "Gaussian start")
        return cls(tensors["mean"], tensors["eigvecs"], tensors["eigvals"], float(meta["residual"]))


def initial_x(start: GaussianStart | None, scheduler: Scheduler, noise: torch.Tensor) -> torch.Tensor:
    """``x_t`` at ``scheduler.timesteps[0]`` from unit ``noise`` drawn for t = 1.

    Without a ``start`` that is the noise times ``init_noise_sigma`` (the run starts from noise at
    its first time, as usual); with one, the noise at t = 1 is carried to the first time.
    """
    if start is None:
        return noise * scheduler.init_noise_sigma
    return carry(start, scheduler, noise_at_1(scheduler, noise))


def noise_at_1(scheduler: Scheduler, noise: torch.Tensor) -> torch.Tensor:
    """``x_t`` at t = 1 from unit ``noise``, scaled as ``init_noise_sigma`` scales it at the first time."""
    return noise * math.hypot(*alpha_sigma_at_1(scheduler))


def carry(start: GaussianStart, scheduler: Scheduler, x_1: torch.Tensor) -> torch.Tensor:
    """``x_t`` at ``scheduler.timesteps[0]`` from ``x_1``, the ``x_t`` at t = 1, along ``start``'s flow."""
    alpha_1, sigma_1 = alpha_sigma_at_1(scheduler)
    alpha, sigma = (float(v) for v in scheduler.process.alpha_sigma(scheduler.timesteps[0].double()))
    return start.transport(x_1, alpha_1, sigma_1, sigma, alpha_to=alpha)


def _tail(a: torch.Tensor) -> torch.Tensor:
    """``G(a)`` with ``s^-3 G(sqrt(lam) / s)`` the antiderivative of ``1 / (s^3 sqrt(lam + s^2))``.

    ``G(a) = asinh(a) / (2 a^3) - sqrt(1 + a^2) / (2 a^2)``, by its series below a = 0.01, where
    the two terms cancel.
    """
    a = torch.as_tensor(a, dtype=torch.float64)
    safe = a.clamp_min(1e-2)
    exact = torch.asinh(safe) / (2 * safe**3) - (1 + safe**2).sqrt() / (2 * safe**2)
    series = -1 / 3 + a**2 / 10 - 3 * a**4 / 56
    return torch.where(a < 1e-2, series, exact)


def correct_first(
    start: GaussianStart, scheduler: Scheduler, x: torch.Tensor, x0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, x0)`` at the first time after :meth:`GaussianStart.correct`, the x0 estimate moved with it.

    ``x`` is the carried ``x_t`` at ``scheduler.timesteps[0]`` and ``x0`` the model's estimate there,
    both ``(B, C, *spatial)``. The model is not evaluated again: its estimate is moved by the
    Gaussian denoiser's change between the two points, ``x0 + D_G(x_corrected) - D_G(x)``. The move
    is exact for a denoiser ``D_G + c s^-2`` and follows the model's own change at high noise; near
    or below the data's scale the Gaussian's gain overstates a multimodal model's (within a mode it
    shrinks less), yet the samples mostly still came out slightly closer to the model's flow there
    than with the kept estimate (tested). Computed in float64 on the CPU (MPS has no float64),
    returned on the inputs' device and dtype.
    """
    process = scheduler.process
    t = scheduler.timesteps[0].detach().cpu().double()
    x64, x0_64 = (v.detach().cpu().double() for v in (x, x0))
    alpha, sigma = (float(v) for v in process.alpha_sigma(t))
    corrected = start.correct(x64, x0_64, alpha, sigma, *alpha_sigma_at_1(scheduler))
    if corrected is x64:
        return x, x0
    moved = x0_64 + start.denoise(corrected, alpha, sigma) - start.denoise(x64, alpha, sigma)
    return corrected.to(device=x.device, dtype=x.dtype), moved.to(device=x0.device, dtype=x0.dtype)


def alpha_sigma_at_1(scheduler: Scheduler) -> tuple[float, float]:
    """``(alpha, sigma)`` of ``scheduler``'s process at t = 1, where a start's noise is drawn."""
    alpha, sigma = scheduler.process.alpha_sigma(torch.tensor(1.0, dtype=torch.float64))
    return float(alpha), float(sigma)
