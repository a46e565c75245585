"""The KL-VAE encoder: shapes, the KL term, its training stage, persistence and latent pipelines."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import TINY_UNET

from sciddpm.cli import main
from sciddpm.components.vae import VAE, VAEConfig, vae_loss
from sciddpm.config import ConfigError, dump_run, load_run
from sciddpm.data import ArraySource
from sciddpm.nn.vae import kl_standard_normal
from sciddpm.pipeline import Pipeline
from sciddpm.training.encoder import train_encoder
from sciddpm.training.trainer import train

TINY_VAE = {
    "channels": [4, 8, 8],
    "latent_channels": 2,
    "groups": 4,
    "blocks_per_level": 1,
    "padding": "zeros",
    "steps": 3,
    "batch_size": 8,
    "warmup_steps": 2,
    "scale_samples": 64,
    "device": "cpu",
}


def _fields(shape: tuple[int, ...], n: int = 24, seed: int = 0) -> np.ndarray:
    """Smooth random fields ``(n, *shape)`` in physical units (offset 10, scale 3)."""
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.normal(size=(n, *shape)).astype(np.float32))
    dims = len(shape) - 1
    pool = {1: torch.nn.functional.avg_pool1d, 2: torch.nn.functional.avg_pool2d}.get(dims)
    if pool is not None:
        x = pool(x, 3, stride=1, padding=1)
    return (10.0 + 3.0 * x).numpy()


def _vae(shape: tuple[int, ...], **overrides) -> VAE:
    params = {**TINY_VAE, **overrides}
    return VAE(VAEConfig(dims=len(shape) - 1, in_channels=shape[0], **params))


@pytest.mark.parametrize(
    "shape", [(1, 16), (3, 13), (2, 8, 8), (1, 10, 7), (2, 5, 6, 4)], ids=lambda s: "x".join(map(str, s))
)
def test_encode_decode_shapes_pad_and_crop(shape):
    vae = _vae(shape, steps=1)
    x = torch.from_numpy(_fields(shape, n=8))
    vae.fit(ArraySource.from_array(x))
    latent = vae.latent_shape(shape)
    assert latent == (2, *(math.ceil(n / 4) for n in shape[1:]))
    z = vae.encode(x[:3])
    assert z.shape == (3, *latent)
    decoded = vae.decode(z)
    assert decoded.shape == (3, shape[0], *(4 * n for n in latent[1:]))  # padded size
    assert vae.reconstruct(x[:3]).shape == (3, *shape)  # cropped back


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(4, 3, 5, generator=g), torch.randn(4, 3, 5, generator=g)
    normal = torch.distributions.Normal
    reference = torch.distributions.kl_divergence(
        normal(mean, (0.5 * logvar).exp()), normal(torch.zeros_like(mean), torch.ones_like(mean))
    )
    torch.testing.assert_close(kl_standard_normal(mean, logvar), reference)
    x = torch.randn(4, 1, 10, generator=g)
    parts = vae_loss(x, x, mean, logvar, beta=0.5)
    torch.testing.assert_close(parts["kl"], reference.flatten(1).sum(1).mean() / 10)
    torch.testing.assert_close(parts["loss"], 0.5 * parts["kl"])  # perfect reconstruction


def test_loss_weights_by_mask_and_gradient_term():
    x, recon = torch.zeros(2, 1, 6), torch.zeros(2, 1, 6)
    recon[:, :, 2] = 3.0  # a spike at position 2
    mean = logvar = torch.zeros(2, 1, 2)  # KL = 0
    mask = torch.ones_like(x)
    mask[:, :, 2] = 0
    assert vae_loss(x, recon, mean, logvar, beta=1.0, mask=mask)["loss"] == 0
    full = vae_loss(x, recon, mean, logvar, beta=1.0, gradient_weight=1.0)
    assert full["reconstruction"] == pytest.approx(9 / 6)
    assert full["gradient"] == pytest.approx(2 * 9 / 6)  # the spike's two finite differences


def test_training_reduces_the_loss_and_is_seeded():
    shape = (1, 12, 12)
    # Fields with three degrees of freedom, which a 2 x 3 x 3 latent can hold.
    rng = np.random.default_rng(0)
    grid = np.linspace(0, np.pi, 12, dtype=np.float32)
    patterns = np.stack([np.sin(grid)[:, None] * np.sin(k * grid)[None] for k in (1, 2, 3)])
    coefficients = rng.normal(size=(32, 3)).astype(np.float32)
    source = ArraySource.from_array(5.0 + np.einsum("nk,khw->nhw", coefficients, patterns)[:, None])
    x = torch.stack([s.x for s in source])

    def error(vae: VAE) -> float:
        with torch.no_grad():
            return float((vae.reconstruct(x) - x).square().mean())

    untrained = _vae(shape, steps=1, lr=1e-9)
    untrained.fit(source)
    trained = _vae(shape, steps=60, lr=5e-3)
    trained.fit(source)
    assert error(trained) < 0.6 * error(untrained)
    assert trained.last_fit["final_loss"] < trained.last_fit["final_reconstruction"] * 1.5

    again = _vae(shape, steps=60, lr=5e-3)
    torch.manual_seed(123)  # the caller's RNG state does not matter
    again.fit(source)
    for key, value in trained.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    other = _vae(shape, steps=60, lr=5e-3, seed=1)
    other.fit(source)
    assert not torch.equal(other.net.decoder[0].conv.weight, trained.net.decoder[0].conv.weight)


def test_scale_factor_gives_unit_std_latents():
    shape = (2, 8, 8)
    data = _fields(shape, n=40)
    data[:, 1] *= 1000.0  # channels of very different units
    source = ArraySource.from_array(data)
    vae = _vae(shape, steps=10, scale_samples=40)
    vae.fit(source)
    z = vae.encode(torch.from_numpy(data))
    assert z.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    assert float(vae.scale) != pytest.approx(1.0, abs=1e-3)


def test_fit_is_a_no_op_once_trained():
    source = ArraySource.from_array(_fields((1, 8), n=8))
    vae = _vae((1, 8))
    vae.fit(source)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    vae.fit(ArraySource.from_array(_fields((1, 8), n=8, seed=5)))
    assert all(torch.equal(v, vae.state_dict()[k]) for k, v in before.items())


def _latent_run(**encoder):
    return {
        "data": {"type": "digits", "size": 10, "classes": [0, 1]},  # 10 is not a multiple of 4
        "pipeline": {
            "encoder": {"type": "vae", **TINY_VAE, **encoder},
            "denoiser": TINY_UNET,
            "conditioner": {"type": "class_label", "dim": 8},
            "scheduler": {"type": "ddim", "sigma_data": "auto"},
        },
        "train": {"steps": 3, "batch_size": 8, "warmup_steps": 1, "checkpoint_every": 0},
    }


@pytest.fixture(scope="module")
def latent_pipeline(tmp_path_factory):
    out = tmp_path_factory.mktemp("latent")
    return train(_latent_run(), out, progress=False), out


def test_latent_pipeline_trains_samples_and_reloads(latent_pipeline):
    pipe, out = latent_pipeline
    assert pipe.latent_shape == (2, 3, 3)
    assert pipe.config.denoiser.params["in_channels"] == 2
    params = pipe.config.encoder.params
    assert (params["dims"], params["in_channels"]) == (2, 1)
    assert pipe.config.scheduler.params["sigma_data"] == pytest.approx(1.0, abs=0.05)  # scaled latents
    samples = pipe.sample(4, [0, 1, 0, 1], steps=3, seed=1, guidance_scale=2.0)
    assert samples.shape == (4, 1, 10, 10)
    loaded = Pipeline.load(out)
    assert bool(loaded.encoder.trained)
    again = loaded.sample(4, [0, 1, 0, 1], steps=3, seed=1, guidance_scale=2.0)
    assert torch.equal(samples, again)


def test_weights_round_trip_and_reuse(latent_pipeline, tmp_path):
    pipe, _ = latent_pipeline
    vae = pipe.encoder
    vae.save(tmp_path / "vae")
    meta = json.loads((tmp_path / "vae" / "vae.json").read_text())
    assert meta["encoder"]["type"] == "vae" and meta["encoder"]["weights"] is None
    loaded = VAE.load(tmp_path / "vae")
    x = torch.rand(3, 1, 10, 10) * 16
    assert torch.equal(loaded.encode(x), vae.encode(x))

    # A run that names only the weights gets the saved architecture and trains no autoencoder.
    run = load_run(
        {
            **_latent_run(),
            "pipeline": {
                **_latent_run()["pipeline"],
                "encoder": {"type": "vae", "weights": str(tmp_path / "vae")},
            },
        }
    )
    assert run.pipeline.encoder.params["channels"] == TINY_VAE["channels"]
    assert load_run(dump_run(run)) == run
    reused = Pipeline.from_config(run.pipeline, _digits())
    assert reused.encoder.last_fit == {}
    assert torch.equal(reused.encoder.encode(x), vae.encode(x))


def _digits():
    from sciddpm.data import DigitsSource, DigitsSourceConfig

    return DigitsSource(DigitsSourceConfig(size=10, classes=[0, 1]))


def test_train_encoder_stage_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "run.toml"
    dump_run(load_run(_latent_run()), run)
    assert main(["train", str(run), "--stage", "encoder", "--out", str(tmp_path / "vae")]) == 0
    assert "weights" in capsys.readouterr().out
    assert not (tmp_path / "vae" / "pipeline.json").exists()  # no diffusion stage
    vae = VAE.load(tmp_path / "vae")
    same = train_encoder(_latent_run(), tmp_path / "again")  # the same seed, the same VAE
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in vae.state_dict().items())
    with pytest.raises(FileExistsError, match="already holds a saved VAE"):
        train_encoder(_latent_run(), tmp_path / "vae")
    assert main(["train", str(run), "--stage", "encoder", "--dry-run", "--out", str(tmp_path / "y")]) == 1
    assert "drop --resume/--dry-run" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"pipeline.encoder is 'standardize', which has no training stage"):
        train_encoder({**_latent_run(), "pipeline": {"encoder": {"type": "standardize"}}}, tmp_path / "x")


# ------------------------------------------------------------------ bad inputs


def test_wrong_channel_count_is_an_error():
    vae = _vae((2, 8, 8))
    vae.fit(ArraySource.from_array(_fields((2, 8, 8), n=8)))
    with pytest.raises(
        ValueError, match=r"VAE was built for 2-channel 2-D data \(B, 2, H, W\); got x of shape"
    ):
        vae.encode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"expects latents \(B, 2, \.\.\.\)"):
        vae.decode(torch.zeros(1, 5, 2, 2))
    with pytest.raises(ValueError, match="sample_shape"):
        _vae((2, 8, 8)).fit(ArraySource.from_array(_fields((1, 8, 8), n=4)))


def test_untrained_vae_refuses_to_encode():
    with pytest.raises(RuntimeError, match=r"VAE is not trained: call fit\(source\)"):
        _vae((1, 8)).encode(torch.zeros(1, 1, 8))


def test_missing_weights_path_is_a_config_error(tmp_path):
    bad = str(tmp_path / "nowhere")
    with pytest.raises(
        ConfigError, match=r"pipeline.encoder: .*'.*nowhere' is not a saved VAE \(vae.json is missing\)"
    ):
        load_run(_latent_run(weights=None) | {"pipeline": {"encoder": {"type": "vae", "weights": bad}}})
    vae = _vae((1, 8), weights=bad)  # every architecture field given: the error comes at fit
    with pytest.raises(ValueError, match="is not a saved VAE"):
        vae.fit(ArraySource.from_array(_fields((1, 8), n=4)))


def test_wrong_weights_name_the_field_or_tensor(tmp_path):
    source = ArraySource.from_array(_fields((1, 8), n=8))
    vae = _vae((1, 8))
    vae.fit(source)
    vae.save(tmp_path / "vae")
    with pytest.raises(
        ValueError, match=r"has in_channels=1 but this VAE needs in_channels=3 \(from the data\)"
    ):
        _vae((3, 8), weights=str(tmp_path / "vae")).fit(ArraySource.from_array(_fields((3, 8), n=4)))
    with pytest.raises(ValueError, match=r"has latent_channels=2 but this VAE needs latent_channels=3"):
        _vae((1, 8), latent_channels=3, weights=str(tmp_path / "vae")).fit(source)

    path = tmp_path / "vae" / "vae.safetensors"
    tensors = load_file(str(path))
    tensors["net.decoder.0.conv.weight"] = torch.zeros(8, 5, 3)
    save_file(tensors, str(path))
    with pytest.raises(
        ValueError,
        match=r"tensor 'net.decoder.0.conv.weight' has shape \(8, 5, 3\), the VAE config expects \(8, 2, 3\)",
    ):
        VAE.load(tmp_path / "vae")
    del tensors["scale"]
    save_file(tensors, str(path))
    with pytest.raises(ValueError, match=r"lacks tensor 'scale'"):
        VAE.load(tmp_path / "vae")


def test_config_errors():
    with pytest.raises(ValueError, match="groups=4 must divide every width"):
        VAEConfig(channels=[4, 6], groups=4)
    with pytest.raises(ValueError, match="needs dims and in_channels"):
        VAE(VAEConfig())
    with pytest.raises(
        ConfigError,
        match=r"pipeline.encoder.betta: unknown field; did you mean 'beta'",
    ):
        load_run(_latent_run(betta=1.0))


def test_example_run_file_is_a_latent_pipeline():
    from pathlib import Path

    run = load_run(Path(__file__).parents[1] / "examples" / "latent_digits.toml")
    assert run.pipeline.encoder.type == "vae" and run.data.params["size"] == 32


@pytest.mark.parametrize("shape", [(3, 13), (1, 5, 6, 7)], ids=["1d", "3d"])
def test_latent_pipeline_in_1d_and_3d_returns_the_data_shape(shape):
    source = ArraySource.from_array(_fields(shape, n=8))
    vae = {**TINY_VAE, "padding": "circular", "steps": 2, "warmup_steps": 1}
    pipe = Pipeline.from_config({"encoder": {"type": "vae", **vae}, "denoiser": TINY_UNET}, source)
    assert pipe.latent_shape == (2, *(math.ceil(n / 4) for n in shape[1:]))
    assert pipe.sample(2, steps=2, seed=0).shape == (2, *shape)


def test_resume_does_not_retrain_the_autoencoder(tmp_path, monkeypatch):
    from sciddpm.training.trainer import Trainer

    x = _fields((1, 8, 8), n=16)
    run = {
        "pipeline": {
            "encoder": {"type": "vae", **TINY_VAE},
            "denoiser": TINY_UNET,
            "scheduler": {"type": "ddpm"},
        },
        "train": {"steps": 4, "batch_size": 4, "warmup_steps": 1, "log_every": 2, "checkpoint_every": 2},
    }
    whole = train(run, tmp_path / "whole", source=ArraySource.from_array(x), progress=False)
    part = Trainer(run, tmp_path / "part", source=ArraySource.from_array(x), progress=False)
    part.cfg = part.cfg.model_copy(update={"steps": 2})  # stop after the step-2 checkpoint
    part.fit()

    def no_second_stage(self, source):
        raise AssertionError("the autoencoder stage ran again on resume")

    monkeypatch.setattr(VAE, "fit", no_second_stage)
    resumed = train(run, tmp_path / "part", source=ArraySource.from_array(x), resume=True, progress=False)
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), k
