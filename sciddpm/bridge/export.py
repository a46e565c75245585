"""A sciddpm pipeline written as a diffusers pipeline folder, for a colleague who uses diffusers.

What maps: the ``unet`` denoiser (as ``UNet2DModel`` with ``scale_shift`` embeddings,
:mod:`sciddpm.bridge.unet`) or a ``diffusers_unet``; the ``range``/``identity`` encoder (pixel
space) or a ``vae`` in the ``ldm`` layout (as ``AutoencoderKL``); the ``none`` or ``class_label``
conditioner (the class vectors through ``vector_proj`` become ``class_embedding`` rows); and the
scheduler, on the VP process it was trained on. :func:`export_problems` lists everything that has
no counterpart, so a refusal names all of it at once.

Two facts make the diffusers model compute what sciddpm's computed. The betas: a discrete-betas
schedule is written by name; a continuous-time one as ``trained_betas`` that give the same
``alpha_bar`` at every training time ``t = (i + 1) / T``. The noise input: a network trained on the
continuous schedule saw ``1000 t = i + 1`` where diffusers passes ``i``, and the sinusoidal
embedding of ``i + 1`` is a fixed rotation of that of ``i`` (angle = each frequency), which is folded
into the first time-embedding layer: exact up to float32 rounding of that one matrix.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from sciddpm.bridge.files import ORIGINALS, write_model
from sciddpm.bridge.keys import to_diffusers as rename
from sciddpm.bridge.schedulers import PREDICTIONS, SAMPLER_CLASSES, SCHEDULES
from sciddpm.bridge.unet import diffusers_config, shift_rotation, unet_links
from sciddpm.bridge.unet import export_problems as unet_problems
from sciddpm.bridge.vae import vae_links
from sciddpm.persistence import write_json

__all__ = ["export_problems", "scheduler_config", "to_diffusers"]

#: The inverses of the import's maps: sciddpm prediction type / VP schedule -> diffusers' name.
PREDICTION_TYPES = {ours: theirs for theirs, ours in PREDICTIONS.items()}
BETA_SCHEDULES = {ours: theirs for theirs, ours in SCHEDULES.items()}
#: config.json key holding the null class's embedding vector (classifier-free guidance) on export.
NULL_CLASS = "_sciddpm_null_class"
#: model_index.json key holding the physical range the model's [-1, 1] stands for.
DATA_RANGE = "_sciddpm_data_range"


def _sampler(pipe: Any, sampler: str | None) -> tuple[str, dict[str, Any]]:
    """``(sampler name, its spec without type)``: the trained scheduler, or ``sampler`` on its process."""
    if sampler is None:
        return pipe.config.scheduler.type.split("/")[-1], dict(pipe.config.scheduler.params)
    spec = pipe.scheduler_spec(sampler)  # inherits the trained process' fields
    return str(spec.pop("type")).split("/")[-1], spec


def export_problems(pipe: Any, sampler: str | None = None) -> list[str]:
    """Every part of ``pipe`` (a Pipeline) that has no diffusers counterpart; empty when it exports."""
    problems: list[str] = []
    enc, den, cond = (pipe.config.encoder.type, pipe.config.denoiser.type, pipe.config.conditioner.type)
    name, spec = _sampler(pipe, sampler)
    native = den.endswith("unet") and not den.endswith("diffusers_unet")
    if native:
        problems += [f"denoiser: {p}" for p in unet_problems(pipe.denoiser.config)]
        if spec.get("train_steps", 1000) != 1000:
            problems.append(
                f"scheduler: train_steps={spec['train_steps']}: the unet's noise input is 1000 t, diffusers "
                "passes the timestep index, and the two differ by more than a shift unless T = 1000"
            )
    elif den.endswith("diffusers_unet"):
        if pipe.denoiser.prediction_type not in PREDICTION_TYPES:
            problems.append(f"denoiser: prediction={pipe.denoiser.prediction_type!r} (diffusers: eps, v, x0)")
    else:
        problems.append(f"denoiser {den!r}: only 'unet' and 'diffusers_unet' have a diffusers counterpart")
    if enc.endswith("vae"):
        cfg = pipe.encoder.config
        if cfg.layout != "ldm":
            problems.append(
                "encoder: a vae in the 'sciddpm' layout (diffusers' AutoencoderKL is the 'ldm' one)"
            )
        if cfg.dims != 2 or cfg.padding not in ("zeros", ["zeros", "zeros"]):
            problems.append(
                f"encoder: a {cfg.dims}-D vae with padding={cfg.padding} (AutoencoderKL: 2-D, zeros)"
            )
    elif enc.split("/")[-1] not in ("identity", "range"):
        problems.append(
            f"encoder {enc!r}: diffusers pipelines see images in [-1, 1] (use 'range') or latents"
        )
    if cond.split("/")[-1] not in ("none", "class_label"):
        problems.append(f"conditioner {cond!r}: diffusers' U-Nets take only class labels or text tokens")
    if pipe.scheduler.process.kind != "vp":
        problems.append(
            f"scheduler: the {pipe.scheduler.process.kind!r} process (diffusers' U-Net schedulers are VP)"
        )
    if spec.get("sigma_data", 1.0) != 1.0:
        problems.append(
            f"scheduler: sigma_data={spec['sigma_data']} scales the network's input (diffusers: 1)"
        )
    if name not in SAMPLER_CLASSES:
        problems.append(f"sampler {name!r}: none of {sorted(SAMPLER_CLASSES)}")
    if spec.get("timesteps") is not None:
        problems.append("scheduler: a user-given list of timesteps (pass it to diffusers at call time)")
    if spec.get("spacing") == "log_snr" and name not in ("dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde"):
        problems.append("scheduler: spacing='log_snr' (diffusers has it for DPM-Solver only)")
    if den.endswith("diffusers_unet") and not spec.get("discrete_betas"):
        problems.append("scheduler: a diffusers_unet trained without discrete_betas")
    return problems


def _alpha_bar_grid(pipe: Any) -> torch.Tensor:
    """The trained process' ``alpha_bar`` at ``t = (i + 1) / T``, float64 ``(T,)``."""
    steps = int(pipe.config.scheduler.params.get("train_steps", 1000))
    t = torch.arange(1, steps + 1, dtype=torch.float64) / steps
    return pipe.scheduler.process.alpha_bar(t)


