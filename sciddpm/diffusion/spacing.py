"""Step spacings: where a sampling run of N steps puts its noise levels.

:func:`sampling_times` picks N of DDPM's T discrete training times the way diffusers' schedulers do
(``leading``, ``trailing``, ``linspace``; Lin et al. 2024, Sec. 3.3); :func:`karras_sigmas` and
:func:`log_snr_sigmas` space VE-equivalent noise levels ``sigma = sigma_t / alpha_t``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

__all__ = ["LOG_SNR_MIN", "Spacing", "karras_sigmas", "log_snr_sigmas", "sampling_times"]

Spacing = Literal["leading", "trailing", "linspace"]
#: Sampling starts no noisier than this log-SNR (the floor of the cosine VP schedule), so processes
#: with alpha(1) = 0 (rectified flow, zero terminal SNR) start at a finite sigma / alpha.
LOG_SNR_MIN = -20.0


def sampling_times(train_steps: int, steps: int, spacing: Spacing) -> torch.Tensor:
    """``steps`` decreasing float64 times in {1..T}/T: diffusers' spacings, index i read as t = (i + 1) / T.

    Raises ValueError unless ``1 <= steps <= train_steps`` and for an unknown spacing.
    """
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


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> list[float]:
    """``n`` levels from sigma_max to sigma_min, uniform in ``sigma^(1/rho)`` (Karras et al. 2022, Eq. 5)."""
    if n == 1:
        return [sigma_max]
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return [(hi + i / (n - 1) * (lo - hi)) ** rho for i in range(n)]


def log_snr_sigmas(n: int, sigma_min: float, sigma_max: float) -> list[float]:
    """``n`` noise levels uniform in log-SNR, i.e. in ``log sigma`` (Lu et al. 2022, Sec. 3.3 "logSNR")."""
    if n == 1:
        return [sigma_max]
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    return [math.exp(hi + i / (n - 1) * (lo - hi)) for i in range(n)]
