"""The one wrapper that makes a network the denoiser ``D(x_t, t) = E[x0 | x_t]``, in training and sampling.

A network trained on a scheduler's process sees its input scaled by ``c_in(t)`` and its noise
level as ``c_noise(t)``, and its output F of a given prediction type maps to the clean-data
estimate as ``x0 = c_skip x_t + c_out F`` (Karras et al. 2022, Eq. 7 and Table 1; k-diffusion's
``Denoiser`` wrapper). :class:`Preconditioned` owns all four, classifier-free guidance (Ho &
Salimans 2022) with its optional noise-level interval (Kynkäänniemi et al. 2024), and the training
loss on the same output. The trainer, ``Pipeline.sample``, ``sample_callable``, timestep
optimisation and tiled generation all go through it, so the network is called one way everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from sciddpm.diffusion.parametrization import per_sample
from sciddpm.diffusion.processes import NoiseProcess
from sciddpm.interfaces import Conditioning, PredictionType, Scheduler

__all__ = ["Preconditioned", "check_guidance_interval"]

#: ``network(x_in, c_noise, cond) -> F``: a Denoiser, or a raw ``model(x_t, t) -> F`` when ``raw``.
Network = Callable[..., torch.Tensor]


def check_guidance_interval(interval: Any) -> tuple[float, float] | None:
    """``interval`` as a pair ``(lo, hi)`` of noise levels ``sigma / alpha`` with ``0 <= lo < hi``, or None.

    Raises ValueError naming the value otherwise.
    """
    if interval is None:
        return None
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(
            f"guidance_interval must be a pair (lo, hi) of noise levels, got {interval!r}"
        ) from None
    if not 0 <= lo < hi:
        raise ValueError(
            f"guidance_interval must be (lo, hi) with 0 <= lo < hi in sigma / alpha, got ({lo}, {hi})"
        )
    return lo, hi


class Preconditioned:
    """A network as the denoiser of a scheduler's process: ``x0 = c_skip x_t + c_out F(c_in x_t, c_noise)``.

    ``network`` is a :class:`~sciddpm.interfaces.Denoiser` (called ``network(c_in(t) x_t,
    c_noise(t), cond)``) predicting ``prediction_type``, trained on ``scheduler``'s process; with
    ``raw=True`` it is a plain ``model(x_t, t) -> F`` that does its own input scaling
    (``sample_callable``'s contract). ``x_t`` is ``(B, C, *spatial)`` in model space, ``t`` a ``(B,)``
    tensor of times; the network sees them in ``x_t``'s dtype and device, the conversions use them
    in full precision. When the times belong to another process of the same family, ``times``
    (a sampling scheduler with other schedule parameters: EDM's ``rho``, a VP schedule), each is
    mapped to the network's process through its noise level ``sigma / alpha``, at which ``x_t``
    means the same within a family. Raises ValueError when the scheduler's process cannot drive
    ``prediction_type`` (eps-prediction where alpha reaches 0) or ``times`` is of another family.
    """

    def __init__(
        self,
        network: Network,
        scheduler: Scheduler,
        prediction_type: PredictionType,
        *,
        raw: bool = False,
        times: NoiseProcess | None = None,
    ) -> None:
        scheduler.check_prediction_type(prediction_type)
        process = scheduler.process
        if times is not None and times.kind != process.kind:
            raise ValueError(
                f"the network was trained on the {process.kind!r} process and cannot be sampled on the "
                f"{times.kind!r} process: x_t means something else there; sample on {process.kind!r}"
            )
        self.network = network
        self.scheduler = scheduler
        self.prediction_type = prediction_type
        self.raw = raw
        self.times = None if times is None or times == process else times

    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` as a time of the network's process (the same noise level ``sigma / alpha``)."""
        if self.times is None:
            return t
        return self.scheduler.process.t_from_sigma_ve(self.times.sigma_ve(t))

    def output(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        """The network's output F ``(B, C, *spatial)`` at ``(x_t, t)`` (network times), in F's units."""
        t_in = t.to(device=x_t.device, dtype=x_t.dtype)
        if self.raw:
            return self.network(x_t, t_in)
        # c_in scales the network input only; targets and solver steps see x_t itself.
        c_in = per_sample(self.scheduler.c_in(t_in), x_t)
        return self.network(x_t * c_in, self.scheduler.c_noise(t_in), cond)

    def guided_output(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning,
        null: Conditioning,
        scale: float,
        interval: tuple[float, float] | None = None,
    ) -> torch.Tensor:
        """Classifier-free guidance ``F_null + scale (F_cond - F_null)`` (Ho & Salimans 2022, Eq. 6).

        Both outputs come from one call on the batch stacked as (null, cond). With an ``interval``
        ``(lo, hi)`` only samples whose noise level ``sigma / alpha`` lies in it are guided, the
        others get the conditional output (Kynkäänniemi et al. 2024); where no sample is guided
        the network runs once, on the conditional batch alone.
        """
        guided = self._in_interval(t, interval)
        if not bool(guided.any()):
            return self.output(x_t, t, cond)
        pair = Conditioning.cat([null, cond])
        uncond, cond_out = self.output(torch.cat([x_t, x_t]), torch.cat([t, t]), pair).chunk(2)
        out = uncond + scale * (cond_out - uncond)
        if bool(guided.all()):
            return out
        return torch.where(per_sample(guided.to(out.device), out), out, cond_out)

    def x0(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The clean-data estimate ``(B, C, *spatial)`` of a network ``output`` at ``(x_t, t)``."""
        sched = self.scheduler
        return sched.process.to_x0_eps(output, x_t, t, self.prediction_type, sched.sigma_data)[0]

    def __call__(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning | None = None,
        *,
        null: Conditioning | None = None,
        guidance_scale: float = 1.0,
        guidance_interval: tuple[float, float] | None = None,
    ) -> torch.Tensor:
        """``D(x_t, t) = E[x0 | x_t]``, ``(B, C, *spatial)``; guided when ``null`` is given, scale != 1."""
        t = self.network_time(t)
        if null is not None and cond is not None and guidance_scale != 1.0:
            out = self.guided_output(x_t, t, cond, null, guidance_scale, guidance_interval)
        else:
            out = self.output(x_t, t, cond)
        return self.x0(out, x_t, t)

    def loss(
        self,
        output: torch.Tensor,
        x0: torch.Tensor,
        eps: torch.Tensor,
        t: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weighted mean loss, per-sample loss (B,))`` of ``output`` at ``x_t = add_noise(x0, eps, t)``.

        The per-sample loss is the mean squared error against the scheduler's target for the
        prediction type (Ho et al. 2020, Eq. 14, and its x0/v/flow/edm analogues), over the values
        where ``mask`` (shaped like ``x0``, 1 = valid) is positive, weighted by the mask; the mean
        loss weights each sample by the scheduler's ``loss_weight`` (min-SNR, EDM). Computed in
        float32 whatever the autocast dtype of ``output``.
        """
        sched = self.scheduler
        target = sched.target(x0, eps, t, self.prediction_type)
        err = F.mse_loss(output.float(), target.float(), reduction="none")
        if mask is not None:
            # Missing values carry zero weight; each sample is normalised by its valid count.
            per = (err * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)
        else:
            per = err.flatten(1).mean(1)
        weighted = per * sched.loss_weight(t, self.prediction_type)
        return weighted.mean(), per.detach()

    def _in_interval(self, t: torch.Tensor, interval: tuple[float, float] | None) -> torch.Tensor:
        if interval is None:
            return torch.ones(t.shape, dtype=torch.bool)
        lo, hi = interval
        sigma = self.scheduler.process.alpha_sigma(t)  # float64: edges decided as the schedule says
        sigma_ve = (sigma[1] / sigma[0]).cpu()
        return (sigma_ve >= lo) & (sigma_ve <= hi)
