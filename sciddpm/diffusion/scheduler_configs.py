"""The registered schedulers' configurations: their constructor arguments, validated.

Every scheduler shares :class:`LossWeightingConfig` (the training loss weighting and EDM's
``sigma_data``) and :class:`VPScheduleConfig` (the VP schedule: betas, discrete or continuous);
DDPM and DDIM take :class:`DiscreteConfig` (the VP process on DDPM's discrete
times), the solver schedulers :class:`SolverConfig` (any process, any step spacing, or a list of
times). :func:`process_of` builds the noise process a config describes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sciddpm.diffusion.processes import NoiseProcess, ProcessName, make_process
from sciddpm.diffusion.spacing import Spacing

__all__ = [
    "VP_FIELDS",
    "DDIMConfig",
    "DDPMConfig",
    "DPMpp2MConfig",
    "DPMpp2MSDEConfig",
    "DPMpp3MConfig",
    "DiscreteConfig",
    "EulerAncestralConfig",
    "EulerConfig",
    "HeunConfig",
    "LossWeightingConfig",
    "SolverConfig",
    "SolverSpacing",
    "UniPCConfig",
    "VPScheduleConfig",
    "process_of",
    "reset_ignored_vp_fields",
]


class LossWeightingConfig(BaseModel):
    """The training loss weighting and the data scale of EDM preconditioning, shared by every scheduler.

    Raises a validation error for a non-positive ``sigma_data``.
    """

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


class VPScheduleConfig(LossWeightingConfig):
    """The VP schedule's fields, shared by every built-in scheduler (read when the process is VP).

    Raises a validation error for betas outside (0, 1) or ``beta_start > beta_end``.
    """

    schedule: Literal["linear", "cosine", "scaled_linear"] = Field(
        "linear",
        description="VP noise schedule: 'linear' (Ho et al. 2020 betas beta_start..beta_end; by default "
        "the continuous-time VP-SDE of Song et al. 2021), 'cosine' (Nichol & Dhariwal 2021, s=0.008) or "
        "'scaled_linear' (square roots of the betas evenly spaced, as latent/Stable Diffusion).",
    )
    beta_start: float = Field(
        1e-4, gt=0, lt=1, description="First beta of 'linear'/'scaled_linear' (per step of T = 1000)."
    )
    beta_end: float = Field(
        0.02, gt=0, lt=1, description="Last beta of 'linear'/'scaled_linear' (per step of T = 1000)."
    )
    discrete_betas: bool = Field(
        False,
        description="alpha_bar as DDPM's product over train_steps discrete betas, exactly as diffusers "
        "computes it, instead of its continuous-time limit: needed to sample models trained in diffusers.",
    )
    zero_terminal_snr: bool = Field(
        False,
        description="Rescale the schedule so alpha(1) = 0 exactly (Lin et al. 2024). Requires a v- or "
        "x0-predicting denoiser; eps-prediction is refused.",
    )
    train_steps: int = Field(
        1000,
        ge=1,
        description="Number T of discrete training times; VP training draws t uniformly in {1..T}/T.",
    )

    @model_validator(mode="after")
    def _betas(self) -> VPScheduleConfig:
        if self.beta_start > self.beta_end:
            raise ValueError(
                f"beta_start={self.beta_start} must not exceed beta_end={self.beta_end}; betas grow with t"
            )
        return self


class DiscreteConfig(VPScheduleConfig):
    """The VP process on DDPM's T discrete training times: the configuration DDPM and DDIM share."""

    spacing: Spacing = Field(
        "trailing",
        description="How sampling times are picked among the T training times (Lin et al. 2024, Sec. 3.3): "
        "'trailing' always starts at t=1; 'leading' and 'linspace' follow diffusers.",
    )


class DDPMConfig(DiscreteConfig):
    """Configuration of :class:`~sciddpm.diffusion.schedulers.DDPM`."""


class DDIMConfig(DiscreteConfig):
    """Configuration of :class:`~sciddpm.diffusion.schedulers.DDIM`."""

    eta: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Stochasticity (Song et al. 2021, Eq. 16): 0 is deterministic DDIM, 1 has DDPM's "
        "posterior variance.",
    )


#: The fields of :class:`VPScheduleConfig` that only the VP process reads.
VP_FIELDS = ("schedule", "beta_start", "beta_end", "discrete_betas", "zero_terminal_snr")

SolverSpacing = Literal["linspace", "trailing", "leading", "log_snr", "karras"]


