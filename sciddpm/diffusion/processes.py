"""Noise processes ``x_t = alpha(t) x0 + sigma(t) eps`` on continuous time t in [0, 1].

:class:`NoiseProcess` is the shared base: alpha, sigma, log-SNR, the "VE-equivalent" view
``(x_t / alpha, sigma / alpha)`` in which every solver works (Karras et al. 2022, Sec. 2 and
Eq. 4), and the prediction conversions of :mod:`sciddpm.diffusion.parametrization` evaluated at
a time. The processes: :class:`VP` (DDPM and the score SDE), :class:`VE`, :class:`EDM` and
:class:`RectifiedFlow`; :func:`make_process` builds one by name. Schedule quantities are computed
in float64 (float32 on MPS, which has no float64) and returned in the dtype of the time tensor
they are evaluated at. Nothing is clipped: samples are in physical units.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from sciddpm.diffusion.betas import AlphaTable, discrete_alpha_bar
from sciddpm.diffusion.parametrization import (
    check_prediction_type,
    edm_norm,
    per_sample,
    prediction_target,
    to_x0_eps,
)
from sciddpm.interfaces import PredictionType

__all__ = [
    "EDM",
    "VE",
    "VP",
    "NoiseProcess",
    "ProcessName",
    "RectifiedFlow",
    "ScheduleName",
    "TimeLike",
    "make_process",
]

ScheduleName = Literal["linear", "cosine", "scaled_linear"]
ProcessName = Literal["vp", "ve", "edm", "flow"]
#: A time: a float or a tensor of times (a scalar or one per sample, ``(B,)``).
TimeLike = torch.Tensor | float


def _wide(t: TimeLike) -> torch.Tensor:
    """``t`` as a float64 tensor (float32 on MPS, which has no float64)."""
    t = torch.as_tensor(t)
    return t.to(torch.float32 if t.device.type == "mps" else torch.float64)


def _like(value: torch.Tensor, t: TimeLike) -> torch.Tensor:
    """``value`` in the dtype of ``t`` when ``t`` is a floating tensor, else float64."""
    if isinstance(t, torch.Tensor) and t.is_floating_point():
        return value.to(t.dtype)
    return value


class NoiseProcess(ABC):
    """A noise process ``x_t = alpha(t) x0 + sigma(t) eps``, t in [0, 1], with decreasing log-SNR.

    Subclasses give :meth:`alpha_sigma` and its inverse :meth:`t_from_log_snr`; everything else is
    shared. Processes are frozen dataclasses, so two processes with the same parameters compare
    equal (a pipeline checks that a sampling scheduler runs the process its model was trained on).
    """

    #: True when ``alpha(1) = 0``: eps-prediction cannot recover x0 there.
    zero_terminal_snr: bool = False
    #: Registry-style name of the process family ("vp", "ve", "edm", "flow").
    kind: ClassVar[str] = ""

    @abstractmethod
    def alpha_sigma(self, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha(t), sigma(t))`` in float64, shaped like ``t`` (the precision solvers need)."""

    @abstractmethod
    def t_from_log_snr(self, log_snr: TimeLike) -> torch.Tensor:
        """The time at which ``log_snr(t)`` equals ``log_snr``, clamped to [0, 1]."""

    def alpha(self, t: TimeLike) -> torch.Tensor:
        """Signal scale ``alpha(t)``, in the dtype of ``t``."""
        return _like(self.alpha_sigma(t)[0], t)

    def sigma(self, t: TimeLike) -> torch.Tensor:
        """Noise scale ``sigma(t)``, in the dtype of ``t``."""
        return _like(self.alpha_sigma(t)[1], t)

    def log_snr(self, t: TimeLike) -> torch.Tensor:
        """``log_snr(t) = 2 log(alpha / sigma)``: +inf where sigma = 0, -inf where alpha = 0."""
        alpha, sigma = self.alpha_sigma(t)
        return _like(2 * (alpha.log() - sigma.log()), t)

    def sigma_ve(self, t: TimeLike) -> torch.Tensor:
        """The VE-equivalent noise level ``sigma / alpha = exp(-log_snr / 2)`` of ``x_t / alpha``."""
        alpha, sigma = self.alpha_sigma(t)
        return _like(sigma / alpha, t)

    def t_from_sigma_ve(self, sigma_ve: TimeLike) -> torch.Tensor:
        """The time whose VE-equivalent noise level is ``sigma_ve``; inverts :meth:`sigma_ve`."""
        return _like(self.t_from_log_snr(-2 * _wide(sigma_ve).log()), sigma_ve)

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: TimeLike) -> torch.Tensor:
        """``x_t = alpha(t) x0 + sigma(t) eps`` for ``x0, eps (B, C, *spatial)``, ``t`` scalar or ``(B,)``.

        Raises ValueError when ``t`` is neither a scalar nor one time per sample.
        """
        alpha, sigma = self.alpha_sigma(t)
        return per_sample(alpha, x0) * x0 + per_sample(sigma, x0) * eps

    def to_x0_eps(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        t: TimeLike,
        prediction_type: PredictionType,
        sigma_data: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0, eps)`` implied by a model output of ``prediction_type`` at ``(x_t, t)``.

        See :func:`~sciddpm.diffusion.parametrization.to_x0_eps`. Raises ValueError for an unknown
        prediction type, and for eps-prediction on a process whose alpha reaches 0.
        """
        check_prediction_type(prediction_type, self.zero_terminal_snr)
        alpha, sigma = self.alpha_sigma(t)
        a, s = per_sample(alpha, x_t), per_sample(sigma, x_t)
        return to_x0_eps(model_output, x_t, a, s, prediction_type, sigma_data)

    def target(
        self,
        x0: torch.Tensor,
        eps: torch.Tensor,
        t: TimeLike,
        prediction_type: PredictionType,
        sigma_data: float = 1.0,
    ) -> torch.Tensor:
        """What a ``prediction_type`` denoiser should output for ``x_t = add_noise(x0, eps, t)``.

        Shaped like ``x0``; see :func:`~sciddpm.diffusion.parametrization.prediction_target`.
        Raises ValueError as :meth:`to_x0_eps`.
        """
        check_prediction_type(prediction_type, self.zero_terminal_snr)
        alpha, sigma = self.alpha_sigma(t)
        return prediction_target(
            x0, eps, per_sample(alpha, x0), per_sample(sigma, x0), prediction_type, sigma_data
        )

    def c_in(self, t: TimeLike, sigma_data: float = 1.0) -> torch.Tensor:
        """EDM's input scale on ``x_t``: ``1 / sqrt(sigma^2 + alpha^2 sigma_data^2)``, the std of ``x_t``.

        Karras et al. 2022 (Table 1) scale the VE-form input ``x_t / alpha`` by
        ``1 / sqrt(sigma_ve^2 + sigma_data^2)``; on ``x_t`` that is the above. It is 1 on a VP process
        with ``sigma_data = 1`` (up to float64 rounding, which float32 does not see).
        """
        alpha, sigma = self.alpha_sigma(t)
        return _like(edm_norm(alpha, sigma, sigma_data).reciprocal(), t)


@dataclass(frozen=True)
class VP(NoiseProcess):
    """Variance preserving: ``alpha(t)^2 + sigma(t)^2 = 1``; in DDPM notation ``alpha^2 = alpha_bar``.

    - ``linear``: ``alpha_bar(t) = exp(-(beta_min t + (beta_max - beta_min) t^2 / 2))``, the VP-SDE of
      Song et al. 2021 (score SDE, Appendix B): the T -> inf limit of DDPM's linear betas
      1e-4..0.02 over T=1000 (``beta_min = 1e-4 T``, ``beta_max = 0.02 T``).
    - ``cosine``: ``alpha_bar(t) = f(t) / f(0)``, ``f(t) = cos^2((t + s) / (1 + s) pi / 2)`` (Nichol &
      Dhariwal 2021, Eq. 17). Its ``alpha_bar(1) = 0``; as Nichol & Dhariwal clip beta_t <= 0.999, we
      floor the log-SNR at ``log_snr_min`` (-20 ~ their terminal value at T=1000, -19.8), which only
      touches ``t > 1 - 3e-5``.
    - ``scaled_linear``: ``beta(t) = (sqrt(beta_min) + t (sqrt(beta_max) - sqrt(beta_min)))^2``, the
      limit of latent diffusion's betas (square roots evenly spaced; Rombach et al. 2022).
    - ``zero_terminal_snr``: ``alpha <- (alpha - alpha(1)) / (1 - alpha(1))`` so ``alpha(1) = 0``
      exactly while ``alpha(0) = 1`` is kept (Lin et al. 2024, Algorithm 1, in continuous time).
      The cosine floor is then not applied. Requires a v- or x0-predicting denoiser.
    - ``discrete_steps = T > 0``: instead of the T -> inf limit, ``alpha_bar`` is DDPM's product over
      T discrete betas from ``beta_min / 1000`` to ``beta_max / 1000`` exactly as diffusers computes
      it (:mod:`sciddpm.diffusion.betas`), at ``t = (i + 1) / T`` for timestep ``i``, and ``alpha`` is
      linear in t between those times. Models trained in diffusers need it to be sampled exactly.

    ``beta_min`` and ``beta_max`` are in units of 1/1000 of the time axis (DDPM's 1000 steps), so a
    diffusers ``beta_start`` of 1e-4 is ``beta_min = 0.1``. Raises ValueError for an unknown schedule
    or ``beta_min > beta_max``.
    """

    schedule: ScheduleName = "linear"
    zero_terminal_snr: bool = False
    beta_min: float = 0.1
    beta_max: float = 20.0
    cosine_s: float = 0.008
    log_snr_min: float = -20.0
    discrete_steps: int = 0
    kind: ClassVar[str] = "vp"

    def __post_init__(self) -> None:
        if self.schedule not in ("linear", "cosine", "scaled_linear"):
            raise ValueError(f"schedule must be 'linear', 'cosine' or 'scaled_linear', got {self.schedule!r}")
        if not 0 < self.beta_min <= self.beta_max:
            raise ValueError(f"need 0 < beta_min <= beta_max, got {self.beta_min}, {self.beta_max}")
        if self.discrete_steps < 0:
            raise ValueError(f"discrete_steps must be >= 0 (0 = continuous), got {self.discrete_steps}")

    @cached_property
    def _table(self) -> AlphaTable:
        alpha_bar = discrete_alpha_bar(
            self.schedule,
            self.beta_min / 1000,
            self.beta_max / 1000,
            self.discrete_steps,
            self.zero_terminal_snr,
        )
        return AlphaTable.from_alpha_bar(alpha_bar)

    def _raw_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        if self.schedule == "linear":
            return torch.exp(-(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2))
        if self.schedule == "scaled_linear":
            a, b = math.sqrt(self.beta_min), math.sqrt(self.beta_max) - math.sqrt(self.beta_min)
            if b == 0:
                return torch.exp(-self.beta_min * t)
            return torch.exp(-((a + b * t) ** 3 - a**3) / (3 * b))
        s = self.cosine_s
        f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
        alpha_bar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2 / f0
        if self.zero_terminal_snr:
            return alpha_bar
        return alpha_bar.clamp(min=1 / (1 + math.exp(-self.log_snr_min)))

    def _terminal_raw_alpha(self) -> float:
        return math.sqrt(self._raw_alpha_bar(torch.tensor(1.0, dtype=torch.float64)).item())

    def alpha_sigma(self, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha, sigma)`` in float64 with ``sigma = sqrt(1 - alpha^2)``."""
        t = _wide(t)
        if self.discrete_steps:
            alpha = self._table(t)
            return alpha, ((1 - alpha) * (1 + alpha)).clamp(min=0).sqrt()
        alpha = self._raw_alpha_bar(t).sqrt()
        if self.zero_terminal_snr:
            alpha_1 = self._terminal_raw_alpha()
            alpha = ((alpha - alpha_1) / (1 - alpha_1)).clamp(min=0)
        sigma = ((1 - alpha) * (1 + alpha)).clamp(min=0).sqrt()
        return alpha, sigma

    def alpha_bar(self, t: TimeLike) -> torch.Tensor:
        """``alpha_bar(t) = alpha(t)^2`` (Ho et al. 2020 notation)."""
        return _like(self.alpha_sigma(t)[0] ** 2, t)

    def t_from_log_snr(self, log_snr: TimeLike) -> torch.Tensor:
        """The time at which ``log_snr(t)`` equals ``log_snr``, clamped to [0, 1]; inverts :meth:`log_snr`.

        On the floored end of the cosine schedule (``t > 1 - 3e-5``) it returns the earliest such time.
        """
        lam = _wide(log_snr)
        if self.discrete_steps:
            t = self._table.time_of(F.logsigmoid(lam).mul(0.5).exp())
            return _like(t, log_snr)
        if self.schedule == "cosine" and not self.zero_terminal_snr:
            lam = lam.clamp(min=self.log_snr_min)
        alpha = F.logsigmoid(lam).mul(0.5).exp()  # alpha^2 = sigmoid(log_snr) for a VP process
        if self.zero_terminal_snr:
            alpha_1 = self._terminal_raw_alpha()
            alpha = alpha * (1 - alpha_1) + alpha_1
        log_alpha_bar = 2 * alpha.log()
        if self.schedule == "linear":
            d = self.beta_max - self.beta_min
            if d == 0:
                t = -log_alpha_bar / self.beta_min
            else:
                t = (torch.sqrt(self.beta_min**2 - 2 * d * log_alpha_bar) - self.beta_min) / d
        elif self.schedule == "scaled_linear":
            a, b = math.sqrt(self.beta_min), math.sqrt(self.beta_max) - math.sqrt(self.beta_min)
            if b == 0:
                t = -log_alpha_bar / self.beta_min
            else:
                t = ((a**3 - 3 * b * log_alpha_bar).pow(1 / 3) - a) / b
        else:
            s = self.cosine_s
            cos_theta = alpha * math.cos(s / (1 + s) * math.pi / 2)
            t = torch.acos(cos_theta.clamp(-1, 1)) * (2 / math.pi) * (1 + s) - s
        return _like(t.clamp(0, 1), log_snr)

    def posterior(self, t: TimeLike, s: TimeLike) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(c_x0, c_xt, var)`` of ``q(x_s | x_t, x0) = N(c_x0 x0 + c_xt x_t, var)`` for s < t, float64.

        Ho et al. 2020 Eq. 6-7 written for any s < t (Kingma et al. 2021, VDM Appendix A):
        ``alpha_ts = alpha_t / alpha_s``, ``sigma_ts^2 = sigma_t^2 - alpha_ts^2 sigma_s^2``.
        """
        alpha_t, sigma_t = self.alpha_sigma(t)
        alpha_s, sigma_s = self.alpha_sigma(s)
        alpha_ts = alpha_t / alpha_s
        sigma2_ts = (sigma_t**2 - alpha_ts**2 * sigma_s**2).clamp(min=0)
        c_x0 = alpha_s * sigma2_ts / sigma_t**2
        c_xt = alpha_ts * sigma_s**2 / sigma_t**2
        var = sigma2_ts * sigma_s**2 / sigma_t**2
        return c_x0, c_xt, var


@dataclass(frozen=True)
class VE(NoiseProcess):
    """Variance exploding: alpha = 1, ``sigma = sigma_min (sigma_max / sigma_min)^t`` (Song et al. 2021).

    Raises ValueError unless ``0 < sigma_min < sigma_max``.
    """

    sigma_min: float = 0.01
    sigma_max: float = 80.0
    kind: ClassVar[str] = "ve"

    def __post_init__(self) -> None:
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")

    def alpha_sigma(self, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1, sigma_min (sigma_max / sigma_min)^t)`` in float64."""
        t = _wide(t)
        return torch.ones_like(t), self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def t_from_log_snr(self, log_snr: TimeLike) -> torch.Tensor:
        """The time of ``log_snr`` (``sigma = exp(-log_snr / 2)``), clamped to [0, 1]."""
        lam = _wide(log_snr)
        t = (-lam / 2 - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)
        return _like(t.clamp(0, 1), log_snr)


@dataclass(frozen=True)
class EDM(NoiseProcess):
    """Karras et al. 2022: ``alpha = 1``, ``sigma(t) = sigma_max t^rho``, so uniform t is their Eq. 5 spacing.

    ``sigma(0) = 0``; ``rho = 7`` and ``sigma_max = 80`` are their Table 1 values. Raises ValueError
    unless both are positive.
    """

    sigma_max: float = 80.0
    rho: float = 7.0
    kind: ClassVar[str] = "edm"

    def __post_init__(self) -> None:
        if not (self.sigma_max > 0 and self.rho > 0):
            raise ValueError(f"need sigma_max > 0 and rho > 0, got {self.sigma_max}, {self.rho}")

    def alpha_sigma(self, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1, sigma_max t^rho)`` in float64."""
        t = _wide(t)
        return torch.ones_like(t), self.sigma_max * t**self.rho

    def t_from_log_snr(self, log_snr: TimeLike) -> torch.Tensor:
        """The time of ``log_snr`` (``sigma = exp(-log_snr / 2)``), clamped to [0, 1]."""
        lam = _wide(log_snr)
        t = torch.exp((-lam / 2 - math.log(self.sigma_max)) / self.rho)
        return _like(t.clamp(0, 1), log_snr)


@dataclass(frozen=True)
class RectifiedFlow(NoiseProcess):
    """Rectified flow: ``alpha = 1 - t``, ``sigma = t`` (Liu et al. 2023; Lipman et al. 2023, Sec. 4.1).

    ``alpha(1) = 0``, so a flow-, v- or x0-predicting model is needed near t = 1.
    """

    kind: ClassVar[str] = "flow"

    @property
    def zero_terminal_snr(self) -> bool:  # type: ignore[override]
        """Always True: ``alpha(1) = 0``."""
        return True

    def alpha_sigma(self, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1 - t, t)`` in float64."""
        t = _wide(t)
        return 1 - t, t

    def t_from_log_snr(self, log_snr: TimeLike) -> torch.Tensor:
        """The time of ``log_snr``: ``sigma / alpha = t / (1 - t)``."""
        return _like(torch.sigmoid(-_wide(log_snr) / 2), log_snr)


PROCESSES: dict[str, type[NoiseProcess]] = {"vp": VP, "ve": VE, "edm": EDM, "flow": RectifiedFlow}


def make_process(name: ProcessName = "vp", **params: Any) -> NoiseProcess:
    """The process ``name`` ("vp", "ve", "edm", "flow") built with ``params`` (its dataclass fields).

    Raises ValueError for an unknown name, TypeError for an unknown parameter.
    """
    if name not in PROCESSES:
        raise ValueError(f"process must be one of {sorted(PROCESSES)}, got {name!r}")
    return PROCESSES[name](**params)
