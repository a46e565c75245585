"""What a denoiser predicts and what it is trained on: prediction conversions, targets, loss weights.

A network output ``F`` of any prediction type is an affine function of the clean-data estimate:
``x0 = c_skip x_t + c_out F`` (Karras et al. 2022, Eq. 7) with coefficients set by ``alpha``,
``sigma`` and the type. :func:`to_x0_eps` reads ``(x0, eps)`` from an output,
:func:`prediction_target` is the regression target of each type and :func:`from_x0` inverts
:func:`to_x0_eps`; :func:`min_snr_weight` and :func:`edm_weight` weight the training loss. The
types are those of :data:`sciddpm.interfaces.PREDICTION_TYPES`. ``alpha`` and ``sigma`` are
numbers or tensors broadcasting against the data (:func:`per_sample` shapes a ``(B,)`` one).
"""

from __future__ import annotations

import torch

from sciddpm.interfaces import PREDICTION_TYPES, PredictionType

__all__ = [
    "check_prediction_type",
    "edm_norm",
    "edm_weight",
    "from_x0",
    "min_snr_weight",
    "per_sample",
    "prediction_target",
    "to_x0_eps",
]

Coefficient = torch.Tensor | float


def check_prediction_type(prediction_type: str, zero_terminal_snr: bool = False) -> None:
    """Refuse unknown prediction types, and eps-prediction with zero terminal SNR.

    At ``alpha(1) = 0`` the noisy sample carries no information about x0, so
    ``x0 = (x_t - sigma eps) / alpha`` is undefined; Lin et al. 2024 (Sec. 3.2) pair zero terminal
    SNR with v-prediction. Raises ValueError naming the type and the fix.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if zero_terminal_snr and prediction_type == "eps":
        raise ValueError(
            "zero_terminal_snr=True cannot be used with an eps-predicting denoiser: at t=1, alpha=0 and "
            "x0 cannot be recovered from eps. Use prediction_type='v' (or 'x0'), or set "
            "zero_terminal_snr=False."
        )


def per_sample(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A scalar or per-sample ``(B,)`` coefficient shaped to broadcast over ``x = (B, C, *spatial)``.

    Returned in the dtype and on the device of ``x``. Raises ValueError for any other shape.
    """
    coef = coef.to(dtype=x.dtype, device=x.device)
    if coef.ndim == 0:
        return coef
    if coef.ndim != 1 or coef.shape[0] != x.shape[0]:
        raise ValueError(f"t must be a scalar or have shape (B,) = ({x.shape[0]},), got {tuple(coef.shape)}")
    return coef.view(-1, *([1] * (x.ndim - 1)))


def edm_norm(alpha: Coefficient, sigma: Coefficient, sigma_data: float) -> torch.Tensor:
    """``n = sqrt(sigma^2 + alpha^2 sigma_data^2)``, the std of ``x_t`` for data of std ``sigma_data``."""
    return torch.as_tensor(sigma**2 + (alpha * sigma_data) ** 2).sqrt()


