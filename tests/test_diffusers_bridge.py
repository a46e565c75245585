"""The diffusers bridge: imported VAEs, U-Nets, schedulers and pipelines compute what diffusers computes.

Every reference model is randomly initialised and saved by diffusers itself into tmp_path.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from sciddpm import seeding
from sciddpm.bridge import pipeline_config, scheduler_spec
from sciddpm.components.diffusers_unet import DiffusersUNet, DiffusersUNetConfig
from sciddpm.components.vae import VAE, VAEConfig
from sciddpm.diffusion.loop import run
from sciddpm.diffusion.processes import VP
from sciddpm.interfaces import Conditioning
from sciddpm.pipeline import Pipeline
from sciddpm.registry import get_registry

diffusers = pytest.importorskip("diffusers")

TINY_UNET = {
    "sample_size": 8,
    "block_out_channels": (8, 16),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "attention_head_dim": 4,
}


def _perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``model`` with every parameter moved off its init (zero-initialised layers would hide errors)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _vae(tmp_path: Path, **kw) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    cfg = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "block_out_channels": [8, 16, 16],
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 4,
        "sample_size": 16,
        **kw,
    }
    model = _perturbed(diffusers.AutoencoderKL(**cfg))
    folder = tmp_path / "vae"
    model.save_pretrained(folder)
    return model, folder


def _unet(
    tmp_path: Path, name: str = "unet", conditional: bool = False, **kw
) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(1)
    if conditional:
        blocks = {
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        }
        model = diffusers.UNet2DConditionModel(**{**TINY_UNET, **blocks, "cross_attention_dim": 6, **kw})
    else:
        model = diffusers.UNet2DModel(**{**TINY_UNET, **kw})
    model = _perturbed(model, 1)
    folder = tmp_path / name
    model.save_pretrained(folder)
    return model, folder


# --- the VAE -----------------------------------------------------------------------------------


def test_vae_encodes_and_decodes_as_diffusers(tmp_path: Path) -> None:
    """Latents are diffusers' (mean - shift) * scaling; decode(encode(x)) agrees to float rounding."""
    model, folder = _vae(tmp_path, scaling_factor=0.5, shift_factor=0.1)
    vae = VAE.from_diffusers(folder, data_range=(0.0, 255.0))
    x = torch.rand(2, 3, 16, 16) * 255
    with torch.no_grad():
        mean = model.encode(x / 127.5 - 1).latent_dist.mean
        want_z = (mean - 0.1) * 0.5
        want_x = (model.decode(want_z / 0.5 + 0.1).sample + 1) * 127.5
        torch.testing.assert_close(vae.encode(x), want_z, rtol=0, atol=1e-5)
        torch.testing.assert_close(vae.decode(vae.encode(x)), want_x, rtol=0, atol=1e-5 * 255)


def test_vae_weights_may_name_a_diffusers_folder_in_a_run_file(tmp_path: Path) -> None:
    """``{type = "vae", weights = <diffusers folder>}``: the architecture is read from config.json."""
    _, folder = _vae(tmp_path)
    config = VAEConfig.model_validate({"weights": str(folder), "dims": 2, "in_channels": 3})
    assert (config.layout, config.channels, config.blocks_per_level) == ("ldm", [8, 16, 16], 2)
    vae = VAE(config).loaded()
    assert bool(vae.trained) and float(vae.scale) == pytest.approx(0.18215)


def test_old_saved_vae_configs_without_a_layout_still_load(tmp_path: Path) -> None:
    """A vae.json written before 'layout' existed means the sciddpm layout."""
    cfg = VAEConfig(dims=2, in_channels=1, channels=[8, 8], groups=4, latent_channels=2)
    vae = VAE(cfg)
    vae.trained.fill_(True)
    vae.normalize.mean, vae.normalize.std = torch.zeros(1), torch.ones(1)
    vae.normalize.fitted.fill_(True)
    vae.save(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "vae.json").read_text())
    del meta["encoder"]["layout"], meta["encoder"]["shift_factor"]
    (tmp_path / "old" / "vae.json").write_text(json.dumps(meta))
    loaded = VAE.load(tmp_path / "old")
    assert loaded.config.layout == "sciddpm"


def test_vae_configurations_without_a_counterpart_are_refused(tmp_path: Path) -> None:
    _, folder = _vae(tmp_path, mid_block_add_attention=False)
    with pytest.raises(ValueError, match="mid_block_add_attention=False"):
        VAE.from_diffusers(folder)


