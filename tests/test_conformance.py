"""The conformance kit: every built-in component passes it, and each check catches its violation.

The second half builds components that break one point of a contract each, and asserts that the
kit names exactly that check, with the value seen: a check that could not fail would pass them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import BaseModel

from sciddpm import builtin
from sciddpm.components.conditioners import ClassLabel, ClassLabelConfig
from sciddpm.components.encoders import Standardize
from sciddpm.data.arrays import ArraySource
from sciddpm.data.captions import CaptionedDigits, CaptionedDigitsConfig
from sciddpm.diffusion.scheduler_configs import EulerConfig
from sciddpm.diffusion.schedulers import Euler
from sciddpm.hooks import Component
from sciddpm.interfaces import Conditioner, Conditioning, Metric, Sample
from sciddpm.nn.unet import UNet, UNetConfig
from sciddpm.testing import Case, ConformanceError, check_component, checks_for, parametrize_with_checks
from sciddpm.testing.data_checks import DATA_CHECKS

TINY = {"channels": [8, 16], "groups": 4, "heads": 1, "blocks_per_level": 1}
#: The small VAE `sciddpm plugins --check` builds (its record's check_params).
TINY_VAE = dict(next(c for c in builtin.sciddpm_components() if c.name == "vae").check_params)
TINY_CLIP = {"data_shape": [1, 8, 8], "width": 16, "heads": 2, "layers": 1, "projection_dim": 16, "steps": 0}
SCHEDULERS = ("ddpm", "ddim", "euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "unipc")


def _captions() -> CaptionedDigits:
    source = CaptionedDigits(CaptionedDigitsConfig(size=8, split="train"))
    source._x, source._labels, source._template = source._x[:32], source._labels[:32], source._template[:32]
    return source


def _metric_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Reference fields (kelvin and a unit channel) and generated ones that are off in scale and offset."""
    g = torch.Generator().manual_seed(0)
    reference = torch.randn(120, 2, 8, 8, generator=g)
    reference[:, 0] = 280 + 15 * reference[:, 0]
    return reference.flip(0) * 1.1 + 0.3, reference


#: A tiny diffusers U-Net config: diffusers_unet builds it randomly initialised when no weights are given.
TINY_DIFFUSERS_UNET = {
    "_class_name": "UNet2DModel",
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "attention_head_dim": 4,
}

BUILTINS = [
    Case("encoder", "identity"),
    Case("encoder", "range", {"data_range": [0.0, 16.0]}),
    Case("encoder", "standardize"),
    Case("encoder", "vae", TINY_VAE),
    Case("encoder", "vae", {**TINY_VAE, "dims": 3, "in_channels": 1}, id="vae-3d"),
    Case("denoiser", "unet", TINY),
    Case("denoiser", "unet", {**TINY, "dims": 1}, id="unet-1d"),
    Case("denoiser", "unet", {**TINY, "dims": 3, "prediction": "eps"}, id="unet-3d"),
    Case(
        "denoiser",
        "unet",
        {**TINY, "concat_channels": 1, "vector_dim": 4, "token_dim": 6, "attention_levels": [1]},
        id="unet-conditioned",
    ),
    Case("denoiser", "diffusers_unet", {"unet_config": TINY_DIFFUSERS_UNET, "dims": 2, "in_channels": 1}),
    Case("conditioner", "none"),
    Case("conditioner", "class_label", {"num_classes": 3, "dim": 8}, inputs=[0, 1, 2]),
    Case("conditioner", "clip", TINY_CLIP, inputs=_captions()),
    *(Case("scheduler", name) for name in SCHEDULERS),
    *(Case("scheduler", "dpmpp_2m", {"process": p}, id=f"dpmpp_2m-{p}") for p in ("ve", "edm", "flow")),
    Case("scheduler", "heun", {"process": "edm"}, id="heun-edm"),
    Case("data", "digits"),
    Case("data", "digits_captions"),
    Case("data", "skimage", {"count": 8, "patch": 16}),
    *(
        Case(
            "metric",
            name,
            {"cells": 2} if name in ("frechet", "kid", "prdc") else {},
            inputs=_metric_inputs(),
        )
        for name in ("wasserstein", "sliced_wasserstein", "spectrum", "frechet", "kid", "prdc")
    ),
]


@parametrize_with_checks(BUILTINS)
def test_builtin_components_keep_their_contracts(check):
    check()