def to_x0_eps(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    alpha: Coefficient,
    sigma: Coefficient,
    prediction_type: PredictionType,
    sigma_data: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0, eps)``, each shaped like ``x_t``, from an eps-, x0-, v-, flow- or edm-prediction.

    v = alpha eps - sigma x0 (Salimans & Ho 2022, Sec. 4); flow = eps - x0, the rectified-flow velocity
    ``d x_t / dt`` for ``alpha = 1 - t, sigma = t`` (Liu et al. 2023, Eq. 1; Lipman et al. 2023), read
    on any process through ``x_t = (alpha + sigma) x0 + sigma flow``. edm is the network output F of
    Karras et al. 2022 (Table 1, Eq. 7) written on ``x_t``: with ``n^2 = sigma^2 + alpha^2 sigma_data^2``,
    ``x0 = c_skip x_t + c_out F``, ``c_skip = alpha sigma_data^2 / n^2``, ``c_out = sigma sigma_data / n``
    (their VE-form c_skip, c_out with ``sigma_ve = sigma / alpha``); on VP with ``sigma_data = 1``, F = -v.

    ``alpha`` and ``sigma`` broadcast against ``x_t``. Where ``sigma = 0`` (t = 0, x_t = x0) the
    eps of an x0-prediction is returned as 0 rather than 0/0; eps-prediction needs ``alpha > 0``.
    Raises ValueError for an unknown prediction type.
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
        n = edm_norm(alpha, sigma, sigma_data)
        x0 = alpha * sigma_data**2 * x_t / n**2 + sigma * sigma_data * model_output / n
        return x0, sigma * x_t / n**2 - alpha * sigma_data * model_output / n
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def prediction_target(
    x0: torch.Tensor,
    eps: torch.Tensor,
    alpha: Coefficient,
    sigma: Coefficient,
    prediction_type: PredictionType,
    sigma_data: float = 1.0,
) -> torch.Tensor:
    """The regression target for ``prediction_type``, shaped like ``x0``; v as in Salimans & Ho 2022, Sec. 4.

    edm: ``F = (x0 - c_skip x_t) / c_out = (sigma x0 - alpha sigma_data^2 eps) / (n sigma_data)``
    (Karras et al. 2022, Eq. 8), finite where alpha or sigma is 0. Raises ValueError for an unknown
    prediction type.
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
        n = edm_norm(alpha, sigma, sigma_data)
        return (sigma * x0 - alpha * sigma_data**2 * eps) / (n * sigma_data)
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def from_x0(
    x0: torch.Tensor,
    x_t: torch.Tensor,
    alpha: Coefficient,
    sigma: Coefficient,
    prediction_type: PredictionType,
    sigma_data: float = 1.0,
) -> torch.Tensor:
    """The ``prediction_type`` output of a model whose denoiser ``D(x_t) = x0``; inverts :func:`to_x0_eps`.

    Needs ``sigma > 0``: at sigma = 0 every x0 is consistent with the same x_t.
    """
    return prediction_target(x0, (x_t - alpha * x0) / sigma, alpha, sigma, prediction_type, sigma_data)


def _x0_error_scale(
    alpha: torch.Tensor, sigma: torch.Tensor, prediction_type: PredictionType, sigma_data: float
) -> torch.Tensor:
    """``d`` such that an output error e of ``prediction_type`` is an x0 error ``sigma e / d``."""
    if prediction_type == "x0":
        return sigma
    if prediction_type == "edm":
        return edm_norm(alpha, sigma, sigma_data) / sigma_data
    return {"eps": alpha, "v": alpha**2 + sigma**2, "flow": alpha + sigma}[prediction_type]


def min_snr_weight(
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    prediction_type: PredictionType,
    gamma: float,
    sigma_data: float = 1.0,
) -> torch.Tensor:
    """Min-SNR-gamma loss weight (Hang et al. 2023) for the MSE on a ``prediction_type`` output.

    ``alpha`` and ``sigma`` are the process' values at the samples' times (``process.alpha_sigma(t)``,
    float64); the weight has their shape and dtype.

    The weight on the x0 error is ``min(SNR, gamma)``; the error of another prediction maps to the x0
    error by a factor ``sigma / d`` (see :func:`to_x0_eps`), so its weight is
    ``min(alpha^2, gamma sigma^2) / d^2`` with ``d`` = alpha (eps), sigma (x0), alpha^2 + sigma^2 (v),
    alpha + sigma (flow) or ``sqrt(sigma^2 + alpha^2 sigma_data^2) / sigma_data`` (edm). On a VP process
    this is the paper's ``min(SNR, gamma) / SNR`` (eps), ``min(SNR, gamma) / (SNR + 1)`` (v) and
    ``min(SNR, gamma)`` (x0); written this way it stays finite
    where SNR is 0 or infinite (except eps at alpha = 0, which :func:`check_prediction_type` refuses).
    Raises ValueError for an unknown prediction type.
    """
    check_prediction_type(prediction_type)
    if prediction_type == "x0":  # min(SNR, gamma) itself, gamma at sigma = 0
        return ((alpha / sigma) ** 2).clamp(max=gamma)
    clipped = torch.minimum(alpha**2, gamma * sigma**2)
    return clipped / _x0_error_scale(alpha, sigma, prediction_type, sigma_data) ** 2


def edm_weight(
    alpha: torch.Tensor, sigma: torch.Tensor, prediction_type: PredictionType, sigma_data: float = 1.0
) -> torch.Tensor:
    """EDM loss weight (Karras et al. 2022, Table 1) for the MSE on a ``prediction_type`` output.

    ``alpha`` and ``sigma`` as in :func:`min_snr_weight`; the weight has their shape and dtype.

    EDM weights the x0 error by ``lambda = (sigma_ve^2 + sigma_data^2) / (sigma_ve sigma_data)^2``
    ``= n^2 / (sigma sigma_data)^2`` with ``n^2 = sigma^2 + alpha^2 sigma_data^2``; mapped to an output of
    ``prediction_type`` (see :func:`min_snr_weight`) that is ``n^2 / (sigma_data d)^2``, which is 1 for
    the edm output F (``lambda c_out^2 = 1``: EDM's loss is uniform on F) and ``lambda`` for x0.
    Raises ValueError for an unknown prediction type.
    """
    check_prediction_type(prediction_type)
    if prediction_type == "edm":
        return torch.ones_like(alpha)
    d = _x0_error_scale(alpha, sigma, prediction_type, sigma_data)
    return edm_norm(alpha, sigma, sigma_data) ** 2 / (sigma_data * d) ** 2
