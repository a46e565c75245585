"""The registered schedulers: DDPM, DDIM and the solvers of :mod:`sciddpm.samplers`.

DDPM and DDIM are thin discretisations of :mod:`sciddpm.diffusion`; the solver
schedulers (``euler``, ``heun``, ``dpmpp_2m``, ...) put a sampler of
:mod:`sciddpm.samplers` behind the step interface on any noise process of
:mod:`sciddpm.processes`. DDPM and DDIM train on DDPM's discrete times
``t in {1, ..., T} / T``; all sample on a decreasing grid whose last step lands
on t = 0, where the returned ``prev_sample`` is the clean x0 estimate. Sampling noise is drawn on
the generator's device (CPU by default) and moved to the sample's device, so
seeded runs agree across devices. Nothing is clipped or thresholded.
"""

from __future__ import annotations

import itertools
import math
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sciddpm.diffusion import (
    NoiseProcess,
    VPSchedule,
    check_prediction_type,
    ddim_step,
    ddpm_step,
    edm_weight,
    min_snr_weight,
)
from sciddpm.interfaces import PredictionType, Scheduler, StepOutput
from sciddpm.processes import ProcessName, make_process
from sciddpm.samplers import SAMPLERS, Denoised, evaluation_sigmas, karras_sigmas, log_snr_sigmas

__all__ = [
    "DDIM",
    "DDPM",
    "DDIMConfig",
    "DDPMConfig",
    "DPMpp2M",
    "DPMpp2MConfig",
    "DPMpp2MSDE",
    "DPMpp2MSDEConfig",
    "DPMpp3M",
    "DPMpp3MConfig",
    "Euler",
    "EulerAncestral",
    "EulerAncestralConfig",
    "EulerConfig",
    "Heun",
    "HeunConfig",
    "SolverConfig",
    "UniPC",
    "UniPCConfig",
    "sampling_times",
]

Spacing = Literal["leading", "trailing", "linspace"]


class _LossWeightingConfig(BaseModel):
    """The training loss weighting and the data scale of EDM preconditioning, shared by every scheduler."""

    model_config = ConfigDict(extra="forbid")

    loss_weighting: Literal["uniform", "min_snr", "edm"] = Field(
        "uniform",
        description="Per-sample loss weight: 'uniform'; 'min_snr' (Hang et al. 2023), which weights the "
        "x0 error by min(SNR, min_snr_gamma), i.e. the MSE on an eps output by min(SNR, gamma) / SNR, on "
        "a v output by min(SNR, gamma) / (SNR + 1) and on an x0 output by min(SNR, gamma) (VP); or 'edm' "
        "(Karras et al. 2022), which weights the x0 error by (sigma^2 + sigma_data^2) / (sigma "
        "sigma_data)^2, sigma = sigma_t / alpha_t: uniform on an 'edm' output (lambda c_out^2 = 1).",
    )
    min_snr_gamma: float = Field(
        5.0, gt=0, description="The SNR cap gamma of loss_weighting='min_snr' (5 in Hang et al. 2023)."
    )
    sigma_data: float | Literal["auto"] = Field(
        1.0,
        description="Std of the (encoded) data, sigma_data of Karras et al. 2022: sets the denoiser's input "
        "scale c_in, the 'edm' prediction and loss weighting. 1 suits the 'standardize' encoder; 'auto' "
        "estimates it from the encoded training data when the pipeline is built (and stores the number).",
    )

    @field_validator("sigma_data")
    @classmethod
    def _positive(cls, value: float | str) -> float | str:
        if value != "auto" and not (isinstance(value, float | int) and math.isfinite(value) and value > 0):
            raise ValueError(f"sigma_data must be a positive number or 'auto', got {value!r}")
        return value