# --- the U-Nets ----------------------------------------------------------------------------------


def test_unconditional_and_class_unets_give_diffusers_output(tmp_path: Path) -> None:
    """The discrete-betas noise input 1000 (t - 1/T) = i for t = (i + 1) / T reaches diffusers as i."""
    model, folder = _unet(tmp_path, num_class_embeds=3)
    net = DiffusersUNet(DiffusersUNetConfig(weights=str(folder), in_channels=3, dims=2)).eval()
    assert net.vector_dim == 32 and net.class_table is not None
    x, i, y = torch.randn(2, 3, 8, 8), torch.tensor([10, 737]), torch.tensor([0, 2])
    with torch.no_grad():
        want = model(x, i, class_labels=y).sample
        got = net(x, i.float(), Conditioning(vector=net.class_table[y]))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_cross_attention_unet_gives_diffusers_output(tmp_path: Path) -> None:
    model, folder = _unet(tmp_path, conditional=True, in_channels=2, out_channels=2)
    net = DiffusersUNet(DiffusersUNetConfig(weights=str(folder), in_channels=2, dims=2)).eval()
    x, i, tokens = torch.randn(2, 2, 8, 8), torch.tensor([0, 999]), torch.randn(2, 5, 6)
    with torch.no_grad():
        want = model(x, i, encoder_hidden_states=tokens).sample
        got = net(x, i.float(), Conditioning(tokens=tokens))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match=r"cond.tokens \(width 6\) but got none"):
        net(x, i.float())


def test_pickled_weights_are_refused_with_the_conversion(tmp_path: Path) -> None:
    _, folder = _unet(tmp_path)
    (folder / "diffusion_pytorch_model.safetensors").rename(folder / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match=r"model.bin.* is a pickle.*diffusers.UNet2DModel.from_pretrained"):
        DiffusersUNet(DiffusersUNetConfig(weights=str(folder), in_channels=3, dims=2))


def test_a_wrong_shape_tensor_is_named(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    _, folder = _vae(tmp_path)
    path = folder / "diffusion_pytorch_model.safetensors"
    tensors = load_file(path)
    tensors["decoder.conv_in.weight"] = torch.zeros(16, 4, 1, 1)
    save_file(tensors, path)
    with pytest.raises(
        ValueError, match=r"'decoder.conv_in.weight' has shape \(16, 4, 1, 1\).*\(16, 4, 3, 3\)"
    ):
        VAE.from_diffusers(folder)


def test_widths_that_contradict_the_unet_are_named(tmp_path: Path) -> None:
    _, folder = _unet(tmp_path)
    with pytest.raises(ValueError, match="takes 3 input channels, but the pipeline gives x_t with 1"):
        DiffusersUNet(DiffusersUNetConfig(weights=str(folder), in_channels=1, dims=2))


# --- schedulers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "theirs", "zero_snr"),
    [
        ("linear", "linear", False),
        ("scaled_linear", "scaled_linear", False),
        ("cosine", "squaredcos_cap_v2", True),
    ],
)
def test_discrete_betas_reproduce_diffusers_alphas_cumprod(
    schedule: str, theirs: str, zero_snr: bool
) -> None:
    start, end = (0.00085, 0.012) if schedule == "scaled_linear" else (1e-4, 0.02)
    ref = diffusers.DDPMScheduler(
        beta_schedule=theirs, beta_start=start, beta_end=end, rescale_betas_zero_snr=zero_snr
    ).alphas_cumprod.double()
    ours = VP(schedule, zero_snr, beta_min=start * 1000, beta_max=end * 1000, discrete_steps=1000)
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    # float64 rounding of sqrt then square is all that separates them (the zero terminal value too)
    torch.testing.assert_close(ours.alpha_bar(t), ref, rtol=1e-14, atol=0)
    inner = torch.linspace(0.001, 0.998, 97, dtype=torch.float64)
    torch.testing.assert_close(ours.t_from_log_snr(ours.log_snr(inner)), inner, rtol=0, atol=1e-12)


def _run(step, timesteps, x):
    for k, t in enumerate(timesteps):
        eps = 0.3 * x + 0.05 * torch.sin(3 * x)  # a fixed smooth "model"
        x = step(eps, k, t, x)
    return x


