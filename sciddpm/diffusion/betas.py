"""DDPM's discrete beta schedules as diffusers computes them, read as a VP process in continuous time.

A model trained in diffusers saw ``x_i = sqrt(alpha_bar[i]) x0 + sqrt(1 - alpha_bar[i]) eps`` at the
integer timesteps ``i = 0..T-1``, with ``alpha_bar`` the cumulative product of ``1 - beta`` (Ho et al.
2020, Eq. 4). sciddpm's continuous times read index ``i`` as ``t = (i + 1) / T``
(:func:`sciddpm.diffusion.spacing.sampling_times`), so :class:`AlphaTable` holds ``alpha(t)`` on the
grid ``t = 0, 1/T, ..., 1`` (``alpha(0) = 1``) and interpolates ``alpha`` linearly in between, which is
monotone, continuous and exactly invertible. The betas are computed in float32, as diffusers does,
so grid values agree with diffusers' ``alphas_cumprod`` to the last bit before widening to float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["AlphaTable", "BetaSchedule", "discrete_alpha_bar"]

BetaSchedule = Literal["linear", "scaled_linear", "cosine"]


def discrete_alpha_bar(
    schedule: BetaSchedule, beta_start: float, beta_end: float, steps: int, zero_terminal_snr: bool = False
) -> torch.Tensor:
    """``alpha_bar[i]``, ``i = 0..steps-1``, float64 ``(steps,)``: diffusers' ``alphas_cumprod``.

    - ``linear``: betas evenly spaced from ``beta_start`` to ``beta_end`` (Ho et al. 2020);
    - ``scaled_linear``: their square roots evenly spaced (latent diffusion, Stable Diffusion);
    - ``cosine``: ``beta_i = min(1 - f((i + 1) / T) / f(i / T), 0.999)`` with
      ``f(t) = cos^2((t + 0.008) / 1.008 pi / 2)`` (Nichol & Dhariwal 2021, Eq. 17; diffusers'
      ``squaredcos_cap_v2``); ``beta_start`` and ``beta_end`` are unused.

    ``zero_terminal_snr`` rescales ``sqrt(alpha_bar)`` so its last value is 0 and its first unchanged
    (Lin et al. 2024, Algorithm 1; diffusers' ``rescale_betas_zero_snr``); the last value is 0, as
    in diffusers' DDPM/DDIM (its Euler, Heun, DPM-Solver and UniPC store ``2**-24`` there).
    Raises ValueError for an unknown schedule, ``steps < 1`` or betas outside (0, 1).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float32)
    elif schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float32) ** 2
    elif schedule == "cosine":

        def f(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor(
            [min(1 - f((i + 1) / steps) / f(i / steps), 0.999) for i in range(steps)], dtype=torch.float32
        )
    else:
        raise ValueError(f"schedule must be 'linear', 'scaled_linear' or 'cosine', got {schedule!r}")
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError(
            f"the {schedule} betas from beta_start={beta_start} to beta_end={beta_end} leave (0, 1); "
            "betas are per-step noise variances, e.g. 1e-4 to 0.02"
        )
    alpha_bar = torch.cumprod(1.0 - betas, dim=0)
    if zero_terminal_snr:
        # diffusers rescales sqrt(alpha_bar), turns it back into betas and multiplies them again.
        root = alpha_bar.sqrt()
        first, last = root[0].clone(), root[-1].clone()
        rescaled = ((root - last) * (first / (first - last))) ** 2
        betas = 1.0 - torch.cat([rescaled[:1], rescaled[1:] / rescaled[:-1]])
        alpha_bar = torch.cumprod(1.0 - betas, dim=0)
    return alpha_bar.double()


@dataclass(frozen=True)
class AlphaTable:
    """``alpha(t)`` from a table on ``t = k / T``, ``k = 0..T``, linear in between; and its inverse.

    ``alpha`` is a decreasing float64 ``(T + 1,)`` tensor with ``alpha[0] = 1``.
    """

    alpha: torch.Tensor

    @classmethod
    def from_alpha_bar(cls, alpha_bar: torch.Tensor) -> AlphaTable:
        """The table of ``(1, sqrt(alpha_bar[0]), ..., sqrt(alpha_bar[T-1]))``."""
        return cls(torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar.double().clamp(min=0).sqrt()]))

    @property
    def steps(self) -> int:
        """The number T of intervals of the grid."""
        return len(self.alpha) - 1

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        """``alpha(t)`` for float64 times ``t`` in [0, 1] (clamped), shaped like ``t``."""
        table = self.alpha.to(t.device, t.dtype)  # float32 on MPS, which has no float64
        pos = t.clamp(0, 1) * self.steps
        k = pos.floor().clamp(max=self.steps - 1)
        w = pos - k
        k = k.long()
        return table[k] * (1 - w) + table[k + 1] * w

    def time_of(self, alpha: torch.Tensor) -> torch.Tensor:
        """The time ``t`` in [0, 1] with ``alpha(t) = alpha`` (clamped to the table's range)."""
        table = self.alpha.to(alpha.device, alpha.dtype)
        # searchsorted needs ascending values: search the reversed table.
        ascending = table.flip(0)
        j = torch.searchsorted(ascending, alpha.clamp(float(table[-1]), 1.0).contiguous())
        j = j.clamp(1, self.steps)  # ascending[j - 1] <= alpha <= ascending[j]
        lo, hi = ascending[j - 1], ascending[j]
        w = torch.where(hi > lo, (alpha - lo) / (hi - lo), torch.zeros_like(alpha))
        # ascending index j is table index T - j: t goes from (T - j + 1) / T at lo to (T - j) / T at hi.
        k = (self.steps - j).to(torch.float64)
        return ((k + 1) - w) / self.steps