def scheduler_config(pipe: Any, sampler: str | None = None) -> dict[str, Any]:
    """The diffusers ``scheduler_config.json`` that samples ``pipe``'s trained process with ``sampler``.

    Warns (UserWarning) where diffusers will sample at other times or without an option the
    sciddpm scheduler has (eta, churn); raises KeyError for a sampler or prediction type without
    a counterpart, which :func:`export_problems` reports first.
    """
    name, spec = _sampler(pipe, sampler)
    cls, options = SAMPLER_CLASSES[name]
    config: dict[str, Any] = {
        "_class_name": cls,
        # diffusers ignores keys starting with "_": sciddpm reads its own scheduler back from it.
        "_sciddpm_scheduler": {"type": name, **spec},
        "num_train_timesteps": int(spec.get("train_steps", 1000)),
        "prediction_type": PREDICTION_TYPES[pipe.denoiser.prediction_type],
        "clip_sample": False,
        "thresholding": False,
        "steps_offset": 0,
        **options,
    }
    if spec.get("discrete_betas"):
        config |= {
            "beta_schedule": BETA_SCHEDULES[spec.get("schedule", "linear")],
            "beta_start": spec.get("beta_start", 1e-4),
            "beta_end": spec.get("beta_end", 0.02),
            "rescale_betas_zero_snr": bool(spec.get("zero_terminal_snr", False)),
        }
    else:
        alpha_bar = _alpha_bar_grid(pipe).clamp(min=2.0**-24)  # diffusers' floor for a zero terminal SNR
        betas = 1 - alpha_bar / torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        config["trained_betas"] = betas.tolist()
    spacing = spec.get("spacing", "trailing")
    unexported = {
        "ddim": {"eta": 0.0},
        "euler_a": {"eta": 1.0, "s_noise": 1.0},
        "heun": {"s_churn": 0.0},
        "dpmpp_2m_sde": {"eta": 1.0, "s_noise": 1.0},
    }.get(name, {})
    for option, default in unexported.items():
        if spec.get(option, default) != default:
            warnings.warn(
                f"{name} has {option}={spec[option]}, which a diffusers scheduler config cannot hold "
                f"(DDIM takes eta when called: pipe(eta=...)); the export samples with {option}={default}",
                UserWarning,
                stacklevel=3,
            )
    if name == "unipc":
        config["solver_order"] = int(spec.get("order", 2))
    third_order = name == "dpmpp_3m" or (name == "unipc" and int(spec.get("order", 2)) >= 3)
    if third_order and spec.get("lower_order_uneven", True):
        warnings.warn(
            f"{name} takes long growing steps at second order (lower_order_uneven=True); diffusers "
            "lowers the order only on the final steps (lower_order_final), so the export samples "
            "differently on such steps (Karras spacing, the end of trailing ones)",
            UserWarning,
            stacklevel=3,
        )
    if name == "dpmpp_2m_sde":
        config["solver_type"] = spec.get("solver_type", "midpoint")
    if name not in ("ddpm", "ddim") and spacing in ("linspace", "leading"):
        warnings.warn(
            f"spacing={spacing!r}: diffusers' multistep and Euler-type schedulers place these steps "
            "differently (N + 1 points, the last dropped), so the export samples at other times; "
            "'trailing' places them alike",
            UserWarning,
            stacklevel=3,
        )
    if spacing in ("karras", "log_snr"):
        warnings.warn(
            f"spacing={spacing!r} puts noise levels between diffusers' training times, where diffusers "
            "interpolates log-sigma over its table and sciddpm the schedule itself: samples agree to "
            "about 1e-3 relative, not to float rounding as with 'trailing', 'leading' or 'linspace'",
            UserWarning,
            stacklevel=3,
        )
    if spacing == "karras":
        config |= {"use_karras_sigmas": True, "timestep_spacing": "linspace"}
    elif spacing == "log_snr":
        config |= {"use_lu_lambdas": True, "timestep_spacing": "linspace"}
    else:
        config["timestep_spacing"] = spacing
    return config