@pytest.mark.parametrize(
    ("cls", "options"),
    [
        ("DDIMScheduler", {"clip_sample": False, "timestep_spacing": "trailing"}),
        (
            "DDIMScheduler",
            {
                "clip_sample": False,
                "beta_schedule": "scaled_linear",
                "beta_start": 0.00085,
                "beta_end": 0.012,
            },
        ),
        (
            "DDPMScheduler",
            {"clip_sample": False, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
        ),
        ("DPMSolverMultistepScheduler", {"timestep_spacing": "trailing"}),
        (
            "UniPCMultistepScheduler",
            {
                "timestep_spacing": "trailing",
                "rescale_betas_zero_snr": True,
                "prediction_type": "v_prediction",
            },
        ),
    ],
)
def test_imported_scheduler_steps_as_diffusers(cls: str, options: dict) -> None:
    """The same model outputs through 10 steps: diffusers' and the mapped sciddpm scheduler agree."""
    theirs = getattr(diffusers, cls)(**options)
    spec, prediction = scheduler_spec({**theirs.config, "_class_name": cls})
    ours = get_registry().build("scheduler", spec.pop("type"), **spec)
    theirs.set_timesteps(10)
    ours.set_timesteps(10)
    x = torch.randn(4, 3, dtype=torch.float64)
    gen = lambda k: torch.Generator().manual_seed(k)  # noqa: E731
    extra = (lambda k: {}) if cls == "UniPCMultistepScheduler" else (lambda k: {"generator": gen(k)})
    want = _run(lambda e, k, t, x: theirs.step(e, t, x, **extra(k)).prev_sample, theirs.timesteps, x.float())
    got = _run(
        lambda e, k, t, x: ours.step(e, k, x, prediction, generator=gen(k)).prev_sample, ours.timesteps, x
    )
    torch.testing.assert_close(got.float(), want, rtol=1e-4, atol=1e-4)


def test_options_that_change_samples_warn_and_impossible_ones_raise() -> None:
    config = {**diffusers.DDIMScheduler().config, "_class_name": "DDIMScheduler"}  # clip_sample=True
    with pytest.warns(UserWarning, match="clip_sample=True.*never clips"):
        spec, prediction = scheduler_spec(config)
    assert (spec["type"], spec["spacing"], prediction) == ("ddim", "leading", "eps")
    with pytest.warns(UserWarning, match="no such sampler.*dpmpp_2m"):
        assert scheduler_spec({"_class_name": "PNDMScheduler"})[0]["type"] == "dpmpp_2m"
    with pytest.raises(ValueError, match="trained_betas"):
        scheduler_spec({"trained_betas": [0.1, 0.2]})
    with pytest.raises(ValueError, match="variance_type='learned_range'"):
        scheduler_spec({"variance_type": "learned_range"})


# --- pipelines -------------------------------------------------------------------------------------


def _ddim_reference(unet, scheduler, noise, steps, **unet_kw):
    scheduler.set_timesteps(steps)
    z = noise
    with torch.no_grad():
        for t in scheduler.timesteps:
            z = scheduler.step(unet(z, t, **unet_kw).sample, t, z).prev_sample
    return z


def test_pixel_pipeline_samples_as_diffusers(tmp_path: Path) -> None:
    unet, _ = _unet(tmp_path, in_channels=1, out_channels=1)
    scheduler = diffusers.DDIMScheduler(clip_sample=False, timestep_spacing="trailing")
    diffusers.DDIMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path / "pipe")
    pipe = Pipeline.from_diffusers(tmp_path / "pipe")
    assert pipe.data_shape == (1, 8, 8)
    got = pipe.sample(3, steps=10, seed=1)
    want = (_ddim_reference(unet, scheduler, seeding.noise_for((1, 8, 8), 1, 0, 3), 10) + 1) / 2
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # float32 diffusers vs float64 steps


