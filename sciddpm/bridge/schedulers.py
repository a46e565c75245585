"""A diffusers ``scheduler_config.json`` as the sciddpm scheduler spec that samples the same process.

What matters for a pretrained model is the process it was trained on: the betas (schedule,
``beta_start``/``beta_end``, ``num_train_timesteps``, the zero-terminal-SNR rescale) and the
prediction type. Those map exactly (``discrete_betas = true`` reproduces diffusers'
``alphas_cumprod`` bit for bit, :mod:`sciddpm.diffusion.betas`). The sampler maps to its sciddpm
counterpart; one without a counterpart (PNDM, LMS, DEIS, ...) becomes ``dpmpp_2m``, a
deterministic multistep solver of the same ODE. Options that change the samples and that sciddpm
does not have — clipping, dynamic thresholding, a steps offset — raise a warning naming them:
sciddpm never clips, because its samples are in physical units.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from sciddpm.interfaces import PredictionType

__all__ = ["PREDICTIONS", "SAMPLERS", "SAMPLER_CLASSES", "SCHEDULES", "scheduler_spec"]

#: diffusers ``prediction_type`` -> sciddpm's prediction type.
PREDICTIONS: dict[str, PredictionType] = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
#: diffusers ``beta_schedule`` -> the VP ``schedule`` of sciddpm's scheduler configs.
SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
#: diffusers scheduler class -> sciddpm scheduler (before solver options are read).
SAMPLERS = {
    "DDPMScheduler": "ddpm",
    "DDIMScheduler": "ddim",
    "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler_a",
    "HeunDiscreteScheduler": "heun",
    "DPMSolverMultistepScheduler": "dpmpp_2m",
    "UniPCMultistepScheduler": "unipc",
}


#: sciddpm sampler -> (the diffusers scheduler class it is exported as, that class's options).
SAMPLER_CLASSES: dict[str, tuple[str, dict[str, Any]]] = {
    "ddpm": ("DDPMScheduler", {"variance_type": "fixed_small"}),
    "ddim": ("DDIMScheduler", {"set_alpha_to_one": True}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_3m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 3}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
}


def _warn(cls: str, option: str, value: Any, effect: str) -> None:
    warnings.warn(f"diffusers {cls} has {option}={value!r}: {effect}", UserWarning, stacklevel=3)


def scheduler_spec(config: Mapping[str, Any]) -> tuple[dict[str, Any], PredictionType]:
    """``(sciddpm scheduler spec, prediction type)`` for a diffusers scheduler ``config``.

    The spec is a dict with ``type`` and the scheduler's fields (``discrete_betas = True`` and the
    betas, ``train_steps``, ``zero_terminal_snr``, ``spacing``, solver options); a config written
    by sciddpm's export carries sciddpm's own spec (``_sciddpm_scheduler``), which is returned.
    Warns (UserWarning) for options that change samples and have no sciddpm counterpart; raises
    ValueError for a process sciddpm cannot reproduce (explicit ``trained_betas``, a learned
    variance, an unknown ``beta_schedule`` or prediction type), naming the option.
    """
    cls = str(config.get("_class_name", "DDPMScheduler"))
    prediction = config.get("prediction_type", "epsilon")
    own = config.get("_sciddpm_scheduler")
    if isinstance(own, dict) and prediction in PREDICTIONS:  # written by sciddpm's export: exact
        sampler = str(own.get("type", "")).split("/")[-1]
        if SAMPLER_CLASSES.get(sampler, ("",))[0] == cls and own.get("train_steps", 1000) == config.get(
            "num_train_timesteps", 1000
        ):
            return dict(own), PREDICTIONS[prediction]
        _warn(
            cls,
            "_sciddpm_scheduler",
            sampler,
            "it no longer matches the config (edited after export); reading the diffusers fields",
        )
    if config.get("trained_betas") is not None:
        raise ValueError(
            f"diffusers {cls} lists explicit trained_betas; sciddpm reproduces only named beta schedules"
        )
    schedule = config.get("beta_schedule", "linear")
    if schedule not in SCHEDULES:
        raise ValueError(
            f"diffusers {cls} has beta_schedule={schedule!r}; sciddpm reproduces {sorted(SCHEDULES)}"
        )
    if prediction not in PREDICTIONS:
        raise ValueError(
            f"diffusers {cls} has prediction_type={prediction!r}; sciddpm reads {sorted(PREDICTIONS)}"
        )
    variance = config.get("variance_type")
    if variance is not None and "learned" in str(variance):
        raise ValueError(
            f"diffusers {cls} has variance_type={variance!r}: the U-Net also predicts its variance, which "
            "sciddpm's schedulers do not read"
        )
    spec: dict[str, Any] = {
        "type": SAMPLERS.get(cls, "dpmpp_2m"),
        "schedule": SCHEDULES[schedule],
        "beta_start": float(config.get("beta_start", 1e-4)),
        "beta_end": float(config.get("beta_end", 0.02)),
        "discrete_betas": True,
        "train_steps": int(config.get("num_train_timesteps", 1000)),
        "zero_terminal_snr": bool(config.get("rescale_betas_zero_snr", False)),
        "spacing": config.get(
            "timestep_spacing", "leading" if cls in ("DDPMScheduler", "DDIMScheduler") else "linspace"
        ),
    }
    if cls not in SAMPLERS:
        _warn(
            cls,
            "_class_name",
            cls,
            "sciddpm has no such sampler; it samples with dpmpp_2m, an ODE solver of the same model",
        )
    if spec["spacing"] not in ("leading", "trailing", "linspace"):
        _warn(cls, "timestep_spacing", spec["spacing"], "unknown; sciddpm uses 'trailing'")
        spec["spacing"] = "trailing"
    _solver_options(cls, config, spec)
    for option, effect in (
        ("clip_sample", "diffusers clips x0 to [-1, 1] at every step; sciddpm never clips"),
        ("thresholding", "diffusers applies dynamic thresholding; sciddpm does not"),
    ):
        if config.get(option):
            _warn(cls, option, config[option], effect)
    if config.get("steps_offset"):
        _warn(
            cls,
            "steps_offset",
            config["steps_offset"],
            "diffusers shifts every sampling timestep; sciddpm does not",
        )
    if cls not in ("DDPMScheduler", "DDIMScheduler") and spec["spacing"] in ("linspace", "leading"):
        _warn(
            cls,
            "timestep_spacing",
            spec["spacing"],
            "diffusers' multistep and Euler-type schedulers place these steps differently from sciddpm "
            "(N + 1 points, the last dropped); sciddpm keeps its own placement, so samples differ "
            "slightly. 'trailing' places them alike",
        )
    variance = config.get("variance_type")
    if cls == "DDPMScheduler" and variance not in (None, "fixed_small"):
        _warn(cls, "variance_type", variance, "sciddpm's ddpm adds the posterior variance (fixed_small)")
    if cls == "DDIMScheduler" and spec["spacing"] == "linspace":
        _warn(
            cls,
            "timestep_spacing",
            "linspace",
            "diffusers' DDIM steps each time back by T // steps rather than to the next listed time "
            "(also with other spacings when steps does not divide T), so its samples differ from "
            "sciddpm's ddim, which steps to the next time",
        )
    if config.get("set_alpha_to_one") is False:
        _warn(
            cls,
            "set_alpha_to_one",
            False,
            "diffusers' last DDIM step stops short of t = 0; sciddpm's reaches it",
        )
    return spec, PREDICTIONS[prediction]


def _solver_options(cls: str, config: Mapping[str, Any], spec: dict[str, Any]) -> None:
    """The sampler-specific fields of ``spec`` (order, SDE variant, Karras spacing)."""
    if cls == "DPMSolverMultistepScheduler":
        algorithm = config.get("algorithm_type", "dpmsolver++")
        if algorithm == "sde-dpmsolver++":
            spec["type"] = "dpmpp_2m_sde"
            spec["solver_type"] = config.get("solver_type", "midpoint")
        elif config.get("solver_order", 2) == 3:
            spec["type"] = "dpmpp_3m"
        if algorithm not in ("dpmsolver++", "sde-dpmsolver++"):
            _warn(cls, "algorithm_type", algorithm, "sciddpm's DPM-Solver is the ++ (data-prediction) form")
    if cls == "UniPCMultistepScheduler":
        spec["order"] = int(config.get("solver_order", 2))
    if config.get("use_karras_sigmas"):
        spec["spacing"] = "karras"
    for option in ("use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas"):
        if config.get(option):
            _warn(cls, option, True, "sciddpm spaces the steps as timestep_spacing says instead")
