"""The registered schedulers: DDPM, DDIM and the solvers of :mod:`sciddpm.diffusion.solvers`.

Each scheduler is a noise process (:mod:`sciddpm.diffusion.processes`), its training side (times,
targets, loss weights, the denoiser's input scale) and a discretisation behind the diffusers-style
``set_timesteps`` / ``step`` interface; its configuration is in
:mod:`sciddpm.diffusion.scheduler_configs`. DDPM and DDIM run the VP process on DDPM's discrete
times ``t in {1, ..., T} / T``; the solver schedulers (``euler``, ``heun``, ``dpmpp_2m``, ...) put a
solver behind ``step`` on any process. All sample on a decreasing grid whose last step lands on
t = 0, where the returned ``prev_sample`` is the clean x0 estimate. Every ``step`` continues from
the ``x_t`` it is given, so an edit between steps (inpainting, tiling) is kept by every scheduler.
Sampling noise is drawn on the generator's device (CPU by default) and moved to the sample's
device, so seeded runs agree across devices. Nothing is clipped or thresholded.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from sciddpm.diffusion.parametrization import check_prediction_type, edm_weight, min_snr_weight
from sciddpm.diffusion.processes import VP, NoiseProcess
from sciddpm.diffusion.scheduler_configs import (
    DDIMConfig,
    DDPMConfig,
    DiscreteConfig,
    DPMpp2MSDEConfig,
    DPMpp3MConfig,
    EulerAncestralConfig,
    HeunConfig,
    LossWeightingConfig,
    SolverConfig,
    UniPCConfig,
    process_of,
)
from sciddpm.diffusion.solvers import SOLVERS, Solver, ddim_step, ddpm_step, evaluation_sigmas
from sciddpm.diffusion.spacing import LOG_SNR_MIN, karras_sigmas, log_snr_sigmas, sampling_times
from sciddpm.interfaces import PredictionType, Scheduler, StepOutput

__all__ = [
    "DDIM",
    "DDPM",
    "DPMpp2M",
    "DPMpp2MSDE",
    "DPMpp3M",
    "Euler",
    "EulerAncestral",
    "Heun",
    "UniPC",
    "step_noise",
]


class _Weighted(Scheduler):
    """Loss weight, input scale and prediction conversions on the scheduler's ``process``, with the
    config's ``loss_weighting`` and ``sigma_data``."""

    config: LossWeightingConfig
    process: NoiseProcess

    @property
    def sigma_data(self) -> float:  # type: ignore[override]
        """The data std of EDM preconditioning. Raises ValueError while it is 'auto' (not yet estimated)."""
        value = self.config.sigma_data
        if value == "auto":
            raise ValueError(
                "sigma_data='auto' is estimated from the data by Pipeline.from_config(config, source); "
                "give a number when building a scheduler on its own"
            )
        return float(value)

    def loss_weight(self, t: torch.Tensor, prediction_type: PredictionType | None = None) -> torch.Tensor:
        """Per-sample loss weight ``(B,)`` at ``t``: 1, min-SNR-gamma or EDM's, for a ``prediction_type``
        output.

        Raises ValueError when the weighting needs the prediction type and none is given.
        """
        weighting = self.config.loss_weighting
        if weighting == "uniform":
            return torch.ones_like(t)
        if prediction_type is None:
            raise ValueError(
                f"loss_weighting={weighting!r} depends on the denoiser's prediction type; "
                "call loss_weight(t, prediction_type)"
            )
        alpha, sigma = self.process.alpha_sigma(t)
        if weighting == "edm":
            weight = edm_weight(alpha, sigma, prediction_type, self.sigma_data)
        else:
            weight = min_snr_weight(alpha, sigma, prediction_type, self.config.min_snr_gamma, self.sigma_data)
        return weight.to(t.dtype) if t.is_floating_point() else weight

    def c_in(self, t: torch.Tensor) -> torch.Tensor:
        """EDM's input scale ``1 / sqrt(sigma^2 + alpha^2 sigma_data^2)`` (1 on VP with sigma_data = 1)."""
        return self.process.c_in(t, self.sigma_data)

    def target(
        self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, prediction_type: PredictionType
    ) -> torch.Tensor:
        """The regression target of a ``prediction_type`` denoiser, shaped like ``x0``.

        See :meth:`~sciddpm.diffusion.processes.NoiseProcess.target`.
        """
        return self.process.target(x0, eps, t, prediction_type, self.sigma_data)

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t = alpha(t) x0 + sigma(t) eps`` on this scheduler's process; ``t`` is ``(B,)`` or a scalar."""
        return self.process.add_noise(x0, eps, t)

    def check_prediction_type(self, prediction_type: str) -> None:
        """Raise ValueError if the process cannot drive a ``prediction_type`` denoiser.

        That is eps-prediction on a process whose alpha reaches 0 (zero terminal SNR, rectified flow).
        """
        check_prediction_type(prediction_type, self.process.zero_terminal_snr)

    def _to_x0_eps(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | float, prediction_type: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.process.to_x0_eps(model_output, x_t, t, prediction_type, self.sigma_data)


class _Scheduler(_Weighted):
    """The training side every built-in scheduler shares, on the process its config describes."""

    config: DiscreteConfig | SolverConfig

    def __init__(self, config: DiscreteConfig | SolverConfig) -> None:
        self.config = config
        self.process = process_of(config)
        self.timesteps = torch.empty(0, dtype=torch.float64)

    def sample_t(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training times ``(batch_size,)``: VP uniform in {1..T}/T (Ho et al. 2020, Algorithm 1); EDM
        log-normal sigma (Karras et al. 2022, Table 1); VE and flow uniform in [0, 1]."""
        device = generator.device if generator is not None else "cpu"
        dtype = torch.get_default_dtype()
        kind = self.process.kind
        if kind == "vp":
            T = self.config.train_steps
            return torch.randint(1, T + 1, (batch_size,), generator=generator, device=device).to(dtype) / T
        if kind == "edm":
            log_sigma = -1.2 + 1.2 * torch.randn(
                batch_size, generator=generator, device=device, dtype=torch.float64
            )
            return self.process.t_from_sigma_ve(log_sigma.exp()).to(dtype)
        return torch.rand(batch_size, generator=generator, device=device, dtype=dtype)

    def c_noise(self, t: torch.Tensor) -> torch.Tensor:
        """The denoiser's noise input ``(B,)``: ``1000 t`` for VP and flow (DDPM's integer timestep
        scale); ``log(sigma) / 4`` for VE and EDM (Karras et al. 2022, Table 1). With
        ``discrete_betas``, ``1000 (t - 1/T)``: for T = 1000 that is diffusers' timestep index
        ``i`` of ``t = (i + 1) / T``, so networks move between the libraries unchanged."""
        if self.process.kind == "vp" and getattr(self.config, "discrete_betas", False):
            return 1000 * (t - 1 / self.config.train_steps)
        if self.process.kind in ("vp", "flow"):
            return 1000 * t
        return self.process.sigma(t).log() / 4

    @property
    def init_noise_sigma(self) -> float:  # type: ignore[override]
        """Std of the initial x_t (unit-variance data): ``sqrt(alpha^2 + sigma^2)`` at ``timesteps[0]``."""
        if not len(self.timesteps):
            return 1.0
        alpha, sigma = (v.item() for v in self.process.alpha_sigma(self.timesteps[0]))
        return math.sqrt(alpha**2 + sigma**2)

    def _check_index(self, index: int) -> None:
        n = len(self.timesteps)
        if not 0 <= index < n:
            raise IndexError(f"step index {index} out of range for {n} timesteps; call set_timesteps first")


def step_noise(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``like``, drawn in float32 on the generator's device (CPU
    by default, so seeded runs agree across devices) and moved to ``like``'s device and dtype."""
    device = generator.device if generator is not None else "cpu"
    noise = torch.randn(like.shape, generator=generator, device=device, dtype=torch.float32)
    return noise.to(device=like.device, dtype=like.dtype)


class _Discrete(_Scheduler):
    """DDPM and DDIM: the VP process on T discrete training times, one update of ``x_t`` per step."""

    config: DiscreteConfig
    process: VP

    def __init__(self, config: DiscreteConfig) -> None:
        super().__init__(config)
        self.set_timesteps(config.train_steps)

    def set_timesteps(self, steps: int) -> None:
        """Fill ``timesteps`` with ``steps`` decreasing times in (0, 1] (:func:`sampling_times`).

        Step i goes from ``timesteps[i]`` to ``timesteps[i + 1]``; the last goes to t = 0, so its
        ``prev_sample`` is the x0 estimate itself. Raises ValueError unless ``1 <= steps <= train_steps``.
        """
        self.timesteps = sampling_times(self.config.train_steps, steps, self.config.spacing)
        self.num_inference_steps = steps

    def step(
        self,
        model_output: torch.Tensor,
        index: int,
        x_t: torch.Tensor,
        prediction_type: PredictionType,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> StepOutput:
        """One update of ``x_t`` from ``timesteps[index]`` to the next time; see :meth:`Scheduler.step`.

        Raises IndexError for an index outside ``timesteps``.
        """
        self._check_index(index)
        t = self.timesteps[index].item()
        s = self.timesteps[index + 1].item() if index + 1 < len(self.timesteps) else 0.0
        x0, eps = self._to_x0_eps(model_output, x_t, t, prediction_type)
        if self.stochastic and s > 0 and noise is None:
            noise = step_noise(x_t, generator)
        return StepOutput(self._update(x_t, x0, eps, t, s, noise), x0)

    def _update(
        self,
        x_t: torch.Tensor,
        x0: torch.Tensor,
        eps: torch.Tensor,
        t: float,
        s: float,
        noise: torch.Tensor | None,
    ) -> torch.Tensor:
        raise NotImplementedError


class DDPM(_Discrete):
    """Ancestral sampling with the exact posterior q(x_s | x_t, x0), Ho et al. 2020 (Algorithm 2, Eq. 6-7)."""

    config: DDPMConfig

    def _update(
        self,
        x_t: torch.Tensor,
        x0: torch.Tensor,
        eps: torch.Tensor,
        t: float,
        s: float,
        noise: torch.Tensor | None,
    ) -> torch.Tensor:
        return ddpm_step(self.process, x_t, x0, t, s, noise)


class DDIM(_Discrete):
    """Denoising diffusion implicit models, Song et al. 2021 (Eq. 12); deterministic for eta = 0."""

    config: DDIMConfig

    def __init__(self, config: DDIMConfig) -> None:
        super().__init__(config)
        self.stochastic = config.eta > 0

    def _update(
        self,
        x_t: torch.Tensor,
        x0: torch.Tensor,
        eps: torch.Tensor,
        t: float,
        s: float,
        noise: torch.Tensor | None,
    ) -> torch.Tensor:
        return ddim_step(self.process, x0, eps, t, s, self.config.eta, noise)


class _Solver(_Scheduler):
    """A solver of :mod:`sciddpm.diffusion.solvers` behind the step interface, on any noise process.

    ``timesteps`` lists every time at which the model is evaluated (Heun's intermediate points
    included, as diffusers' HeunDiscreteScheduler does), so one ``step`` is one model evaluation and
    ``len(timesteps)`` is the NFE. Multistep history (past x0 estimates) lives in the solver,
    restarted by step 0; the state ``x`` is the caller's ``x_t`` at every step.
    """

    solver: ClassVar[str]
    options: ClassVar[tuple[str, ...]] = ()
    config: SolverConfig

    def __init__(self, config: SolverConfig) -> None:
        super().__init__(config)
        self.stochastic = self._is_stochastic()
        self.sigmas: list[float] = []
        self._gen: Solver | None = None
        self._next = 0
        self._noise_in: tuple[torch.Tensor | None, torch.Tensor, torch.Generator | None] | None = None

    def _is_stochastic(self) -> bool:
        return False

    def solver_options(self) -> dict[str, object]:
        """The keyword options this scheduler gives its solver (UniPC's ``order``, Heun's churn, ...)."""
        return {name: getattr(self.config, name) for name in self.options}

    def sigma_range(self) -> tuple[float, float]:
        """``(sigma_min, sigma_max)`` of the log_snr/karras spacings, in sigma_t / alpha_t.

        Raises ValueError unless ``0 < sigma_min < sigma_max``.
        """
        c, p = self.config, self.process
        lo = c.sigma_min
        if lo is None:
            lo = 0.002 if c.process == "edm" else p.sigma_ve(1 / c.train_steps).item()
        hi = c.sigma_max
        if hi is None:
            hi = min(p.sigma_ve(1.0).item(), math.exp(-LOG_SNR_MIN / 2))
        if not 0 < lo < hi:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {lo}, {hi}")
        return lo, hi

    def sigmas_for(self, steps: int) -> list[float]:
        """The ``steps + 1`` noise levels sigma_t / alpha_t (decreasing, ending at 0) of ``steps`` steps.

        Raises ValueError when the config's own ``timesteps`` list has another length.
        """
        c, p = self.config, self.process
        lo, hi = self.sigma_range()
        if c.timesteps is not None:
            if steps != len(c.timesteps):
                raise ValueError(
                    f"this scheduler has a user-given list of {len(c.timesteps)} timesteps; "
                    f"sample with steps={len(c.timesteps)}, not {steps}"
                )
            sigmas = p.sigma_ve(torch.tensor(c.timesteps, dtype=torch.float64)).clamp(max=hi).tolist()
        elif c.spacing == "karras":
            sigmas = karras_sigmas(steps, lo, hi, c.rho)
        elif c.spacing == "log_snr":
            sigmas = log_snr_sigmas(steps, lo, hi)
        else:
            t_max = p.t_from_sigma_ve(hi).item()
            sigmas = p.sigma_ve(sampling_times(c.train_steps, steps, c.spacing) * t_max).tolist()
        return [*sigmas, 0.0]

    def set_timesteps(self, steps: int) -> None:
        """Fill ``timesteps`` with the times of every model evaluation of a ``steps``-step run.

        Raises ValueError for ``steps < 1``.
        """
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.sigmas = self.sigmas_for(steps)
        evals = evaluation_sigmas(self.solver, self.sigmas, **self.solver_options())
        shifts = self.config.shifts
        if shifts is not None:
            if len(shifts) != len(evals):
                raise ValueError(
                    f"this scheduler has {len(shifts)} evaluation shifts but {steps} steps make "
                    f"{len(evals)} evaluations; sample with the steps it was fitted for"
                )
            # The model sees each evaluation at the shifted level; `step` keeps x_t in that time's
            # scaling, so the solver's own state x_t / alpha is unchanged (descent.run's D(x, s e^d)).
            evals = [sigma * math.exp(shift) for sigma, shift in zip(evals, shifts, strict=True)]
        self.timesteps = self.process.t_from_sigma_ve(torch.tensor(evals, dtype=torch.float64))
        self.num_inference_steps = steps
        self._gen, self._next = None, 0

    def _noise(self) -> torch.Tensor:
        if self._noise_in is None:
            raise RuntimeError(f"{self.solver} drew noise twice in one step")
        noise, like, generator = self._noise_in
        self._noise_in = None
        if noise is None:
            noise = step_noise(like, generator)
        return noise.to(like)

    def step(
        self,
        model_output: torch.Tensor,
        index: int,
        x_t: torch.Tensor,
        prediction_type: PredictionType,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> StepOutput:
        """One solver update from the caller's ``x_t``; see :meth:`Scheduler.step`.

        Raises IndexError for an index outside ``timesteps`` and RuntimeError for steps out of order.
        """
        self._check_index(index)
        t = self.timesteps[index]
        x = x_t / self.process.alpha(t).item()  # the solvers' VE units
        if index == 0:
            self._gen = SOLVERS[self.solver](x, self.sigmas, self._noise, **self.solver_options())
            next(self._gen)
        elif self._gen is None or index != self._next:
            raise RuntimeError(
                f"{self.solver} steps must run in order 0..{len(self.timesteps) - 1}; got {index}"
            )
        x0, _ = self._to_x0_eps(model_output, x_t, t, prediction_type)
        self._noise_in = (noise, x_t, generator)
        try:
            x_next, _ = self._gen.send((x0, x))
            prev = x_next * self.process.alpha(self.timesteps[index + 1]).item()
        except StopIteration as stop:
            prev, self._gen = stop.value * self.process.alpha(0.0).item(), None
        self._next = index + 1
        return StepOutput(prev, x0)


class Euler(_Solver):
    """Euler on the probability-flow ODE (Karras et al. 2022, Eq. 4); first order, one NFE per step."""

    solver = "euler"


class EulerAncestral(_Solver):
    """Ancestral Euler sampling (k-diffusion's ``sample_euler_ancestral``)."""

    solver = "euler_a"
    options = ("eta", "s_noise")
    config: EulerAncestralConfig

    def _is_stochastic(self) -> bool:
        return self.config.eta > 0


class Heun(_Solver):
    """Heun with churn, Karras et al. 2022 (Algorithm 2) but for long steps; 2 steps - 1 evaluations.

    A step where sigma falls more than 2x is corrected with the exponential trapezoid instead of
    the trapezoid in sigma (:func:`sciddpm.diffusion.solvers.heun` says why and what it costs).
    """

    solver = "heun"
    options = ("s_churn", "s_tmin", "s_tmax", "s_noise")
    config: HeunConfig

    def _is_stochastic(self) -> bool:
        return self.config.s_churn > 0


class DPMpp2M(_Solver):
    """DPM-Solver++(2M), Lu et al. 2022b (Algorithm 2); second order, one NFE per step."""

    solver = "dpmpp_2m"


class DPMpp3M(_Solver):
    """DPM-Solver++(3M), third-order multistep (Lu et al. 2022b); one NFE per step.

    Unsteady steps are second order unless ``lower_order_uneven`` is false
    (:func:`sciddpm.diffusion.solvers.third_order_step`).
    """

    solver = "dpmpp_3m"
    options = ("lower_order_uneven",)
    config: DPMpp3MConfig


class DPMpp2MSDE(_Solver):
    """SDE-DPM-Solver++(2M), Lu et al. 2022b (Appendix); one NFE per step."""

    solver = "dpmpp_2m_sde"
    options = ("eta", "s_noise", "solver_type")
    config: DPMpp2MSDEConfig

    def _is_stochastic(self) -> bool:
        return self.config.eta > 0


class UniPC(_Solver):
    """UniPC with the bh2 corrector, Zhao et al. 2023; order + 1 accuracy at one NFE per step.

    Order 3 takes unsteady steps at order 2 unless ``lower_order_uneven`` is false
    (:func:`sciddpm.diffusion.solvers.third_order_step`).
    """

    solver = "unipc"
    options = ("order", "lower_order_uneven")
    config: UniPCConfig