def _latent_folder(tmp_path: Path) -> tuple[Path, torch.nn.Module, torch.nn.Module, object]:
    vae, _ = _vae(tmp_path)
    unet, _ = _unet(tmp_path, in_channels=4, out_channels=4, num_class_embeds=3, sample_size=4)
    scheduler = diffusers.DPMSolverMultistepScheduler(
        timestep_spacing="trailing", prediction_type="v_prediction"
    )
    scheduler.save_pretrained(tmp_path / "scheduler")
    index = {
        "_class_name": "LDMPipeline",
        "unet": ["diffusers", "UNet2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (tmp_path / "model_index.json").write_text(
        json.dumps({**index, "scheduler": ["diffusers", "DPMSolverMultistepScheduler"]})
    )
    return tmp_path, vae, unet, scheduler


def test_latent_class_pipeline_samples_as_diffusers_and_reloads(tmp_path: Path) -> None:
    folder, vae, unet, scheduler = _latent_folder(tmp_path)
    pipe = Pipeline.from_diffusers(folder, data_range=(0, 255))
    assert (pipe.data_shape, pipe.latent_shape) == ((3, 16, 16), (4, 4, 4))
    got = pipe.sample(2, [0, 2], steps=8, seed=3)
    noise = seeding.noise_for(pipe.latent_shape, 3, 0, 2)
    z = _ddim_reference(unet, scheduler, noise, 8, class_labels=torch.tensor([0, 2]))
    with torch.no_grad():
        want = (vae.decode(z / vae.config.scaling_factor).sample + 1) * 127.5
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * 255)
    # Saved as a sciddpm pipeline, it loads without the diffusers folder and samples the same.
    pipe.save(tmp_path / "saved")
    for part in ("unet", "vae"):
        for f in (folder / part).iterdir():
            f.unlink()
        (folder / part).rmdir()
    again = Pipeline.load(tmp_path / "saved")
    torch.testing.assert_close(again.sample(2, [0, 2], steps=8, seed=3), got, rtol=0, atol=0)


def test_text_pipelines_are_refused_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text(
        json.dumps(
            {"unet": ["diffusers", "UNet2DConditionModel"], "text_encoder": ["transformers", "CLIPTextModel"]}
        )
    )
    with pytest.raises(ValueError, match="text-conditioned: build a pipeline with the 'clip' conditioner"):
        pipeline_config(tmp_path)


def test_range_encoder_maps_the_data_range_to_plus_minus_one() -> None:
    enc = get_registry().build("encoder", "range", data_range=(0.0, 255.0))
    x = torch.tensor([0.0, 127.5, 255.0]).view(1, 1, 3)
    torch.testing.assert_close(enc.encode(x), torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 3))
    torch.testing.assert_close(enc.decode(enc.encode(x)), x)
    with pytest.raises(ValueError, match=r"lo < hi, got \[1.0, 1.0\]"):
        get_registry().build("encoder", "range", data_range=(1.0, 1.0))


def test_no_warning_for_a_clean_scheduler_config() -> None:
    config = {**diffusers.DDIMScheduler(clip_sample=False).config, "_class_name": "DDIMScheduler"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scheduler_spec(config)


def test_fine_tuning_an_imported_model_starts_from_its_weights_and_resumes(tmp_path: Path) -> None:
    """A run that names the diffusers folders trains from the pretrained weights, checkpoints and
    resumes to the same weights as one uninterrupted run."""
    from sciddpm.data.arrays import ArraySource
    from sciddpm.training import train

    folder, _, unet, _ = _latent_folder(tmp_path)
    config, _, _ = pipeline_config(folder, (0.0, 255.0))
    rng = torch.Generator().manual_seed(0)
    source = ArraySource.from_array(
        torch.rand(12, 3, 16, 16, generator=rng) * 255, labels=torch.arange(12) % 3
    )
    run = {
        "pipeline": config,
        "train": {"steps": 3, "batch_size": 4, "lr": 1e-4, "warmup_steps": 1, "checkpoint_every": 2},
    }
    whole = train(run, tmp_path / "whole", source=source, progress=False)
    start = unet.state_dict()
    tuned = {k.removeprefix("unet."): v for k, v in whole.denoiser.state_dict().items()}
    moved = max((tuned[k] - start[k]).abs().max().item() for k in start if k != "class_embedding.weight")
    assert 0 < moved < 1e-2  # a few small steps away from the pretrained weights, not re-initialised
    table = whole.conditioner.embedding.weight[:3]
    assert (table - start["class_embedding.weight"]).abs().max() < 1e-2
    # Killed after step 2 (its last checkpoint removed), then resumed.
    import shutil

    from sciddpm.training.checkpoint import list_checkpoints

    train(run, tmp_path / "split", source=source, progress=False)
    shutil.rmtree(list_checkpoints(tmp_path / "split")[-1])
    resumed = train(run, tmp_path / "split", source=source, progress=False, resume=True)
    for k, v in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=1e-6)