def test_every_builtin_component_is_checked(tmp_path):
    from sciddpm.registry import get_registry

    checked = {(c.kind, c.component) for c in BUILTINS} | {("data", "array"), ("metric", "clip_score")}
    builtin = {(e.kind, e.name) for e in get_registry().entries() if e.plugin == "sciddpm"}
    assert builtin <= checked, builtin - checked


def test_array_source_with_mask_and_labels_passes(tmp_path):
    x = np.random.default_rng(0).normal(280, 15, (6, 2, 5, 7)).astype(np.float32)
    mask = np.ones_like(x)
    mask[:, :, 0, 0] = 0
    path = tmp_path / "samples.npz"
    np.savez(path, x=x, y=np.arange(6) % 3, mask=mask)
    outcomes = check_component("data", "array", path=str(path), key="x", labels_key="y", mask_key="mask")
    assert {o.check: o.status for o in outcomes}["class_labels"] == "pass"


def test_clip_score_passes_with_matching_images_as_perfect(tmp_path):
    from sciddpm.components.clip import ClipConditioner, ClipConditionerConfig

    source = _captions()
    clip = ClipConditioner(ClipConditionerConfig(**{**TINY_CLIP, "steps": 40, "batch_size": 16}))
    clip.fit(source)
    clip.save_pretrained(tmp_path / "clip")
    threes = torch.stack([s.x for s in source if s.condition.endswith("3")] or [source[0].x])[:4]
    noise = torch.randn(threes.shape, generator=torch.Generator().manual_seed(0)) * 8 + 8
    caption = "a handwritten 3"
    check_component("metric", "clip_score", weights=str(tmp_path / "clip"), inputs=(noise, caption, threes))


def test_checks_are_named_pytest_cases_with_readable_ids():
    mark = parametrize_with_checks([("encoder", "standardize"), Case("data", "digits", id="d")])
    ids = [p.id for p in mark.args[1]]
    assert "standardize-round_trip" in ids and "d-same_sample_for_same_index" in ids
    assert len(ids) == len(checks_for("encoder")) + len(checks_for("data"))


# --------------------------------------------------------------------------- each check catches its fault


def _failed(kind: str, component, **kw) -> dict[str, str]:
    with pytest.raises(ConformanceError) as info:
        check_component(kind, component, **kw)
    message = str(info.value)
    assert all(o.check in message and o.contract in message for o in info.value.outcomes)
    return {o.check: o.message for o in info.value.outcomes}


class _Source(ArraySource):
    def __init__(self, x: np.ndarray | None = None) -> None:
        self.config = None
        super()._setup(
            np.zeros((4, 1, 3, 3), np.float32) if x is None else x, None, None, name="t", mask_hint=""
        )


class NaNSource(_Source):
    def __getitem__(self, index):
        sample = super().__getitem__(index)
        return Sample(sample.x * float("nan"))


class NoisySource(_Source):
    def __getitem__(self, index):
        return Sample(super().__getitem__(index).x + torch.rand(1))


class EndlessSource(_Source):
    def __getitem__(self, index):
        return super().__getitem__(index % len(self))


class BadDescribeSource(_Source):
    def describe(self):
        return {"mean": torch.zeros(1)}


class WrongShapeSource(_Source):
    def __getitem__(self, index):
        return Sample(super().__getitem__(index).x[:, :2])


class LateNaNSource(_Source):
    """Passes NaN on in one sample deep inside the source."""

    def __init__(self):
        super().__init__(np.zeros((80, 1, 3, 3), np.float32))

    def __getitem__(self, index):
        sample = super().__getitem__(index)
        return Sample(sample.x * float("nan")) if index == 60 else sample


class BadOrderSource(_Source):
    def epoch_order(self, epoch, seed):
        return [0, 0, 1, 2]


def test_data_checks_catch_their_faults():
    assert set(_failed("data", NaNSource)) == {"finite_or_masked"}
    assert set(_failed("data", NoisySource)) == {"same_sample_for_same_index"}
    assert "returned a sample" in _failed("data", EndlessSource)["index_out_of_range"]
    assert "JSON" in _failed("data", BadDescribeSource)["describe_is_json"]
    assert "sample_shape is (1, 3, 3)" in _failed("data", WrongShapeSource)["sample_type_and_shape"]
    assert set(_failed("data", BadOrderSource)) == {"epoch_order"}
    probed = set(_failed("data", LateNaNSource))  # 60 is among the 16 samples drawn beyond the first 32
    assert probed == {"finite_or_masked"}


