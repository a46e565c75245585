"""The DDPM and DDIM schedulers: thin discretisations of :mod:`sciddpm.diffusion`.

Both train on DDPM's discrete times ``t in {1, ..., T} / T`` and sample on a
decreasing grid of those times whose last step lands on t = 0, where the
returned ``prev_sample`` is the clean x0 estimate. Sampling noise is drawn on
the generator's device (CPU by default) and moved to the sample's device, so
seeded runs agree across devices. Nothing is clipped or thresholded.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from sciddpm.diffusion import VPSchedule, check_prediction_type, ddim_step, ddpm_step
from sciddpm.interfaces import PredictionType, Scheduler, StepOutput

__all__ = ["DDIM", "DDPM", "DDIMConfig", "DDPMConfig", "sampling_times"]

Spacing = Literal["leading", "trailing", "linspace"]


class _VPSchedulerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schedule: Literal["linear", "cosine"] = Field(
        "linear",
        description="Noise schedule: 'linear' (Ho et al. 2020 betas 1e-4..0.02, continuous-time VP-SDE of "
        "Song et al. 2021) or 'cosine' (Nichol & Dhariwal 2021, s=0.008).",
    )
    zero_terminal_snr: bool = Field(
        False,
        description="Rescale the schedule so alpha(1) = 0 exactly (Lin et al. 2024). Requires a v- or "
        "x0-predicting denoiser; eps-prediction is refused.",
    )
    train_steps: int = Field(
        1000, ge=1, description="Number T of discrete training times; training draws t uniformly in {1..T}/T."
    )
    spacing: Spacing = Field(
        "trailing",
        description="How sampling times are picked among the T training times (Lin et al. 2024, Sec. 3.3): "
        "'trailing' always starts at t=1; 'leading' and 'linspace' follow diffusers.",
    )


class DDPMConfig(_VPSchedulerConfig):
    """Configuration of :class:`DDPM`."""


class DDIMConfig(_VPSchedulerConfig):
    """Configuration of :class:`DDIM`."""

    eta: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Stochasticity (Song et al. 2021, Eq. 16): 0 is deterministic DDIM, 1 has DDPM's "
        "posterior variance.",
    )


def sampling_times(train_steps: int, steps: int, spacing: Spacing) -> torch.Tensor:
    """``steps`` decreasing times in {1..T}/T: diffusers' spacings, its index i read as t = (i + 1) / T."""
    T = train_steps
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be between 1 and train_steps={T}, got {steps}")
    if spacing == "trailing":
        index = torch.round(T - torch.arange(steps, dtype=torch.float64) * (T / steps)) - 1
    elif spacing == "leading":
        index = torch.arange(steps - 1, -1, -1, dtype=torch.float64) * (T // steps)
    elif spacing == "linspace":
        index = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().flip(0)
    else:
        raise ValueError(f"spacing must be 'leading', 'trailing' or 'linspace', got {spacing!r}")
    return (index + 1) / T


class _VPScheduler(Scheduler):
    """Shared training side and sampling grid of the discrete-time VP schedulers."""

    config: _VPSchedulerConfig
    #: Scale of the initial noise x_1 ~ N(0, init_noise_sigma^2 I) (diffusers' name).
    init_noise_sigma: float = 1.0

    def __init__(self, config: _VPSchedulerConfig) -> None:
        self.config = config
        self.schedule = VPSchedule(config.schedule, config.zero_terminal_snr)
        self.set_timesteps(config.train_steps)

    def check_prediction_type(self, prediction_type: str) -> None:
        """Raise if this scheduler cannot drive a ``prediction_type`` denoiser (eps + zero terminal SNR)."""
        check_prediction_type(prediction_type, self.config.zero_terminal_snr)

    def sample_t(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training times uniform in {1..T}/T (Ho et al. 2020, Algorithm 1)."""
        T = self.config.train_steps
        device = generator.device if generator is not None else "cpu"
        k = torch.randint(1, T + 1, (batch_size,), generator=generator, device=device)
        return k.to(torch.get_default_dtype()) / T

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.schedule.add_noise(x0, eps, t)

    def target(
        self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, prediction_type: PredictionType
    ) -> torch.Tensor:
        return self.schedule.target(x0, eps, t, prediction_type)

    def c_noise(self, t: torch.Tensor) -> torch.Tensor:
        """The denoiser's noise input, ``1000 t`` (DDPM's integer timestep scale)."""
        return 1000 * t

    def set_timesteps(self, steps: int) -> None:
        """Fill ``timesteps`` with ``steps`` decreasing times in (0, 1].

        Step i goes from ``timesteps[i]`` to ``timesteps[i + 1]``; the last goes to t = 0, so its
        ``prev_sample`` is the x0 estimate itself.
        """
        self.timesteps = sampling_times(self.config.train_steps, steps, self.config.spacing)
        self.num_inference_steps = steps

    def _times(self, index: int) -> tuple[float, float]:
        n = len(self.timesteps)
        if not 0 <= index < n:
            raise IndexError(f"step index {index} out of range for {n} timesteps")
        s = self.timesteps[index + 1].item() if index + 1 < n else 0.0
        return self.timesteps[index].item(), s

    @staticmethod
    def _noise(x_t: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        device = generator.device if generator is not None else "cpu"
        noise = torch.randn(x_t.shape, generator=generator, device=device, dtype=torch.float32)
        return noise.to(device=x_t.device, dtype=x_t.dtype)


class DDPM(_VPScheduler):
    """Ancestral sampling with the exact posterior q(x_s | x_t, x0), Ho et al. 2020 (Algorithm 2, Eq. 6-7)."""

    config: DDPMConfig

    def __init__(self, config: DDPMConfig) -> None:
        super().__init__(config)

    def step(
        self,
        model_output: torch.Tensor,
        index: int,
        x_t: torch.Tensor,
        prediction_type: PredictionType,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> StepOutput:
        t, s = self._times(index)
        x0, _ = self.schedule.to_x0_eps(model_output, x_t, t, prediction_type)
        if s > 0 and noise is None:
            noise = self._noise(x_t, generator)
        return StepOutput(ddpm_step(self.schedule, x_t, x0, t, s, noise), x0)


class DDIM(_VPScheduler):
    """Denoising diffusion implicit models, Song et al. 2021 (Eq. 12); deterministic for eta = 0."""

    config: DDIMConfig

    def __init__(self, config: DDIMConfig) -> None:
        super().__init__(config)
        self.stochastic = config.eta > 0

    def step(
        self,
        model_output: torch.Tensor,
        index: int,
        x_t: torch.Tensor,
        prediction_type: PredictionType,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> StepOutput:
        t, s = self._times(index)
        x0, eps = self.schedule.to_x0_eps(model_output, x_t, t, prediction_type)
        eta = self.config.eta
        if eta > 0 and s > 0 and noise is None:
            noise = self._noise(x_t, generator)
        return StepOutput(ddim_step(self.schedule, x0, eps, t, s, eta, noise), x0)