def test_import_command_saves_a_pipeline_and_a_fine_tuning_run_file(tmp_path: Path) -> None:
    """``sciddpm import-diffusers`` writes a pipeline that samples and a run file that validates."""
    from sciddpm.cli.commands import main
    from sciddpm.config import load_run

    folder, _, _, _ = _latent_folder(tmp_path / "pretrained")
    out = tmp_path / "imported"
    assert main(["import-diffusers", str(folder), "--out", str(out), "--data-range", "0,255"]) == 0
    assert Pipeline.load(out).sample(1, 2, steps=2).shape == (1, 3, 16, 16)
    text = (out / "finetune.toml").read_text()
    filled = text.replace('# type = "array"', 'type = "digits"').replace("# path", "# ")
    (tmp_path / "run.toml").write_text(filled)
    run = load_run(tmp_path / "run.toml")
    assert run.pipeline.denoiser.type == "diffusers_unet" and run.pipeline.scheduler.params["discrete_betas"]
    assert main(["import-diffusers", str(folder), "--out", str(out)]) == 1  # never overwrites


# --- export ----------------------------------------------------------------------------------------

TINY_SCIDDPM_UNET = {
    "type": "unet",
    "channels": [8, 16],
    "groups": 4,
    "heads": 2,
    "blocks_per_level": 1,
    "attention_levels": [1],
}


def _sciddpm_pipe(encoder: dict, scheduler: dict, conditioner: dict | None = None, shape=(1, 8, 8), **unet):
    config = {
        "encoder": encoder,
        "denoiser": {**TINY_SCIDDPM_UNET, **unet},
        "conditioner": conditioner or {"type": "none"},
        "scheduler": scheduler,
    }
    pipe = Pipeline.from_config(
        config, data_shape=shape, num_classes=(conditioner or {}).get("num_classes"), fit=False
    )
    for part in ("denoiser", "conditioner"):
        _perturbed(getattr(pipe, part), 2)
    pipe.ema.load_state_dict(pipe.trainable.state_dict())
    return pipe.eval()


def _diffusers_loop(folder: Path, noise: torch.Tensor, steps: int, **unet_kw) -> torch.Tensor:
    unet = diffusers.UNet2DModel.from_pretrained(folder, subfolder="unet").eval()
    scheduler = getattr(
        diffusers, json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    )
    scheduler = scheduler.from_pretrained(folder, subfolder="scheduler")
    return _ddim_reference(unet, scheduler, noise, steps, **unet_kw)


@pytest.mark.parametrize(
    ("scheduler", "prediction"),
    [
        ({"type": "ddim"}, "eps"),  # continuous-time: trained_betas and the folded +1 shift
        ({"type": "ddim", "discrete_betas": True}, "v"),
        ({"type": "dpmpp_2m", "spacing": "trailing"}, "eps"),
        ({"type": "unipc", "discrete_betas": True, "schedule": "cosine"}, "x0"),
    ],
)
def test_exported_pixel_pipeline_loads_in_diffusers_and_samples_the_same(
    tmp_path: Path, scheduler, prediction
) -> None:
    pipe = _sciddpm_pipe({"type": "range"}, scheduler, prediction=prediction)
    pipe.to_diffusers(tmp_path / "out")
    loaded = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "out")
    assert type(loaded).__name__ == ("DDIMPipeline" if scheduler["type"] == "ddim" else "DDPMPipeline")
    got = pipe.sample(2, steps=10, seed=1)
    want = (_diffusers_loop(tmp_path / "out", seeding.noise_for((1, 8, 8), 1, 0, 2), 10) + 1) / 2
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_round_trip_restores_the_network(tmp_path: Path) -> None:
    """sciddpm -> diffusers -> sciddpm gives identical tensors, continuous schedule and classes too:
    what the export folds (the rotated time embedding, vector_proj and the class vectors) travels
    beside diffusers' weights and comes back while it still agrees with them."""
    cases = {
        "discrete": ({"type": "ddim", "discrete_betas": True}, None),
        "continuous": ({"type": "ddim"}, None),
        "classes": ({"type": "ddim"}, {"type": "class_label", "num_classes": 3, "dim": 8}),
    }
    for name, (scheduler, conditioner) in cases.items():
        pipe = _sciddpm_pipe({"type": "range"}, scheduler, conditioner)
        pipe.to_diffusers(tmp_path / name)
        back = Pipeline.from_diffusers(tmp_path / name)
        assert back.config.denoiser.type == "unet" and back.config.scheduler == pipe.config.scheduler
        ours, theirs = pipe.state_dict(), back.state_dict()
        for key, value in ours.items():
            assert torch.equal(theirs[key], value), (name, key)
    # Trained further in diffusers, the folder's weights win over the stale originals.
    folder = tmp_path / "continuous" / "unet"
    tuned = diffusers.UNet2DModel.from_pretrained(folder)
    with torch.no_grad():
        tuned.time_embedding.linear_1.weight.add_(0.01)
    tuned.save_pretrained(folder)  # keeps sciddpm_originals.safetensors beside it
    back = Pipeline.from_diffusers(tmp_path / "continuous")
    assert not torch.equal(
        back.denoiser.state_dict()["noise_mlp.0.weight"], pipe.denoiser.state_dict()["noise_mlp.0.weight"]
    )


