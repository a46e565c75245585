"""The continuous-time core: noise processes ``x_t = alpha(t) x0 + sigma(t) eps`` on t in [0, 1].

:class:`NoiseProcess` is the shared base (alpha, sigma, log-SNR, the prediction
parametrisations eps / x0 / v / flow and the denoiser ``D = E[x0 | x_t]``);
:class:`VPSchedule` is the variance-preserving process (``alpha^2 + sigma^2 = 1``;
in DDPM notation ``alpha = sqrt(alpha_bar)``), and :mod:`sciddpm.processes` adds
VE, EDM and rectified flow. Every scheduler takes its schedule, prediction
conversions and update rules from here and re-derives nothing
(the k-diffusion layout). Schedule quantities are computed in float64 and
returned in the dtype of the tensor they act on. Nothing is clipped:
samples are in physical units.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from sciddpm.interfaces import PredictionType

__all__ = [
    "NoiseProcess",
    "ScheduleName",
    "VPSchedule",
    "check_prediction_type",
    "ddim_step",
    "ddpm_step",
    "edm_weight",
    "from_x0",
    "min_snr_weight",
    "prediction_target",
    "to_x0_eps",
]

ScheduleName = Literal["linear", "cosine"]
PREDICTION_TYPES: tuple[str, ...] = ("eps", "x0", "v", "flow", "edm")
TimeLike = torch.Tensor | float


def check_prediction_type(prediction_type: str, zero_terminal_snr: bool = False) -> None:
    """Refuse unknown prediction types, and eps-prediction with zero terminal SNR.

    At ``alpha(1) = 0`` the noisy sample carries no information about x0, so
    ``x0 = (x_t - sigma eps) / alpha`` is undefined; Lin et al. 2024 (Sec. 3.2)
    pair zero terminal SNR with v-prediction.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if zero_terminal_snr and prediction_type == "eps":
        raise ValueError(
            "zero_terminal_snr=True cannot be used with an eps-predicting denoiser: at t=1, alpha=0 and "
            "x0 cannot be recovered from eps. Use prediction_type='v' (or 'x0'), or set "
            "zero_terminal_snr=False."
        )


def _wide(t: TimeLike) -> torch.Tensor:
    """``t`` as a float64 tensor (float32 on MPS, which has no float64)."""
    t = torch.as_tensor(t)
    return t.to(torch.float32 if t.device.type == "mps" else torch.float64)


def _like(value: torch.Tensor, t: TimeLike) -> torch.Tensor:
    """``value`` in the dtype of ``t`` when ``t`` is a floating tensor, else float64."""
    if isinstance(t, torch.Tensor) and t.is_floating_point():
        return value.to(t.dtype)
    return value