class SolverConfig(VPScheduleConfig):
    """Noise process and step spacing shared by the solver schedulers (``euler``, ``dpmpp_2m``, ...).

    Raises a validation error for a VP schedule field (:data:`VP_FIELDS`) given a value other
    than its default on another process, which would ignore it.
    """

    process: ProcessName = Field(
        "vp",
        description="Noise process: 'vp' (DDPM/score-SDE), 've' (Song et al. 2021), 'edm' (Karras et al. "
        "2022) or 'flow' (rectified flow). A model sampled with a scheduler it was not trained with "
        "keeps its training process (the pipeline passes it on).",
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
    shifts: list[float] | None = Field(
        None,
        description="Fitted evaluation shifts, one per model evaluation (optimize_timesteps writes them): "
        "the model is evaluated at the noise level sigma_t / alpha_t times exp(shift) while the solver "
        "steps between the given levels. The first is 0 (the level the noise is drawn at). None: no shift.",
    )

    @model_validator(mode="after")
    def _vp_fields_need_vp(self) -> SolverConfig:
        # A VP field set on another process would be validated, saved and silently ignored
        # (issue 21, item 4); a value equal to the default is what every saved config carries.
        if self.process != "vp":
            given = [
                f"{name}={getattr(self, name)!r}"
                for name in VP_FIELDS
                if name in self.model_fields_set
                and getattr(self, name) != VPScheduleConfig.model_fields[name].default
            ]
            if given:
                them = "them" if len(given) > 1 else "it"
                raise ValueError(
                    f"{', '.join(given)} set{'' if len(given) > 1 else 's'} the VP noise schedule, "
                    f"which process={self.process!r} does not use; remove {them}, or set process='vp'"
                )
        return self

    @field_validator("shifts")
    @classmethod
    def _first_unshifted(cls, value: list[float] | None) -> list[float] | None:
        if value is not None:
            if not value or any(not math.isfinite(v) for v in value):
                raise ValueError("shifts must be a non-empty list of finite numbers")
            if value[0] != 0:
                raise ValueError(
                    f"the first shift must be 0 (the noise is drawn at the first level), got {value[0]}"
                )
        return value

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
    """Configuration of :class:`~sciddpm.diffusion.schedulers.Euler`."""


class EulerAncestralConfig(SolverConfig):
    """Configuration of :class:`~sciddpm.diffusion.schedulers.EulerAncestral`."""

    eta: float = Field(
        1.0, ge=0, description="Ancestral noise: 0 is Euler, 1 is DDPM-like ancestral sampling."
    )
    s_noise: float = Field(1.0, gt=0, description="Scale of the added noise.")


class HeunConfig(SolverConfig):
    """Configuration of :class:`~sciddpm.diffusion.schedulers.Heun`.

    Karras et al. 2022, Algorithm 2's options, with Table 5's names.

    Steps where sigma falls more than 2x are corrected in exponential form (see
    :func:`sciddpm.diffusion.solvers.heun`); no option restores Algorithm 2's trapezoid there.
    """

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
    """Configuration of :class:`~sciddpm.diffusion.schedulers.DPMpp2M`."""


#: The third-order solvers' switch of :func:`sciddpm.diffusion.solvers.third_order_step`.
_LOWER_ORDER_UNEVEN = Field(
    True,
    description="Take a step at second order where extrapolating a quadratic is unsafe: a step longer "
    "than 0.3 in lambda = -log sigma (half the log-SNR) and than the one before it, a step longer than "
    "1.4, or one after a step less than half the one before (issue 21; diffusers' lower_order_final is "
    "the same idea at the final steps). False keeps third order on every step after two earlier "
    "evaluations (a step longer than 2 in lambda stays first order); schedules fitted by "
    "optimize_timesteps use False, since the fit measures every step's error on the model.",
)


class DPMpp3MConfig(SolverConfig):
    """Configuration of :class:`~sciddpm.diffusion.schedulers.DPMpp3M`."""

    lower_order_uneven: bool = _LOWER_ORDER_UNEVEN


class DPMpp2MSDEConfig(SolverConfig):
    """Configuration of :class:`~sciddpm.diffusion.schedulers.DPMpp2MSDE`."""

    eta: float = Field(1.0, ge=0, description="SDE noise: 1 is SDE-DPM-Solver++, 0 the 2M ODE solver.")
    s_noise: float = Field(1.0, gt=0, description="Scale of the added noise.")
    solver_type: Literal["midpoint", "heun"] = Field(
        "midpoint", description="Second-order correction, as diffusers' and k-diffusion's `solver_type`."
    )


class UniPCConfig(SolverConfig):
    """Configuration of :class:`~sciddpm.diffusion.schedulers.UniPC`."""

    order: int = Field(2, ge=1, le=3, description="Order of the UniP predictor; UniC adds one order.")
    lower_order_uneven: bool = _LOWER_ORDER_UNEVEN


def reset_ignored_vp_fields(spec: Mapping[str, Any], config_class: type) -> dict[str, Any]:
    """``spec`` with each VP schedule field (:data:`VP_FIELDS`) it holds back at its default,
    when ``config_class`` is a :class:`SolverConfig` and the spec's process is not VP.

    Earlier versions accepted other values there and ignored them, so this changes nothing a
    saved spec samples, and lets it load (``Pipeline.load``, fitted schedules) and compare equal
    to this version's specs (``--resume``). Any other spec is returned as it is.
    """
    if not (isinstance(config_class, type) and issubclass(config_class, SolverConfig)):
        return dict(spec)
    if spec.get("process", config_class.model_fields["process"].default) == "vp":
        return dict(spec)
    defaults = VPScheduleConfig.model_fields
    return {k: defaults[k].default if k in VP_FIELDS else v for k, v in spec.items()}


def process_of(config: DiscreteConfig | SolverConfig) -> NoiseProcess:
    """The noise process a scheduler config describes (DDPM and DDIM configs describe a VP process).

    VE takes ``sigma_min``/``sigma_max`` (default 0.01/80), EDM ``sigma_max`` and ``rho``.
    """
    name = getattr(config, "process", "vp")
    if name == "vp":
        return make_process(
            "vp",
            schedule=config.schedule,
            zero_terminal_snr=config.zero_terminal_snr,
            beta_min=config.beta_start * 1000,
            beta_max=config.beta_end * 1000,
            discrete_steps=config.train_steps if config.discrete_betas else 0,
        )
    assert isinstance(config, SolverConfig)
    if name == "ve":
        return make_process("ve", sigma_min=config.sigma_min or 0.01, sigma_max=config.sigma_max or 80.0)
    if name == "edm":
        return make_process("edm", sigma_max=config.sigma_max or 80.0, rho=config.rho)
    return make_process("flow")