def test_exported_latent_class_pipeline_samples_the_same(tmp_path: Path) -> None:
    """The vae in its ldm layout and class labels through vector_proj become diffusers' tables."""
    folder, _, _, _ = _latent_folder(tmp_path / "src")
    vae_spec = {"type": "vae", "weights": str(folder / "vae"), "data_range": [0, 1]}
    pipe = _sciddpm_pipe(
        vae_spec,
        {"type": "ddim", "discrete_betas": True},
        {"type": "class_label", "num_classes": 3, "dim": 8},
        shape=(3, 16, 16),
    )
    pipe.encoder.load_weights(folder / "vae")
    pipe.to_diffusers(tmp_path / "out")
    # 5 steps: diffusers' DDIM ends on the clean sample only when the step count divides T.
    got = pipe.sample(2, [2, 0], steps=5, seed=4)
    noise, labels = seeding.noise_for(pipe.latent_shape, 4, 0, 2), torch.tensor([2, 0])
    scheduler = pipe.scheduler_for(None)
    scheduler.set_timesteps(5)
    latent = run(pipe.denoiser_fn(labels), scheduler, noise.clone(), seed=4, indices=range(2))
    z = _diffusers_loop(tmp_path / "out", noise, 5, class_labels=labels)
    torch.testing.assert_close(latent, z, rtol=1e-5, atol=1e-5)
    vae = diffusers.AutoencoderKL.from_pretrained(tmp_path / "out", subfolder="vae").eval()
    with torch.no_grad():
        want = (vae.decode(z / vae.config.scaling_factor).sample + 1) / 2
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_pipelines_without_a_counterpart_are_refused_with_every_reason(tmp_path: Path) -> None:
    pipe = _sciddpm_pipe(
        {"type": "standardize"},
        {"type": "dpmpp_2m", "process": "edm"},
        shape=(1, 8, 8, 8),
        padding="circular",
        prediction="edm",
    )
    with pytest.raises(ValueError) as err:
        pipe.to_diffusers(tmp_path / "out")
    text = str(err.value)
    for reason in (
        "3-D U-Net",
        "padding=circular",
        "prediction='edm'",
        "encoder 'standardize'",
        "the 'edm' process",
    ):
        assert reason in text, reason
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_scale_shift_unet_from_diffusers_becomes_sciddpms_own_unet(tmp_path: Path) -> None:
    """A UNet2DModel sciddpm's unet computes is read as that unet, not wrapped; same output."""
    unet, _ = _unet(
        tmp_path, in_channels=1, out_channels=1, resnet_time_scale_shift="scale_shift", attn_norm_num_groups=4
    )
    scheduler = diffusers.DDIMScheduler(clip_sample=False, timestep_spacing="trailing")
    diffusers.DDIMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path / "pipe")
    pipe = Pipeline.from_diffusers(tmp_path / "pipe")
    assert pipe.config.denoiser.type == "unet" and pipe.denoiser.config.heads == 4  # 16 wide / head dim 4
    x, i = torch.randn(2, 1, 8, 8), torch.tensor([3, 801])
    with torch.no_grad():
        torch.testing.assert_close(pipe.denoiser(x, i.float()), unet(x, i).sample, rtol=0, atol=1e-5)