class _Weighted(Scheduler):
    """Loss weight, input scale and prediction conversions on the scheduler's ``process``, with the
    config's ``loss_weighting`` and ``sigma_data``."""

    config: _LossWeightingConfig
    process: NoiseProcess

    @property
    def sigma_data(self) -> float:
        """The data std of EDM preconditioning; 'auto' must have been resolved to a number."""
        value = self.config.sigma_data
        if value == "auto":
            raise ValueError(
                "sigma_data='auto' is estimated from the data by Pipeline.from_config(config, source); "
                "give a number when building a scheduler on its own"
            )
        return float(value)

    def loss_weight(self, t: torch.Tensor, prediction_type: PredictionType | None = None) -> torch.Tensor:
        """Per-sample loss weight at ``t``: 1, min-SNR-gamma or EDM's, for a ``prediction_type`` output."""
        weighting = self.config.loss_weighting
        if weighting == "uniform":
            return torch.ones_like(t)
        if prediction_type is None:
            raise ValueError(
                f"loss_weighting={weighting!r} depends on the denoiser's prediction type; "
                "call loss_weight(t, prediction_type)"
            )
        if weighting == "edm":
            return edm_weight(self.process, t, prediction_type, self.sigma_data)
        return min_snr_weight(self.process, t, prediction_type, self.config.min_snr_gamma, self.sigma_data)

    def c_in(self, t: torch.Tensor) -> torch.Tensor:
        """EDM's input scale ``1 / sqrt(sigma^2 + alpha^2 sigma_data^2)`` (1 on VP with sigma_data = 1)."""
        return self.process.c_in(t, self.sigma_data)

    def target(
        self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, prediction_type: PredictionType
    ) -> torch.Tensor:
        return self.process.target(x0, eps, t, prediction_type, self.sigma_data)

    def _to_x0_eps(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | float, prediction_type: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.process.to_x0_eps(model_output, x_t, t, prediction_type, self.sigma_data)


class _VPSchedulerConfig(_LossWeightingConfig):
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


class _VPScheduler(_Weighted):
    """Shared training side and sampling grid of the discrete-time VP schedulers."""

    config: _VPSchedulerConfig
    #: Scale of the initial noise x_1 ~ N(0, init_noise_sigma^2 I) (diffusers' name).
    init_noise_sigma: float = 1.0

    def __init__(self, config: _VPSchedulerConfig) -> None:
        self.config = config
        self.schedule = VPSchedule(config.schedule, config.zero_terminal_snr)
        self.set_timesteps(config.train_steps)

    @property
    def process(self) -> VPSchedule:
        """The noise process, under the name the solver schedulers use."""
        return self.schedule

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
        x0, _ = self._to_x0_eps(model_output, x_t, t, prediction_type)
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
        x0, eps = self._to_x0_eps(model_output, x_t, t, prediction_type)
        eta = self.config.eta
        if eta > 0 and s > 0 and noise is None:
            noise = self._noise(x_t, generator)
        return StepOutput(ddim_step(self.schedule, x0, eps, t, s, eta, noise), x0)


# -- the solver schedulers: sciddpm.samplers behind the step interface ----------------------------

SolverSpacing = Literal["linspace", "trailing", "leading", "log_snr", "karras"]
#: Sampling starts no noisier than this log-SNR (the floor of VPSchedule's cosine schedule), so
#: processes with alpha(1) = 0 (rectified flow, zero terminal SNR) start at a finite sigma / alpha.
LOG_SNR_MIN = -20.0


class SolverConfig(_LossWeightingConfig):
    """Noise process and step spacing shared by the solver schedulers (``euler``, ``dpmpp_2m``, ...)."""

    process: ProcessName = Field(
        "vp",
        description="Noise process: 'vp' (DDPM/score-SDE), 've' (Song et al. 2021), 'edm' (Karras et al. "
        "2022) or 'flow' (rectified flow). A model sampled with a scheduler it was not trained with "
        "keeps its training process (the pipeline passes it on).",
    )
    schedule: Literal["linear", "cosine"] = Field("linear", description="The VP schedule (process='vp').")
    zero_terminal_snr: bool = Field(False, description="VP with alpha(1) = 0 (Lin et al. 2024).")
    train_steps: int = Field(
        1000,
        ge=1,
        description="VP training draws t in {1..T}/T; uniform-t spacings pick sampling times on this grid.",
    )
    spacing: SolverSpacing = Field(
        "trailing",
        description="Step spacing: 'linspace', 'trailing', 'leading' (uniform in t, diffusers' names), "
        "'log_snr' (uniform in log-SNR, Lu et al. 2022) or 'karras' (uniform in sigma^(1/rho), Karras et "
        "al. 2022 Eq. 5), where sigma = sigma_t / alpha_t.",
    )
    timesteps: list[float] | None = Field(
        None,
        description="A user-given decreasing list of times in (0, 1]; overrides 'spacing' and fixes "
        "the number of steps. The sampler ends with a step to t = 0.",
    )
    sigma_min: float | None = Field(
        None,
        gt=0,
        description="Smallest noise level sigma_t / alpha_t of the 'log_snr' and 'karras' spacings; also "
        "the VE process' sigma(0). Default: the process' value at t = 1/train_steps (EDM: 0.002).",
    )
    sigma_max: float | None = Field(
        None,
        gt=0,
        description="Largest noise level; also the VE/EDM process' sigma(1) (default 80). Default for VP "
        "and flow: the process' value at t = 1, capped at log-SNR -20.",
    )
    rho: float = Field(7.0, gt=0, description="Exponent of the 'karras' spacing and of the EDM process.")

    @field_validator("timesteps")
    @classmethod
    def _decreasing(cls, value: list[float] | None) -> list[float] | None:
        if value is not None:
            if not value or any(not 0 < t <= 1 for t in value):
                raise ValueError("timesteps must be a non-empty list of times in (0, 1]")
            if any(a <= b for a, b in itertools.pairwise(value)):
                raise ValueError("timesteps must be strictly decreasing")
        return value


class EulerConfig(SolverConfig):
    """Configuration of :class:`Euler`."""


class EulerAncestralConfig(SolverConfig):
    """Configuration of :class:`EulerAncestral`."""

    eta: float = Field(
        1.0, ge=0, description="Ancestral noise: 0 is Euler, 1 is DDPM-like ancestral sampling."
    )
    s_noise: float = Field(1.0, gt=0, description="Scale of the added noise.")


class HeunConfig(SolverConfig):
    """Configuration of :class:`Heun` (Karras et al. 2022, Algorithm 2, Table 5 names)."""

    s_churn: float = Field(
        0.0, ge=0, description="Total stochasticity; 0 is the deterministic Heun ODE solver."
    )
    s_tmin: float = Field(0.0, ge=0, description="Churn only where sigma >= s_tmin.")
    # None rather than inf: JSON has no infinity, and a saved pipeline must load back.
    s_tmax: float | None = Field(None, description="Churn only where sigma <= s_tmax; null = no upper bound.")
    s_noise: float = Field(
        1.0, gt=0, description="Scale of the churn noise (slightly > 1 offsets denoising)."
    )


class DPMpp2MConfig(SolverConfig):
    """Configuration of :class:`DPMpp2M`."""


class DPMpp3MConfig(SolverConfig):
    """Configuration of :class:`DPMpp3M`."""


class DPMpp2MSDEConfig(SolverConfig):
    """Configuration of :class:`DPMpp2MSDE`."""

    eta: float = Field(1.0, ge=0, description="SDE noise: 1 is SDE-DPM-Solver++, 0 the 2M ODE solver.")
    s_noise: float = Field(1.0, gt=0, description="Scale of the added noise.")
    solver_type: Literal["midpoint", "heun"] = Field(
        "midpoint", description="Second-order correction, as diffusers' and k-diffusion's `solver_type`."
    )


class UniPCConfig(SolverConfig):
    """Configuration of :class:`UniPC`."""

    order: int = Field(2, ge=1, le=3, description="Order of the UniP predictor; UniC adds one order.")


class _Solver(_Weighted):
    """A sampler of :mod:`sciddpm.samplers` behind the step interface, on any noise process.

    ``timesteps`` lists every time at which the model is evaluated (Heun's intermediate points
    included, as diffusers' HeunDiscreteScheduler does), so one ``step`` is one model evaluation and
    ``len(timesteps)`` is the NFE. Multistep history lives in the sampler, restarted by step 0.
    """

    sampler: ClassVar[str]
    options: ClassVar[tuple[str, ...]] = ()
    config: SolverConfig

    def __init__(self, config: SolverConfig) -> None:
        self.config = config
        self.process = _make_process(config)
        self.stochastic = self._is_stochastic()
        self.timesteps = torch.empty(0, dtype=torch.float64)
        self.sigmas: list[float] = []
        self._gen: Denoised | None = None
        self._next = 0
        self._noise_in: tuple[torch.Tensor | None, torch.Tensor, torch.Generator | None] | None = None

    def _is_stochastic(self) -> bool:
        return False

    def _options(self) -> dict[str, object]:
        return {name: getattr(self.config, name) for name in self.options}

    # -- training side ----------------------------------------------------------------------------

    def check_prediction_type(self, prediction_type: str) -> None:
        """Raise if the process cannot drive a ``prediction_type`` denoiser (eps where alpha reaches 0)."""
        check_prediction_type(prediction_type, self.process.zero_terminal_snr)

    def sample_t(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """VP: uniform in {1..T}/T as DDPM; EDM: log-normal sigma (Karras et al. 2022); else uniform."""
        device = generator.device if generator is not None else "cpu"
        dtype = torch.get_default_dtype()
        if self.config.process == "vp":
            T = self.config.train_steps
            return torch.randint(1, T + 1, (batch_size,), generator=generator, device=device).to(dtype) / T
        if self.config.process == "edm":
            log_sigma = -1.2 + 1.2 * torch.randn(
                batch_size, generator=generator, device=device, dtype=torch.float64
            )
            return self.process.t_from_sigma_ve(log_sigma.exp()).to(dtype)
        return torch.rand(batch_size, generator=generator, device=device, dtype=dtype)

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.process.add_noise(x0, eps, t)

    def c_noise(self, t: torch.Tensor) -> torch.Tensor:
        """``1000 t`` for VP and flow (DDPM's scale); ``log(sigma) / 4`` for VE, EDM (Karras et al. 2022)."""
        if self.config.process in ("vp", "flow"):
            return 1000 * t
        return self.process.sigma(t).log() / 4

    # -- sampling side ----------------------------------------------------------------------------

    @property
    def init_noise_sigma(self) -> float:
        """Std of the initial x_t (unit-variance data): ``sqrt(alpha^2 + sigma^2)`` at ``timesteps[0]``."""
        if not len(self.timesteps):
            return 1.0
        alpha, sigma = (v.item() for v in self.process._alpha_sigma(self.timesteps[0]))
        return math.sqrt(alpha**2 + sigma**2)

    def sigma_range(self) -> tuple[float, float]:
        """``(sigma_min, sigma_max)`` of the log_snr/karras spacings, in sigma_t / alpha_t."""
        c, p = self.config, self.process
        lo = c.sigma_min
        if lo is None:
            lo = 0.002 if c.process == "edm" else p.sigma_ve(1 / c.train_steps).item()
        hi = c.sigma_max
        if hi is None:
            hi = min(p.sigma_ve(1.0).item(), math.exp(-LOG_SNR_MIN / 2))
        if not 0 < lo < hi:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {lo}, {hi}")
        return lo, hi

    def sigmas_for(self, steps: int) -> list[float]:
        """The ``steps + 1`` noise levels sigma_t / alpha_t (decreasing, ending at 0) of ``steps`` steps."""
        c, p = self.config, self.process
        lo, hi = self.sigma_range()
        if c.timesteps is not None:
            if steps != len(c.timesteps):
                raise ValueError(
                    f"this scheduler has a user-given list of {len(c.timesteps)} timesteps; "
                    f"sample with steps={len(c.timesteps)}, not {steps}"
                )
            sigmas = p.sigma_ve(torch.tensor(c.timesteps, dtype=torch.float64)).clamp(max=hi).tolist()
        elif c.spacing == "karras":
            sigmas = karras_sigmas(steps, lo, hi, c.rho)
        elif c.spacing == "log_snr":
            sigmas = log_snr_sigmas(steps, lo, hi)
        else:
            t_max = p.t_from_sigma_ve(hi).item()
            sigmas = p.sigma_ve(sampling_times(c.train_steps, steps, c.spacing) * t_max).tolist()
        return [*sigmas, 0.0]

    def set_timesteps(self, steps: int) -> None:
        """Fill ``timesteps`` with the times of every model evaluation of a ``steps``-step run."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.sigmas = self.sigmas_for(steps)
        evals = evaluation_sigmas(self.sampler, self.sigmas, **self._options())
        self.timesteps = self.process.t_from_sigma_ve(torch.tensor(evals, dtype=torch.float64))
        self.num_inference_steps = steps
        self._gen, self._next = None, 0

    def _noise(self) -> torch.Tensor:
        if self._noise_in is None:
            raise RuntimeError(f"{self.sampler} drew noise twice in one step")
        noise, like, generator = self._noise_in
        self._noise_in = None
        if noise is None:
            noise = _VPScheduler._noise(like, generator)
        return noise.to(like)

    def step(
        self,
        model_output: torch.Tensor,
        index: int,
        x_t: torch.Tensor,
        prediction_type: PredictionType,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> StepOutput:
        n = len(self.timesteps)
        if not 0 <= index < n:
            raise IndexError(f"step index {index} out of range for {n} timesteps; call set_timesteps first")
        t = self.timesteps[index]
        alpha = self.process.alpha(t).item()
        if index == 0:
            self._gen = SAMPLERS[self.sampler](x_t / alpha, self.sigmas, self._noise, **self._options())
            next(self._gen)
        elif self._gen is None or index != self._next:
            raise RuntimeError(f"{self.sampler} steps must run in order 0..{n - 1}; got {index}")
        x0, _ = self._to_x0_eps(model_output, x_t, t, prediction_type)
        self._noise_in = (noise, x_t, generator)
        try:
            x_next, _ = self._gen.send(x0)
            prev = x_next * self.process.alpha(self.timesteps[index + 1]).item()
        except StopIteration as stop:
            prev, self._gen = stop.value * self.process.alpha(0.0).item(), None
        self._next = index + 1
        return StepOutput(prev, x0)


def _make_process(config: SolverConfig) -> NoiseProcess:
    if config.process == "vp":
        return make_process("vp", schedule=config.schedule, zero_terminal_snr=config.zero_terminal_snr)
    if config.process == "ve":
        return make_process("ve", sigma_min=config.sigma_min or 0.01, sigma_max=config.sigma_max or 80.0)
    if config.process == "edm":
        return make_process("edm", sigma_max=config.sigma_max or 80.0, rho=config.rho)
    return make_process("flow")


class Euler(_Solver):
    """Euler on the probability-flow ODE (Karras et al. 2022, Eq. 4); first order, one NFE per step."""

    sampler = "euler"


class EulerAncestral(_Solver):
    """Ancestral Euler sampling (k-diffusion's ``sample_euler_ancestral``)."""

    sampler = "euler_a"
    options = ("eta", "s_noise")
    config: EulerAncestralConfig

    def _is_stochastic(self) -> bool:
        return self.config.eta > 0


class Heun(_Solver):
    """Heun with churn, Karras et al. 2022 (Algorithm 2); ``steps`` steps make 2 steps - 1 evaluations."""

    sampler = "heun"
    options = ("s_churn", "s_tmin", "s_tmax", "s_noise")
    config: HeunConfig

    def _is_stochastic(self) -> bool:
        return self.config.s_churn > 0


class DPMpp2M(_Solver):
    """DPM-Solver++(2M), Lu et al. 2022b (Algorithm 2); second order, one NFE per step."""

    sampler = "dpmpp_2m"


class DPMpp3M(_Solver):
    """DPM-Solver++(3M), third-order multistep (Lu et al. 2022b); one NFE per step."""

    sampler = "dpmpp_3m"


class DPMpp2MSDE(_Solver):
    """SDE-DPM-Solver++(2M), Lu et al. 2022b (Appendix); one NFE per step."""

    sampler = "dpmpp_2m_sde"
    options = ("eta", "s_noise", "solver_type")
    config: DPMpp2MSDEConfig

    def _is_stochastic(self) -> bool:
        return self.config.eta > 0


class UniPC(_Solver):
    """UniPC with the bh2 corrector, Zhao et al. 2023; order + 1 accuracy at one NFE per step."""

    sampler = "unipc"
    options = ("order",)
    config: UniPCConfig