class ForgetfulStandardize(Standardize):
    """Keeps its fit in plain attributes: lost on save -> load."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict[prefix + "mean"] = torch.zeros_like(state_dict[prefix + "mean"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class LossyStandardize(Standardize):
    def decode(self, z):
        return super().decode(z.round())


class LenientStandardize(Standardize):
    def encode(self, x):
        return x if not bool(self.fitted) else super().encode(x)


class TwoDStandardize(Standardize):
    """Declares 2-D data but takes any."""

    spatial_dims = 2


def test_encoder_checks_catch_their_faults():
    assert "was accepted" in _failed("encoder", TwoDStandardize)["wrong_dims"]
    assert set(_failed("encoder", ForgetfulStandardize)) == {"save_load"}
    assert set(_failed("encoder", LossyStandardize)) == {"round_trip"}
    assert "returned latents" in _failed("encoder", LenientStandardize)["fit_before_use"]


def _unet(**kw):
    return UNet(UNetConfig(dims=2, in_channels=2, **{**TINY, **kw}))


class BatchNormed(UNet):
    def forward(self, x_t, noise, cond=None):
        out = super().forward(x_t, noise, cond)
        return out - out.mean(0, keepdim=True)


class VectorIgnoring(UNet):
    def forward(self, x_t, noise, cond=None):
        cond = cond or Conditioning()
        return super().forward(x_t, noise, Conditioning(cond.concat, torch.zeros_like(cond.vector)))


class WithUnused(UNet):
    def __init__(self, config):
        super().__init__(config)
        self.unused = torch.nn.Linear(2, 2)


def test_denoiser_checks_catch_their_faults():
    config = UNetConfig(dims=2, in_channels=2, **TINY)
    assert set(_failed("denoiser", lambda: BatchNormed(config))) == {"batch_independent"}
    failed = _failed("denoiser", lambda: VectorIgnoring(config.model_copy(update={"vector_dim": 4})))
    assert set(failed) == {"conditioning_parts"} and "cond.vector" in failed["conditioning_parts"]
    failed = _failed("denoiser", lambda: WithUnused(config))
    assert "unused.weight" in failed["every_parameter_gets_gradient"]


class ShortNull(ClassLabel):
    def null(self, batch_size):
        return Conditioning(vector=super().null(batch_size).vector[:, :-1])


class DropsEverything(ClassLabel):
    def drop(self, raw, keep):
        return self.null(len(keep))


def test_conditioner_checks_catch_their_faults():
    config = ClassLabelConfig(num_classes=3, dim=8)
    failed = _failed("conditioner", lambda: ShortNull(config), inputs=[0, 1, 2])
    assert set(failed) >= {"null_matches_forward"} and "vector" in failed["null_matches_forward"]
    assert set(_failed("conditioner", lambda: DropsEverything(config), inputs=[0, 1, 2])) == {"drop_rows"}
    # Without example conditions a class-label conditioner gets class indices; any other is a failure
    # naming what to give (a test that forgot inputs= must not pass with nothing checked).
    outcomes = check_component("conditioner", lambda: ClassLabel(config))
    assert {o.check for o in outcomes if o.status == "not run"} == {
        "config_rejects_unknown_keys",
        "config_round_trips",
    }
    failed = _failed("conditioner", Captions)
    assert "forward_parts" in failed and "no example conditions" in failed["forward_parts"]
    failed = _failed("conditioner", lambda: OneRowOnly(config), inputs=[0, 1, 2])
    assert set(failed) == {"forward_one_condition"}


class OneRowOnly(ClassLabel):
    """Conditions only the first row when given one condition for the batch."""

    def forward(self, raw, batch_size):
        if isinstance(raw, int):
            return super().forward([raw] + [(raw + 1) % 3] * (batch_size - 1), batch_size)
        return super().forward(raw, batch_size)


class Captions(torch.nn.Module, Conditioner):
    """Raw conditions the kit cannot guess (captions)."""

    vector_dim = 4

    def forward(self, raw, batch_size):
        return Conditioning(vector=torch.tensor([[float(len(c))] * 4 for c in raw]))

    def null(self, batch_size):
        return Conditioning(vector=torch.zeros(batch_size, 4))


class Stuck(Euler):
    """Never moves: returns the state it was given."""

    def step(self, model_output, index, x_t, prediction_type, generator=None, noise=None):
        out = super().step(model_output, index, x_t, prediction_type, generator, noise)
        return type(out)(x_t, out.x0)


class Rising(Euler):
    def set_timesteps(self, steps):
        super().set_timesteps(steps)
        self.timesteps = self.timesteps.flip(0)


class Shrunk(Euler):
    """Biases every sample by 2 %."""

    def step(self, model_output, index, x_t, prediction_type, generator=None, noise=None):
        out = super().step(model_output, index, x_t, prediction_type, generator, noise)
        last = index == len(self.timesteps) - 1
        return type(out)(out.prev_sample * 0.98, out.x0) if last else out


class WrongTarget(Euler):
    def target(self, x0, eps, t, prediction_type):
        return super().target(x0, eps, t, "eps" if prediction_type == "v" else prediction_type)


def test_scheduler_checks_catch_their_faults():
    failed = _failed("scheduler", lambda: Stuck(EulerConfig()))
    assert set(failed) == {"converges_on_gaussian"} and "after 100 steps" in failed["converges_on_gaussian"]
    assert "do not decrease" in _failed("scheduler", lambda: Rising(EulerConfig()))["timesteps"]
    # A 2 % bias passes the tolerance at 100 steps (0.039) but does not shrink with more steps.
    failed = _failed("scheduler", lambda: Shrunk(EulerConfig()))
    assert set(failed) == {"converges_on_gaussian"} and "does not shrink" in failed["converges_on_gaussian"]
    failed = _failed("scheduler", lambda: WrongTarget(EulerConfig()))
    assert set(failed) == {"training_side"} and "target for 'v'" in failed["training_side"]


class Worst(Metric):
    higher_is_better = True

    def __call__(self, generated, reference):
        return float(((torch.as_tensor(generated) - torch.as_tensor(reference)) ** 2).mean())


class Constant(Metric):
    def __call__(self, generated, reference):
        return 0.0


class NaNMetric(Worst):
    def __call__(self, generated, reference):
        return float("nan")


class Bias(Metric):
    def __call__(self, generated, reference):
        return float((torch.as_tensor(generated) - torch.as_tensor(reference)).mean())


class TargetedBias(Bias):
    target = 0.0


def test_metric_checks_catch_their_faults():
    x = torch.zeros(4, 1, 3, 3)
    # A signed error is best at 0, not at its lowest: without a declared target the kit says so.
    assert "lower is better" in _failed("metric", Bias, inputs=(x - 1, x))["perfect_is_best"]
    check_component("metric", TargetedBias, inputs=(x - 1, x))
    assert "target" in _failed("metric", TargetedBias, inputs=(x - 1, x, x + 2))["perfect_is_best"]
    assert set(_failed("metric", Worst, inputs=(x + 1, x))) == {"perfect_is_best"}
    assert set(_failed("metric", NaNMetric, inputs=(x + 1, x))) >= {"returns_finite_floats", "deterministic"}
    assert "no example inputs" in _failed("metric", Worst)["returns_finite_floats"]
    assert "ignores its input" in _failed("metric", Constant, inputs=(x + 1, x))["perfect_is_best"]


class LaxConfig(BaseModel):
    num_classes: int = 3


def test_config_and_factory_faults_are_reported_with_the_check():
    record = Component(
        "conditioner", "lax", lambda cfg: ClassLabel(ClassLabelConfig(num_classes=3)), LaxConfig
    )
    failed = _failed("conditioner", record, inputs=[0, 1])
    assert (
        set(failed) == {"config_rejects_unknown_keys"}
        and 'extra="forbid"' in failed["config_rejects_unknown_keys"]
    )

    def broken():
        raise OSError("cannot open the lab's share")

    with pytest.raises(ConformanceError) as info:
        check_component("data", broken)
    (outcome,) = info.value.outcomes
    assert outcome.check == "builds" and "OSError: cannot open the lab's share" in outcome.message
    assert len(checks_for("data")) == len(DATA_CHECKS) + 2


def test_an_instance_instead_of_a_factory_is_a_clear_error():
    with pytest.raises(TypeError, match="factory"):
        check_component("data", ArraySource.from_array(np.zeros((2, 1, 4))).__getitem__(0))
    with pytest.raises(TypeError, match="instance; the kit builds several fresh ones"):
        check_component("encoder", Standardize())
    with pytest.raises(ValueError, match="unknown component kind 'sampler'"):
        check_component("sampler", "ddim")


def test_the_plugin_reference_lists_every_check_with_its_contract():
    from pathlib import Path

    from sciddpm.interfaces import KINDS

    page = (Path(__file__).resolve().parent.parent / "docs" / "plugin-reference.md").read_text()
    for kind in KINDS:
        for check in checks_for(kind):
            assert f"| `{check.name}` | {check.contract} |" in page, (kind, check.name)
    for field in Component.__dataclass_fields__:
        assert f"| `{field}` |" in page, field
