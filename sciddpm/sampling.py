"""Run any registered scheduler on a plain callable ``model(x_t, t) -> prediction``.

For researchers' own models and closed-form denoisers (the benchmarks use it):
no Denoiser, Conditioner or Pipeline needed, same seeding as ``Pipeline.sample``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from sciddpm.gaussian import GaussianStart, carry, correct_first, initial_x
from sciddpm.interfaces import PredictionType, Scheduler
from sciddpm.pipeline import _child_seed, noise_for

__all__ = ["sample_callable"]


def sample_callable(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor | Sequence[int],
    scheduler: str | Mapping[str, Any] | Scheduler = "dpmpp_2m",
    steps: int = 10,
    prediction_type: PredictionType = "eps",
    *,
    process: str | None = None,
    seed: int = 0,
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    start: GaussianStart | None = None,
    **params: Any,
) -> torch.Tensor:
    """Sample with ``scheduler`` (a registry name, spec or instance) and ``model(x_t, t) -> prediction``.

    ``x`` is the initial ``x_t`` at ``timesteps[0]`` (batch first), or a batch shape ``(B, C, ...)``,
    in which case sample ``i`` starts from the noise of ``Pipeline.sample`` for ``(seed, i)``, times
    the scheduler's ``init_noise_sigma``. ``t`` is a ``(B,)`` tensor of continuous times in [0, 1]
    (``scheduler.process.sigma(t)`` etc. give the noise level). ``process`` ("vp", "ve", "edm", "flow")
    and ``params`` configure a scheduler given by name. Stochastic steps draw per-sample noise
    seeded by ``(seed, i)``, so a sample does not depend on the batch size. ``callback(step, x_t, x0)``
    sees the x0 estimate of every model evaluation. ``model`` receives the raw ``x_t``: input
    scaling such as EDM's ``c_in`` is the model's own business here, unlike in ``Pipeline.sample``.
    With a ``start`` (:class:`~sciddpm.gaussian.GaussianStart`), the noise is drawn for t = 1 (a given
    ``x`` is the ``x_t`` at t = 1) and carried analytically to ``timesteps[0]``, at no evaluation,
    then corrected by the first evaluation (:meth:`~sciddpm.gaussian.GaussianStart.correct`).
    """
    sched = _build(scheduler, process, params)
    sched.check_prediction_type(prediction_type)
    sched.set_timesteps(steps)
    if isinstance(x, torch.Tensor):
        n = len(x)
        if start is not None:
            x = carry(start, sched, x)
    else:
        shape = tuple(int(s) for s in x)
        n = shape[0]
        x = initial_x(start, sched, noise_for(shape[1:], seed, 0, n))
    generators = [torch.Generator().manual_seed(_child_seed(seed, i, 1)) for i in range(n)]
    for i, t in enumerate(sched.timesteps):
        out = model(x, torch.full((n,), float(t), dtype=x.dtype, device=x.device))
        if i == 0 and start is not None:
            x, out = correct_first(start, sched, x, out, prediction_type)
        noise = None
        if sched.stochastic:
            noise = torch.stack([torch.randn(x.shape[1:], generator=g) for g in generators]).to(x)
        result = sched.step(out, i, x, prediction_type, noise=noise)
        x = result.prev_sample
        if callback is not None:
            callback(i, x, result.x0)
    return x


def _build(scheduler: str | Mapping[str, Any] | Scheduler, process: str | None, params: dict) -> Scheduler:
    if isinstance(scheduler, Scheduler):
        if process is not None or params:
            raise ValueError("process and scheduler parameters go with a scheduler name, not an instance")
        return scheduler
    from sciddpm.config import ComponentSpec
    from sciddpm.registry import get_registry

    spec = ComponentSpec.coerce(scheduler)
    extra = dict(params)
    if process is not None:
        extra["process"] = process
    return get_registry().build("scheduler", spec.type, **{**spec.params, **extra})
