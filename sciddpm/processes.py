"""The non-VP noise processes (VE, EDM, rectified flow) and :func:`make_process`, by name.

Each is a :class:`~sciddpm.diffusion.NoiseProcess` on t in [0, 1]; the VP process
is :class:`~sciddpm.diffusion.VPSchedule`. Samplers see only the VE-equivalent
noise level ``sigma / alpha``, so any sampler drives any process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from sciddpm.diffusion import NoiseProcess, TimeLike, VPSchedule, _like, _wide

__all__ = ["EDM", "VE", "ProcessName", "RectifiedFlow", "make_process"]

ProcessName = Literal["vp", "ve", "edm", "flow"]


@dataclass(frozen=True)
class VE(NoiseProcess):
    """Variance exploding: alpha = 1, ``sigma = sigma_min (sigma_max / sigma_min)^t`` (Song et al. 2021)."""

    sigma_min: float = 0.01
    sigma_max: float = 80.0
    kind: ClassVar[str] = "ve"

    def __post_init__(self) -> None:
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")

    def _alpha_sigma(self, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        t = _wide(t)
        return torch.ones_like(t), self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def t_from_log_snr(self, log_snr: TimeLike) -> torch.Tensor:
        lam = _wide(log_snr)
        t = (-lam / 2 - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)
        return _like(t.clamp(0, 1), log_snr)


@dataclass(frozen=True)
class EDM(NoiseProcess):
    """Karras et al. 2022: ``alpha = 1``, ``sigma(t) = sigma_max t^rho``, so uniform t is their Eq. 5 spacing.

    ``sigma(0) = 0``; ``rho = 7`` and ``sigma_max = 80`` are their Table 1 values.
    """

    sigma_max: float = 80.0
    rho: float = 7.0
    kind: ClassVar[str] = "edm"

    def __post_init__(self) -> None:
        if not (self.sigma_max > 0 and self.rho > 0):
            raise ValueError(f"need sigma_max > 0 and rho > 0, got {self.sigma_max}, {self.rho}")

    def _alpha_sigma(self, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        t = _wide(t)
        return torch.ones_like(t), self.sigma_max * t**self.rho

    def t_from_log_snr(self, log_snr: TimeLike) -> torch.Tensor:
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
        return True

    def _alpha_sigma(self, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        t = _wide(t)
        return 1 - t, t

    def t_from_log_snr(self, log_snr: TimeLike) -> torch.Tensor:
        return _like(torch.sigmoid(-_wide(log_snr) / 2), log_snr)  # sigma / alpha = t / (1 - t)


def make_process(name: ProcessName = "vp", **params: Any) -> NoiseProcess:
    """The process ``name`` ("vp", "ve", "edm", "flow") built with ``params`` (its dataclass fields)."""
    classes: dict[str, type[NoiseProcess]] = {"vp": VPSchedule, "ve": VE, "edm": EDM, "flow": RectifiedFlow}
    if name not in classes:
        raise ValueError(f"process must be one of {sorted(classes)}, got {name!r}")
    return classes[name](**params)
