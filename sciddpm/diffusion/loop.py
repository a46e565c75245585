"""The one sampling loop, and ``sample_callable``: any registered scheduler on a plain model.

:func:`run` steps a scheduler from an initial ``x_t`` with a denoiser ``D(x_t, t) -> x0``; it is
the loop behind ``Pipeline.sample``, :func:`sample_callable`, timestep optimisation
(:mod:`sciddpm.diffusion.timesteps`) and tiled generation. It draws each sample's step noise from
its own seeded stream (:mod:`sciddpm.seeding`), so a sample does not depend on the batch it is in,
and applies a Gaussian start's first-step correction (:mod:`sciddpm.diffusion.gaussian`).
:func:`sample_callable` is for researchers' own models and closed-form denoisers (the benchmarks
use it): no Denoiser, Conditioner or Pipeline needed, the same seeding as ``Pipeline.sample``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch

from sciddpm import seeding
from sciddpm.diffusion.gaussian import GaussianStart, carry, correct_first, initial_x
from sciddpm.diffusion.preconditioning import Preconditioned
from sciddpm.interfaces import PredictionType, Scheduler
from sciddpm.spec import ComponentSpec

__all__ = ["build_scheduler", "run", "sample_callable"]

#: ``denoise(x_t, t) -> x0``: ``x_t (B, C, *spatial)`` and ``t (B,)`` (float64) in, the x0 estimate out.
Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``callback(step, x_t, x0)``: the state after a step and the x0 estimate it was made with.
Callback = Callable[[int, torch.Tensor, torch.Tensor], None]


class Progress(Protocol):
    """What :func:`run` reports to: a tqdm bar, or anything with ``update(n)``."""

    def update(self, n: int = 1) -> Any:
        """Count ``n`` more model evaluations done."""


def run(
    denoise: Denoise,
    scheduler: Scheduler,
    x: torch.Tensor,
    *,
    seed: int,
    indices: Sequence[int],
    start: GaussianStart | None = None,
    callback: Callback | None = None,
    progress: Progress | None = None,
    step_noise: Callable[[int], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Step ``scheduler`` (``set_timesteps`` already called) from ``x``, the ``x_t`` at ``timesteps[0]``.

    ``x`` is ``(B, C, *spatial)`` in model space; ``denoise(x_t, t) -> x0`` is evaluated once per
    entry of ``scheduler.timesteps``, with ``t`` a ``(B,)`` float64 CPU tensor of that time; every step
    continues from the ``x_t`` the last one returned (edit it in ``callback`` to steer the run).
    Row ``j`` is sample ``indices[j]`` of the seeded run ``seed``: a stochastic scheduler's noise
    for it comes from the :data:`~sciddpm.seeding.STEP_NOISE` stream at that index, or, with
    ``step_noise``, is ``step_noise(i)`` (unit noise like ``x`` for step ``i``). With a
    ``start`` the first evaluation also corrects the carried start
    (:func:`~sciddpm.diffusion.gaussian.correct_first`). Returns the final sample, like ``x``.
    Raises ValueError when ``indices`` does not give one index per row.
    """
    n = len(x)
    if len(indices) != n:
        raise ValueError(f"got {len(indices)} sample indices for a batch of {n}")
    generators = [seeding.generator(seeding.STEP_NOISE, seed, i) for i in indices]
    for i, t in enumerate(scheduler.timesteps):
        # The exact (float64, CPU) time: the denoiser gives the network x_t's dtype, and decides
        # guidance intervals and conversions on the schedule's own values.
        x0 = denoise(x, torch.full((n,), float(t), dtype=torch.float64))
        if i == 0 and start is not None:
            x, x0 = correct_first(start, scheduler, x, x0)
        noise = None
        if scheduler.stochastic and step_noise is not None:
            noise = step_noise(i).to(x)
        elif scheduler.stochastic:
            noise = torch.stack([torch.randn(x.shape[1:], generator=g) for g in generators]).to(x)
        result = scheduler.step(x0, i, x, "x0", noise=noise)
        x = result.prev_sample
        if callback is not None:
            callback(i, x, result.x0)
        if progress is not None:
            progress.update(1)
    return x


def build_scheduler(
    scheduler: str | Mapping[str, Any] | Scheduler, process: str | None = None, **params: Any
) -> Scheduler:
    """A scheduler from a registry name, a ``{"type": ...}`` spec or an instance (returned as is).

    ``process`` ("vp", "ve", "edm", "flow") and ``params`` complete a name or spec. Raises
    ValueError when they are given with an instance, and the registry's errors for an unknown
    name or parameter.
    """
    if isinstance(scheduler, Scheduler):
        if process is not None or params:
            raise ValueError("process and scheduler parameters go with a scheduler name, not an instance")
        return scheduler
    from sciddpm.registry import get_registry

    spec = ComponentSpec.coerce(scheduler)
    extra = dict(params)
    if process is not None:
        extra["process"] = process
    return get_registry().build("scheduler", spec.type, **{**spec.params, **extra})


def sample_callable(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor | Sequence[int],
    scheduler: str | Mapping[str, Any] | Scheduler = "dpmpp_2m",
    steps: int = 10,
    prediction_type: PredictionType = "eps",
    *,
    process: str | None = None,
    seed: int = 0,
    callback: Callback | None = None,
    start: GaussianStart | None = None,
    **params: Any,
) -> torch.Tensor:
    """Sample with ``scheduler`` (a registry name, spec or instance) and ``model(x_t, t) -> prediction``.

    ``x`` is the initial ``x_t`` at ``timesteps[0]`` (batch first), or a batch shape ``(B, C, ...)``,
    in which case sample ``i`` starts from the noise of ``Pipeline.sample`` for ``(seed, i)``, times
    the scheduler's ``init_noise_sigma``. ``t`` is a ``(B,)`` tensor (in ``x``'s dtype and device)
    of continuous times in [0, 1]
    (``scheduler.process.sigma(t)`` etc. give the noise level). ``process`` ("vp", "ve", "edm", "flow")
    and ``params`` configure a scheduler given by name. Stochastic steps draw per-sample noise
    seeded by ``(seed, i)``, so a sample does not depend on the batch size. ``callback(step, x_t, x0)``
    sees the x0 estimate of every model evaluation. ``model`` receives the raw ``x_t``: input
    scaling such as EDM's ``c_in`` is the model's own business here, unlike in ``Pipeline.sample``;
    a model that returns the x0 estimate itself takes ``prediction_type="x0"``.
    With a ``start`` (:class:`~sciddpm.diffusion.gaussian.GaussianStart`), the noise is drawn for
    t = 1 (a given ``x`` is the ``x_t`` at t = 1) and carried analytically to ``timesteps[0]``, at no
    evaluation, then corrected by the first evaluation. Returns the final samples, shaped like the
    initial ``x_t``. Raises ValueError for a prediction type the scheduler's process cannot drive,
    and the registry's errors for an unknown scheduler or parameter.
    """
    sched = build_scheduler(scheduler, process, **params)
    denoise = Preconditioned(model, sched, prediction_type, raw=True)
    sched.set_timesteps(steps)
    if isinstance(x, torch.Tensor):
        n = len(x)
        if start is not None:
            x = carry(start, sched, x)
    else:
        shape = tuple(int(s) for s in x)
        n = shape[0]
        x = initial_x(start, sched, seeding.noise_for(shape[1:], seed, 0, n))
    return run(denoise, sched, x, seed=seed, indices=range(n), start=start, callback=callback)