def _class_rows(pipe: Any, conditioner: Any) -> torch.Tensor | None:
    """The class vectors the denoiser adds to its embedding, ``(K + 1, width)``, the null class last."""
    if pipe.config.conditioner.type.split("/")[-1] != "class_label":
        return None
    return conditioner.embedding.weight.detach().double()


def _unet_files(
    pipe: Any, modules: Any, sample_size: list[int]
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(config.json, diffusers tensors, sciddpm originals)`` of the U-Net.

    The originals are the sciddpm tensors that the export folds into others (the rotated first
    time-embedding layer, ``vector_proj`` and the class vectors); written beside diffusers' weights,
    they let :func:`sciddpm.bridge.unet.read_native` restore the network bit for bit.
    """
    denoiser, conditioner = modules["denoiser"], modules["conditioner"]
    rows, originals = _class_rows(pipe, conditioner), {}
    if pipe.config.denoiser.type.endswith("diffusers_unet"):
        config = dict(denoiser.config.unet_config)
        tensors = dict(denoiser.unet.state_dict().items())
    else:
        config = diffusers_config(denoiser.config, sample_size, None if rows is None else len(rows) - 1)
        state = denoiser.state_dict()
        tensors = rename(unet_links(denoiser), state)
        if not pipe.config.scheduler.params.get("discrete_betas"):
            originals["noise_mlp.0.weight"] = state["noise_mlp.0.weight"]
            w = tensors["time_embedding.linear_1.weight"].double()
            tensors["time_embedding.linear_1.weight"] = (w @ shift_rotation(w.shape[1])).float()
        if rows is not None:  # what the unet adds to its embedding for each class: vector_proj(row)
            proj = denoiser.vector_proj
            originals |= {"vector_proj.weight": proj.weight, "vector_proj.bias": proj.bias}
            originals["conditioner.embedding.weight"] = conditioner.embedding.weight
            rows = rows @ proj.weight.double().T + proj.bias.double()
    if rows is not None:
        tensors["class_embedding.weight"] = rows[:-1].float()
        # diffusers has no null class; a private key (diffusers ignores "_" keys) keeps guidance.
        config[NULL_CLASS] = rows[-1].tolist()
    return config, tensors, {k: v.detach().clone() for k, v in originals.items()}


def _vae_files(vae: Any, sample_size: list[int]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    cfg = vae.config
    levels = len(cfg.channels)
    config = {
        "_class_name": "AutoencoderKL",
        "in_channels": cfg.in_channels,
        "out_channels": cfg.in_channels,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": list(cfg.channels),
        "layers_per_block": cfg.blocks_per_level,
        "act_fn": "silu",
        "latent_channels": cfg.latent_channels,
        "norm_num_groups": cfg.groups,
        "sample_size": sample_size[0],
        "scaling_factor": float(vae.scale),
        "shift_factor": cfg.shift_factor or None,
        "use_quant_conv": True,
        "use_post_quant_conv": True,
        "mid_block_add_attention": True,
    }
    return config, rename(vae_links(vae.net), vae.state_dict())


def to_diffusers(pipe: Any, path: str | Path, sampler: str | None = None, use_ema: bool = True) -> Path:
    """Write ``pipe`` (a Pipeline) as a diffusers pipeline folder in ``path``; returns ``path``.

    ``sampler`` picks the diffusers scheduler (default: the trained scheduler's); ``use_ema``
    exports the EMA weights, which ``Pipeline.sample`` uses. An unconditional pixel-space pipeline
    is a ``DDIMPipeline`` (``ddim``) or ``DDPMPipeline`` (DDPM, DPM-Solver, UniPC) that
    ``DiffusionPipeline.from_pretrained`` loads; latent, class-conditional and Euler/Heun exports
    have no stock diffusers pipeline that samples them correctly, so their folders hold the
    components (``UNet2DModel.from_pretrained(path, subfolder="unet")``, ...).
    Raises ValueError listing every part without a counterpart (:func:`export_problems`), and
    FileExistsError for a folder that exists and is not empty. The folder appears complete or not
    at all (written beside it, then moved into place).
    """
    problems = export_problems(pipe, sampler)
    if problems:
        raise ValueError("this pipeline has no diffusers equivalent: " + "; ".join(problems))
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{str(path)!r} exists and is not empty; export into a new folder")
    scheduler = scheduler_config(pipe, sampler)
    modules = pipe.ema if use_ema else pipe.trainable
    latent = pipe.config.encoder.type.endswith("vae")
    sample_size = [int(n) for n in (pipe.latent_shape if latent else pipe.data_shape)[1:]]
    unet_config, unet_tensors, originals = _unet_files(pipe, modules, sample_size)
    # Everything goes into a sibling folder renamed into place at the end: no half-written export.
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent if path.parent.exists() else None))
    try:
        write_model(work / "unet", unet_config, unet_tensors)
        if originals:  # diffusers reads only its own weights file and ignores this one
            save_file(originals, str(work / "unet" / ORIGINALS))
        (work / "scheduler").mkdir()
        write_json(work / "scheduler" / "scheduler_config.json", scheduler)
        index: dict[str, Any] = {
            "unet": ["diffusers", unet_config["_class_name"]],
            "scheduler": ["diffusers", scheduler["_class_name"]],
        }
        if latent:
            vae_config, vae_tensors = _vae_files(pipe.encoder, [int(n) for n in pipe.data_shape[1:]])
            write_model(work / "vae", vae_config, vae_tensors)
            index["vae"] = ["diffusers", "AutoencoderKL"]
        kind = _pipeline_class(latent, unet_config, scheduler)
        index = {"_class_name": kind, "_diffusers_version": _diffusers_version(), **index}
        data_range = _data_range(pipe)
        if data_range is not None:  # diffusers ignores "_" keys; Pipeline.from_diffusers reads it
            index[DATA_RANGE] = data_range
        write_json(work / "model_index.json", index)
        (work / "README.md").write_text(_readme(kind, index, data_range), encoding="utf-8")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.rmdir()  # the empty folder the caller made
        shutil.move(str(work), str(path))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def _diffusers_version() -> str:
    try:
        import diffusers
    except ImportError:
        return "0.30.0"  # the oldest version the bridge is tested against
    return str(diffusers.__version__)


def _data_range(pipe: Any) -> list[float] | None:
    """The physical ``[lo, hi]`` the exported model sees as ``[-1, 1]``, when the encoder fixes one."""
    kind = pipe.config.encoder.type.split("/")[-1]
    if kind == "identity":
        return [-1.0, 1.0]
    if kind in ("range", "vae"):
        return [float(v) for v in pipe.encoder.config.data_range]
    return None


def _readme(kind: str, index: dict[str, Any], data_range: list[float] | None) -> str:
    """How a diffusers user loads this folder (written into it)."""
    lines = ["# Exported by sciddpm (`Pipeline.to_diffusers`)", ""]
    if kind != "DiffusionPipeline":
        lines += [f"Load it with `diffusers.DiffusionPipeline.from_pretrained(folder)` (a `{kind}`).", ""]
    else:
        lines += [
            "No stock diffusers pipeline samples this model correctly (latent, class-conditional, or a",
            "sigma-space scheduler that `DDPMPipeline` would not scale), so",
            "`DiffusionPipeline.from_pretrained` fails on this folder. Load the components and run the",
            "scheduler's loop:",
            "",
        ]
        for part, (_, cls) in ((k, v) for k, v in index.items() if not k.startswith("_")):
            lines.append(f'- `diffusers.{cls}.from_pretrained(folder, subfolder="{part}")`')
        lines.append("")
    if data_range is not None:
        lo, hi = data_range
        lines.append(f"The model's [-1, 1] is [{lo:g}, {hi:g}] in the data's physical units.")
    lines += ["", "sciddpm reads the folder back with `Pipeline.from_diffusers(folder)`.", ""]
    return "\n".join(lines)


def _pipeline_class(latent: bool, unet_config: dict[str, Any], scheduler: dict[str, Any]) -> str:
    """The stock diffusers pipeline that samples the export correctly, or ``DiffusionPipeline``.

    ``DDIMPipeline`` and ``DDPMPipeline`` sample unconditional pixel models; ``DDPMPipeline`` calls
    ``step`` without ``scale_model_input`` or ``init_noise_sigma``, which the sigma-space schedulers
    (Euler, Heun) need, so those exports are components only, as latent and class-conditional ones.
    """
    pixel = (
        not latent and not unet_config.get("num_class_embeds") and unet_config["_class_name"] == "UNet2DModel"
    )
    cls = scheduler["_class_name"]
    if pixel and cls == "DDIMScheduler":
        return "DDIMPipeline"
    if pixel and cls in ("DDPMScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler"):
        return "DDPMPipeline"
    return "DiffusionPipeline"