def test_discrete_betas_and_the_wrapper_for_t_other_than_1000(tmp_path: Path) -> None:
    """T = 500: the table, the wrapper's T / 1000 scaling and DDIM agree with diffusers; sciddpm's own
    unet, whose noise input would be 2 i there, is refused for export."""
    ref = diffusers.DDPMScheduler(num_train_timesteps=500).alphas_cumprod.double()
    ours = VP(discrete_steps=500)
    torch.testing.assert_close(
        ours.alpha_bar(torch.arange(1, 501, dtype=torch.float64) / 500), ref, rtol=1e-14, atol=0
    )
    unet, _ = _unet(tmp_path, in_channels=1, out_channels=1)
    scheduler = diffusers.DDIMScheduler(
        num_train_timesteps=500, clip_sample=False, timestep_spacing="trailing"
    )
    diffusers.DDIMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path / "pipe")
    pipe = Pipeline.from_diffusers(tmp_path / "pipe")
    assert pipe.config.denoiser.type == "diffusers_unet" and pipe.config.denoiser.params["train_steps"] == 500
    got = pipe.sample(2, steps=5, seed=2)
    want = (_ddim_reference(unet, scheduler, seeding.noise_for((1, 8, 8), 2, 0, 2), 5) + 1) / 2
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    native = _sciddpm_pipe({"type": "range"}, {"type": "ddim", "discrete_betas": True, "train_steps": 500})
    with pytest.raises(ValueError, match="train_steps=500: the unet's noise input"):
        native.to_diffusers(tmp_path / "native")


def test_class_conditional_round_trip_keeps_guidance(tmp_path: Path) -> None:
    """The null class travels in a private config key, so guided samples survive the round trip."""
    pipe = _sciddpm_pipe(
        {"type": "range"},
        {"type": "ddim", "discrete_betas": True},
        {"type": "class_label", "num_classes": 3, "dim": 8},
    )
    pipe.to_diffusers(tmp_path / "out")
    back = Pipeline.from_diffusers(tmp_path / "out")
    want = pipe.sample(3, [0, 1, 2], steps=5, guidance_scale=2.0, seed=5)
    torch.testing.assert_close(
        back.sample(3, [0, 1, 2], steps=5, guidance_scale=2.0, seed=5), want, rtol=1e-5, atol=1e-5
    )


def test_euler_exports_are_components_and_refusals_write_nothing(tmp_path: Path) -> None:
    pipe = _sciddpm_pipe({"type": "range"}, {"type": "euler", "discrete_betas": True, "spacing": "trailing"})
    pipe.to_diffusers(tmp_path / "euler")
    index = json.loads((tmp_path / "euler" / "model_index.json").read_text())
    assert index["_class_name"] == "DiffusionPipeline"  # DDPMPipeline would skip scale_model_input
    assert index["scheduler"] == ["diffusers", "EulerDiscreteScheduler"]
    with pytest.raises(FileExistsError, match="not empty"):
        pipe.to_diffusers(tmp_path / "euler")
    _, folder = _unet(tmp_path, in_channels=1, out_channels=1)
    wrapped = Pipeline.from_config(
        {
            "encoder": {"type": "range"},
            "denoiser": {"type": "diffusers_unet", "weights": str(folder), "prediction": "edm"},
            "scheduler": {"type": "euler", "discrete_betas": True},
        },
        data_shape=(1, 8, 8),
        fit=False,
    )
    with pytest.raises(ValueError, match="prediction='edm'"):
        wrapped.to_diffusers(tmp_path / "edm")
    assert not (tmp_path / "edm").exists() and not list(tmp_path.glob(".edm*"))


def test_import_command_on_a_continuous_time_export_skips_the_run_file(tmp_path: Path, capsys) -> None:
    from sciddpm.cli.commands import main

    _sciddpm_pipe({"type": "range"}, {"type": "ddim"}).to_diffusers(tmp_path / "exported")
    assert main(["import-diffusers", str(tmp_path / "exported"), "--out", str(tmp_path / "in")]) == 0
    out = capsys.readouterr().out
    assert "denoiser unet" in out and "no fine-tuning run file: " in out and "continuous-time" in out
    assert (tmp_path / "in" / "pipeline.json").is_file() and not (tmp_path / "in" / "finetune.toml").exists()