def _bcast(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-sample ``(B,)`` (or scalar) coefficient shaped to broadcast over ``x = (B, C, *spatial)``."""
    coef = coef.to(dtype=x.dtype, device=x.device)
    if coef.ndim == 0:
        return coef
    if coef.ndim != 1 or coef.shape[0] != x.shape[0]:
        raise ValueError(f"t must be a scalar or have shape (B,) = ({x.shape[0]},), got {tuple(coef.shape)}")
    return coef.view(-1, *([1] * (x.ndim - 1)))


class NoiseProcess(ABC):
    """A noise process ``x_t = alpha(t) x0 + sigma(t) eps``, t in [0, 1], with decreasing log-SNR.

    Subclasses give ``_alpha_sigma`` (float64) and its inverse ``t_from_log_snr``; everything else,
    including the "VE-equivalent" view ``(x_t / alpha, sigma / alpha)`` in which every sampler works
    (Karras et al. 2022, Sec. 2 / Eq. 4), is shared.
    """

    #: True when ``alpha(1) = 0``: eps-prediction cannot recover x0 there.
    zero_terminal_snr: bool = False
    #: Registry-style name of the process family ("vp", "ve", "edm", "flow").
    kind: ClassVar[str] = ""

    @abstractmethod
    def _alpha_sigma(self, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]: ...

    @abstractmethod
    def t_from_log_snr(self, log_snr: TimeLike) -> torch.Tensor:
        """The time at which ``log_snr(t)`` equals ``log_snr``, clamped to [0, 1]."""

    def alpha(self, t: TimeLike) -> torch.Tensor:
        """Signal scale ``alpha(t)``."""
        return _like(self._alpha_sigma(t)[0], t)

    def sigma(self, t: TimeLike) -> torch.Tensor:
        """Noise scale ``sigma(t)``."""
        return _like(self._alpha_sigma(t)[1], t)

    def log_snr(self, t: TimeLike) -> torch.Tensor:
        """``log_snr(t) = 2 log(alpha / sigma)``: +inf where sigma = 0, -inf where alpha = 0."""
        alpha, sigma = self._alpha_sigma(t)
        return _like(2 * (alpha.log() - sigma.log()), t)

    def sigma_ve(self, t: TimeLike) -> torch.Tensor:
        """The VE-equivalent noise level ``sigma / alpha = exp(-log_snr / 2)`` of ``x_t / alpha``."""
        alpha, sigma = self._alpha_sigma(t)
        return _like(sigma / alpha, t)

    def t_from_sigma_ve(self, sigma_ve: TimeLike) -> torch.Tensor:
        """The time whose VE-equivalent noise level is ``sigma_ve``; inverts :meth:`sigma_ve`."""
        return _like(self.t_from_log_snr(-2 * _wide(sigma_ve).log()), sigma_ve)

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: TimeLike) -> torch.Tensor:
        """``x_t = alpha(t) x0 + sigma(t) eps``, ``t`` scalar or ``(B,)`` over ``x0 = (B, C, *spatial)``."""
        alpha, sigma = self._alpha_sigma(t)
        return _bcast(alpha, x0) * x0 + _bcast(sigma, x0) * eps

    def to_x0_eps(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        t: TimeLike,
        prediction_type: PredictionType,
        sigma_data: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0, eps)`` implied by a model output of ``prediction_type`` at ``(x_t, t)``."""
        check_prediction_type(prediction_type, self.zero_terminal_snr)
        alpha, sigma = self._alpha_sigma(t)
        a, s = _bcast(alpha, x_t), _bcast(sigma, x_t)
        return to_x0_eps(model_output, x_t, a, s, prediction_type, sigma_data)

    def target(
        self,
        x0: torch.Tensor,
        eps: torch.Tensor,
        t: TimeLike,
        prediction_type: PredictionType,
        sigma_data: float = 1.0,
    ) -> torch.Tensor:
        """What a denoiser of ``prediction_type`` should output for ``x_t = add_noise(x0, eps, t)``."""
        check_prediction_type(prediction_type, self.zero_terminal_snr)
        alpha, sigma = self._alpha_sigma(t)
        return prediction_target(x0, eps, _bcast(alpha, x0), _bcast(sigma, x0), prediction_type, sigma_data)

    def c_in(self, t: TimeLike, sigma_data: float = 1.0) -> torch.Tensor:
        """EDM's input scale on ``x_t``: ``1 / sqrt(sigma^2 + alpha^2 sigma_data^2)``, the std of ``x_t``.

        Karras et al. 2022 (Table 1) scale the VE-form input ``x_t / alpha`` by
        ``1 / sqrt(sigma_ve^2 + sigma_data^2)``; on ``x_t`` that is the above. It is 1 on a VP process with
        ``sigma_data = 1`` (up to float64 rounding, which float32 does not see).
        """
        alpha, sigma = self._alpha_sigma(t)
        return _like(_edm_norm(alpha, sigma, sigma_data).reciprocal(), t)


@dataclass(frozen=True)
class VPSchedule(NoiseProcess):
    """A variance-preserving noise process ``x_t = alpha(t) x0 + sigma(t) eps``, t in [0, 1].

    - ``linear``: ``alpha_bar(t) = exp(-(beta_min t + (beta_max - beta_min) t^2 / 2))``, the VP-SDE of
      Song et al. 2021 (score SDE, Appendix B): the T -> inf limit of DDPM's linear betas
      1e-4..0.02 over T=1000 (``beta_min = 1e-4 T``, ``beta_max = 0.02 T``).
    - ``cosine``: ``alpha_bar(t) = f(t) / f(0)``, ``f(t) = cos^2((t + s) / (1 + s) pi / 2)`` (Nichol &
      Dhariwal 2021, Eq. 17). Its ``alpha_bar(1) = 0``; as Nichol & Dhariwal clip beta_t <= 0.999, we
      floor the log-SNR at ``log_snr_min`` (-20 ~ their terminal value at T=1000, -19.8), which only
      touches ``t > 1 - 3e-5``.
    - ``zero_terminal_snr``: ``alpha <- (alpha - alpha(1)) / (1 - alpha(1))`` so ``alpha(1) = 0``
      exactly while ``alpha(0) = 1`` is kept (Lin et al. 2024, Algorithm 1, in continuous time).
      The cosine floor is then not applied. Requires a v- or x0-predicting denoiser.
    """

    schedule: ScheduleName = "linear"
    zero_terminal_snr: bool = False
    beta_min: float = 0.1
    beta_max: float = 20.0
    cosine_s: float = 0.008
    log_snr_min: float = -20.0
    kind: ClassVar[str] = "vp"

    def __post_init__(self) -> None:
        if self.schedule not in ("linear", "cosine"):
            raise ValueError(f"schedule must be 'linear' or 'cosine', got {self.schedule!r}")
        if not 0 < self.beta_min <= self.beta_max:
            raise ValueError(f"need 0 < beta_min <= beta_max, got {self.beta_min}, {self.beta_max}")

    # -- the schedule, float64 ------------------------------------------------------------------

    def _raw_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        if self.schedule == "linear":
            return torch.exp(-(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2))
        s = self.cosine_s
        f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
        alpha_bar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2 / f0
        if self.zero_terminal_snr:
            return alpha_bar
        return alpha_bar.clamp(min=1 / (1 + math.exp(-self.log_snr_min)))

    def _terminal_raw_alpha(self) -> float:
        return math.sqrt(self._raw_alpha_bar(torch.tensor(1.0, dtype=torch.float64)).item())

    def _alpha_sigma(self, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        t = _wide(t)
        alpha = self._raw_alpha_bar(t).sqrt()
        if self.zero_terminal_snr:
            alpha_1 = self._terminal_raw_alpha()
            alpha = ((alpha - alpha_1) / (1 - alpha_1)).clamp(min=0)
        sigma = ((1 - alpha) * (1 + alpha)).clamp(min=0).sqrt()
        return alpha, sigma

    def alpha_bar(self, t: TimeLike) -> torch.Tensor:
        """``alpha_bar(t) = alpha(t)^2`` (Ho et al. 2020 notation)."""
        return _like(self._alpha_sigma(t)[0] ** 2, t)

    def t_from_log_snr(self, log_snr: TimeLike) -> torch.Tensor:
        """The time at which ``log_snr(t)`` equals ``log_snr``, clamped to [0, 1]; inverts :meth:`log_snr`.

        On the floored end of the cosine schedule (``t > 1 - 3e-5``) it returns the earliest such time.
        """
        lam = _wide(log_snr)
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
        alpha_t, sigma_t = self._alpha_sigma(t)
        alpha_s, sigma_s = self._alpha_sigma(s)
        alpha_ts = alpha_t / alpha_s
        sigma2_ts = (sigma_t**2 - alpha_ts**2 * sigma_s**2).clamp(min=0)
        c_x0 = alpha_s * sigma2_ts / sigma_t**2
        c_xt = alpha_ts * sigma_s**2 / sigma_t**2
        var = sigma2_ts * sigma_s**2 / sigma_t**2
        return c_x0, c_xt, var


def _edm_norm(alpha: torch.Tensor | float, sigma: torch.Tensor | float, sigma_data: float) -> torch.Tensor:
    """``n = sqrt(sigma^2 + alpha^2 sigma_data^2)``, the std of ``x_t`` for data of std ``sigma_data``."""
    return torch.as_tensor(sigma**2 + (alpha * sigma_data) ** 2).sqrt()


def to_x0_eps(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    alpha: torch.Tensor | float,
    sigma: torch.Tensor | float,
    prediction_type: PredictionType,
    sigma_data: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0, eps)`` from an eps-, x0-, v-, flow- or edm-prediction.

    v = alpha eps - sigma x0 (Salimans & Ho 2022, Sec. 4); flow = eps - x0, the rectified-flow velocity
    ``d x_t / dt`` for ``alpha = 1 - t, sigma = t`` (Liu et al. 2023, Eq. 1; Lipman et al. 2023), read
    on any process through ``x_t = (alpha + sigma) x0 + sigma flow``. edm is the network output F of
    Karras et al. 2022 (Table 1, Eq. 7) written on ``x_t``: with ``n^2 = sigma^2 + alpha^2 sigma_data^2``,
    ``x0 = c_skip x_t + c_out F``, ``c_skip = alpha sigma_data^2 / n^2``, ``c_out = sigma sigma_data / n``
    (their VE-form c_skip, c_out with ``sigma_ve = sigma / alpha``); on VP with ``sigma_data = 1``, F = -v.

    ``alpha`` and ``sigma`` broadcast against ``x_t``. Where ``sigma = 0`` (t = 0, x_t = x0) the
    eps of an x0-prediction is returned as 0 rather than 0/0; eps-prediction needs ``alpha > 0``.
    """
    if prediction_type == "eps":
        return (x_t - sigma * model_output) / alpha, model_output
    if prediction_type == "x0":
        sigma = torch.as_tensor(sigma, dtype=x_t.dtype, device=x_t.device)
        safe = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
        eps = torch.where(sigma > 0, (x_t - alpha * model_output) / safe, torch.zeros_like(x_t))
        return model_output, eps
    if prediction_type == "v":  # divided by alpha^2 + sigma^2, which is 1 on a VP process
        norm = alpha**2 + sigma**2
        return (alpha * x_t - sigma * model_output) / norm, (sigma * x_t + alpha * model_output) / norm
    if prediction_type == "flow":
        return (x_t - sigma * model_output) / (alpha + sigma), (x_t + alpha * model_output) / (alpha + sigma)
    if prediction_type == "edm":  # eps = (x_t - alpha x0) / sigma, simplified so it holds at sigma = 0
        n = _edm_norm(alpha, sigma, sigma_data)
        x0 = alpha * sigma_data**2 * x_t / n**2 + sigma * sigma_data * model_output / n
        return x0, sigma * x_t / n**2 - alpha * sigma_data * model_output / n
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def prediction_target(
    x0: torch.Tensor,
    eps: torch.Tensor,
    alpha: torch.Tensor | float,
    sigma: torch.Tensor | float,
    prediction_type: PredictionType,
    sigma_data: float = 1.0,
) -> torch.Tensor:
    """The regression target for ``prediction_type``; v as in Salimans & Ho 2022, Sec. 4.

    edm: ``F = (x0 - c_skip x_t) / c_out = (sigma x0 - alpha sigma_data^2 eps) / (n sigma_data)``
    (Karras et al. 2022, Eq. 8), finite where alpha or sigma is 0.
    """
    if prediction_type == "eps":
        return eps
    if prediction_type == "x0":
        return x0
    if prediction_type == "v":
        return alpha * eps - sigma * x0
    if prediction_type == "flow":
        return eps - x0
    if prediction_type == "edm":
        n = _edm_norm(alpha, sigma, sigma_data)
        return (sigma * x0 - alpha * sigma_data**2 * eps) / (n * sigma_data)
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def _x0_error_scale(
    alpha: torch.Tensor, sigma: torch.Tensor, prediction_type: PredictionType, sigma_data: float
) -> torch.Tensor:
    """``d`` such that an output error e of ``prediction_type`` is an x0 error ``sigma e / d``."""
    if prediction_type == "x0":
        return sigma
    if prediction_type == "edm":
        return _edm_norm(alpha, sigma, sigma_data) / sigma_data
    return {"eps": alpha, "v": alpha**2 + sigma**2, "flow": alpha + sigma}[prediction_type]


def min_snr_weight(
    process: NoiseProcess, t: TimeLike, prediction_type: PredictionType, gamma: float, sigma_data: float = 1.0
) -> torch.Tensor:
    """Min-SNR-gamma loss weight (Hang et al. 2023) for the MSE on a ``prediction_type`` output.

    The weight on the x0 error is ``min(SNR, gamma)``; the error of another prediction maps to the x0
    error by a factor ``sigma / d`` (see :func:`to_x0_eps`), so its weight is
    ``min(alpha^2, gamma sigma^2) / d^2`` with ``d`` = alpha (eps), sigma (x0), alpha^2 + sigma^2 (v),
    alpha + sigma (flow) or ``sqrt(sigma^2 + alpha^2 sigma_data^2) / sigma_data`` (edm). On a VP process
    this is the paper's ``min(SNR, gamma) / SNR`` (eps), ``min(SNR, gamma) / (SNR + 1)`` (v) and
    ``min(SNR, gamma)`` (x0); written this way it stays finite
    where SNR is 0 or infinite (except eps at alpha = 0, which ``check_prediction_type`` refuses).
    """
    check_prediction_type(prediction_type)
    alpha, sigma = process._alpha_sigma(t)
    if prediction_type == "x0":  # min(SNR, gamma) itself, gamma at sigma = 0
        return _like(((alpha / sigma) ** 2).clamp(max=gamma), t)
    clipped = torch.minimum(alpha**2, gamma * sigma**2)
    d = _x0_error_scale(alpha, sigma, prediction_type, sigma_data)
    return _like(clipped / d**2, t)


def edm_weight(
    process: NoiseProcess, t: TimeLike, prediction_type: PredictionType, sigma_data: float = 1.0
) -> torch.Tensor:
    """EDM loss weight (Karras et al. 2022, Table 1) for the MSE on a ``prediction_type`` output.

    EDM weights the x0 error by ``lambda = (sigma_ve^2 + sigma_data^2) / (sigma_ve sigma_data)^2``
    ``= n^2 / (sigma sigma_data)^2`` with ``n^2 = sigma^2 + alpha^2 sigma_data^2``; mapped to an output of
    ``prediction_type`` (see :func:`min_snr_weight`) that is ``n^2 / (sigma_data d)^2``, which is 1 for
    the edm output F (``lambda c_out^2 = 1``: EDM's loss is uniform on F) and ``lambda`` for x0.
    """
    check_prediction_type(prediction_type)
    alpha, sigma = process._alpha_sigma(t)
    if prediction_type == "edm":
        return _like(torch.ones_like(alpha), t)
    d = _x0_error_scale(alpha, sigma, prediction_type, sigma_data)
    return _like(_edm_norm(alpha, sigma, sigma_data) ** 2 / (sigma_data * d) ** 2, t)


def from_x0(
    x0: torch.Tensor,
    x_t: torch.Tensor,
    alpha: torch.Tensor | float,
    sigma: torch.Tensor | float,
    prediction_type: PredictionType,
    sigma_data: float = 1.0,
) -> torch.Tensor:
    """The ``prediction_type`` output of a model whose denoiser ``D(x_t) = x0``; inverts :func:`to_x0_eps`.

    Needs ``sigma > 0``: at sigma = 0 every x0 is consistent with the same x_t.
    """
    return prediction_target(x0, (x_t - alpha * x0) / sigma, alpha, sigma, prediction_type, sigma_data)


def ddpm_step(
    schedule: VPSchedule,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    t: float,
    s: float,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """Ancestral step t -> s < t: a draw of q(x_s | x_t, x0), Ho et al. 2020 Eq. 6-7 (Algorithm 2)."""
    c_x0, c_xt, var = (c.item() for c in schedule.posterior(t, s))
    mean = c_x0 * x0 + c_xt * x_t
    if var == 0:
        return mean
    if noise is None:
        raise ValueError(f"ddpm_step from t={t} to s={s} has nonzero variance and needs noise")
    return mean + math.sqrt(var) * noise


def ddim_step(
    schedule: VPSchedule,
    x0: torch.Tensor,
    eps: torch.Tensor,
    t: float,
    s: float,
    eta: float,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """Generalised step t -> s < t of Song et al. 2021 (DDIM) Eq. 12, with sigma_t(eta) from Eq. 16."""
    alpha_s, sigma_s = (c.item() for c in schedule._alpha_sigma(s))
    std = eta * math.sqrt(schedule.posterior(t, s)[2].item())
    x_s = alpha_s * x0 + math.sqrt(max(sigma_s**2 - std**2, 0.0)) * eps
    if std == 0:
        return x_s
    if noise is None:
        raise ValueError(f"ddim_step with eta={eta} from t={t} to s={s} needs noise")
    return x_s + std * noise