def test_run_file_of_an_exported_solver_pipeline_is_valid_toml(tmp_path: Path) -> None:
    import tomllib

    from sciddpm.cli.commands import main

    pipe = _sciddpm_pipe(
        {"type": "range"}, {"type": "dpmpp_2m", "discrete_betas": True, "spacing": "trailing"}
    )
    pipe.to_diffusers(tmp_path / "exported")
    assert main(["import-diffusers", str(tmp_path / "exported"), "--out", str(tmp_path / "in")]) == 0
    run = tomllib.loads((tmp_path / "in" / "finetune.toml").read_text())
    assert (
        run["pipeline"]["scheduler"]["type"].endswith("dpmpp_2m")
        and "sigma_min" not in run["pipeline"]["scheduler"]
    )


def test_folder_errors_name_the_fix(tmp_path: Path) -> None:
    _, folder = _vae(tmp_path, shift_factor=0.25)
    with pytest.raises(ValueError, match=r"shift_factor=0.25 but this config says 0.0"):
        VAE(
            VAEConfig(
                weights=str(folder),
                dims=2,
                in_channels=3,
                channels=[8, 16, 16],
                latent_channels=4,
                blocks_per_level=2,
                groups=4,
                padding="zeros",
                layout="ldm",
                shift_factor=0.0,
            )
        ).loaded()
    (folder / "diffusion_pytorch_model.safetensors").rename(
        folder / "diffusion_pytorch_model.fp16.safetensors"
    )
    with pytest.raises(FileNotFoundError, match=r"fp16.safetensors.*save_pretrained\(dir\) \(no variant\)"):
        VAE.from_diffusers(folder)
    _, unet_folder = _unet(tmp_path, conditional=True)
    config = json.loads((unet_folder / "config.json").read_text())
    (unet_folder / "config.json").write_text(json.dumps({**config, "addition_embed_type": "text_time"}))
    with pytest.raises(
        ValueError, match="addition_embed_type='text_time', an input diffusers_unet does not pass"
    ):
        DiffusersUNetConfig(weights=str(unet_folder))


def test_export_with_another_sampler_and_the_data_range_come_back(tmp_path: Path) -> None:
    """The sampler chosen at export and the encoder's range travel in the folder, without warnings."""
    pipe = _sciddpm_pipe({"type": "range", "data_range": [0, 255]}, {"type": "ddim"})  # continuous time
    pipe.to_diffusers(tmp_path / "out", sampler="dpmpp_2m")
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "DDPMPipeline" in readme and "[0, 255]" in readme
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = Pipeline.from_diffusers(tmp_path / "out")
    assert back.config.scheduler.type.endswith("dpmpp_2m") and back.config.denoiser.type == "unet"
    assert tuple(back.encoder.config.data_range) == (0.0, 255.0)
    want = pipe.sample(2, steps=6, seed=3, scheduler="dpmpp_2m")
    torch.testing.assert_close(back.sample(2, steps=6, seed=3), want, rtol=1e-5, atol=1e-4)


def test_components_only_exports_say_how_to_load_them(tmp_path: Path) -> None:
    pipe = _sciddpm_pipe(
        {"type": "range"}, {"type": "ddim"}, {"type": "class_label", "num_classes": 3, "dim": 8}
    )
    pipe.to_diffusers(tmp_path / "out")
    readme = (tmp_path / "out" / "README.md").read_text()
    assert (
        "fails on this folder" in readme
        and 'diffusers.UNet2DModel.from_pretrained(folder, subfolder="unet")' in readme
    )


def test_a_pipeline_folder_given_as_unet_weights_points_to_unet(tmp_path: Path) -> None:
    unet, _ = _unet(tmp_path, in_channels=1, out_channels=1)
    diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler()).save_pretrained(tmp_path / "pipe")
    with pytest.raises(ValueError, match="is a whole diffusers pipeline; give its unet/ folder"):
        DiffusersUNetConfig(weights=str(tmp_path / "pipe"))


def test_a_third_order_export_warns_that_diffusers_lowers_its_order_elsewhere() -> None:
    from sciddpm.bridge.export import scheduler_config

    pipe = _sciddpm_pipe({"type": "range", "data_range": [0, 255]}, {"type": "ddim"})
    for sampler in ("dpmpp_3m", {"type": "unipc", "order": 3}):
        with pytest.warns(UserWarning, match="lower_order_uneven=True"):
            scheduler_config(pipe, sampler)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # second order, or the rule off: nothing to warn about
        scheduler_config(pipe, {"type": "unipc", "order": 2})
        scheduler_config(pipe, {"type": "dpmpp_3m", "lower_order_uneven": False})
