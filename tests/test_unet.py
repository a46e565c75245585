"""The U-Net denoiser: any shape in, same shape out; boundary modes; conditioning; clear errors."""

from __future__ import annotations

import re
from contextlib import AbstractContextManager

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from sciddpm.interfaces import Conditioning, Denoiser
from sciddpm.nn.unet import Attention, UNet, UNetConfig, Upsample, pad_axes

SMALL = dict(channels=[8, 16, 16], groups=4, heads=2, blocks_per_level=1, attention_levels=[1])


def small(**kw: object) -> UNet:
    torch.manual_seed(0)
    return UNet(UNetConfig(**{**SMALL, **kw}))


def randomized(model: UNet) -> UNet:
    """Give the zero-initialised layers weights, so outputs depend on everything."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def raises(error: type[Exception], text: str) -> AbstractContextManager[object]:
    """Expect ``error`` whose message contains ``text`` verbatim."""
    return pytest.raises(error, match=re.escape(text))


def noise(batch: int) -> torch.Tensor:
    return torch.linspace(10.0, 900.0, batch)


@pytest.mark.parametrize(
    "dims, spatial",
    [(1, (187,)), (2, (37, 53)), (3, (12, 20, 20))],
)
def test_any_size_round_trips_the_shape(dims: int, spatial: tuple[int, ...]) -> None:
    model = randomized(small(dims=dims, in_channels=3, out_channels=2, padding="reflect"))
    x = torch.randn(2, 3, *spatial)
    out = model(x, noise(2))
    assert out.shape == (2, 2, *spatial)
    assert torch.isfinite(out).all()
    assert isinstance(model, Denoiser)
    assert (model.spatial_dims, model.in_channels, model.out_channels) == (dims, 3, 2)


def test_out_channels_defaults_to_in_channels_and_prediction_is_declared() -> None:
    model = small(dims=1, in_channels=4, prediction="v")
    assert model.out_channels == 4
    assert model.prediction_type == "v"


def test_output_is_zero_at_init_and_learns_after_one_step() -> None:
    model = small(dims=2, in_channels=1)
    x = torch.randn(4, 1, 16, 16)
    assert torch.equal(model(x, noise(4)), torch.zeros_like(x))

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = (model(x, noise(4)) - torch.randn_like(x)).square().mean()
    loss.backward()
    opt.step()
    assert model(x, noise(4)).abs().max() > 0


def test_noise_level_changes_the_output_and_a_scalar_broadcasts() -> None:
    model = randomized(small(dims=1, in_channels=1))
    x = torch.randn(2, 1, 32)
    assert not torch.allclose(model(x, torch.full((2,), 10.0)), model(x, torch.full((2,), 500.0)))
    torch.testing.assert_close(model(x, torch.tensor(10.0)), model(x, torch.full((2,), 10.0)))


def test_circular_axis_is_shift_equivariant_and_other_modes_are_not() -> None:
    # 3 levels: total downsampling 4; 16 x 24 needs no internal padding.
    model = randomized(small(dims=2, in_channels=2, padding=["reflect", "circular"]))
    x = torch.randn(2, 2, 16, 24)

    def shifted(t: torch.Tensor, axis: int) -> torch.Tensor:
        return torch.roll(t, shifts=8, dims=axis)

    with torch.no_grad():
        out = model(x, noise(2))
        torch.testing.assert_close(model(shifted(x, 3), noise(2)), shifted(out, 3), atol=1e-5, rtol=1e-4)
        # The reflect axis (and a zero-padded net) must not be periodic: the test can fail.
        assert not torch.allclose(model(shifted(x, 2), noise(2)), shifted(out, 2), atol=1e-3)
        zeros = randomized(small(dims=2, in_channels=2))
        assert not torch.allclose(zeros(shifted(x, 3), noise(2)), shifted(zeros(x, noise(2)), 3), atol=1e-3)


def test_circular_in_3d_uses_every_axis() -> None:
    model = randomized(small(dims=3, in_channels=1, padding="circular", attention_levels=[]))
    x = torch.randn(1, 1, 8, 8, 12)
    with torch.no_grad():
        out = model(x, noise(1))
        rolled = model(torch.roll(x, shifts=(4, 4, 8), dims=(2, 3, 4)), noise(1))
    torch.testing.assert_close(
        rolled, torch.roll(out, shifts=(4, 4, 8), dims=(2, 3, 4)), atol=1e-5, rtol=1e-4
    )


def test_pad_axes_modes_and_tiny_axes() -> None:
    x = torch.arange(3.0).view(1, 1, 3)
    assert pad_axes(x, [(2, 2)], ["circular"]).flatten().tolist() == [1, 2, 0, 1, 2, 0, 1]
    assert pad_axes(x, [(2, 2)], ["reflect"]).flatten().tolist() == [2, 1, 0, 1, 2, 1, 0]
    assert pad_axes(x, [(1, 1)], ["zeros"]).flatten().tolist() == [0, 0, 1, 2, 0]
    assert pad_axes(x, [(2, 1)], ["replicate"]).flatten().tolist() == [0, 0, 0, 1, 2, 2]
    # Reflect wider than the axis folds again; a length-1 axis repeats its value.
    assert pad_axes(x, [(0, 5)], ["reflect"]).flatten().tolist() == [0, 1, 2, 1, 0, 1, 2, 1]
    assert pad_axes(torch.ones(1, 1, 1), [(3, 4)], ["reflect"]).flatten().tolist() == [1.0] * 8
    # Per axis: rows zero-padded, columns circular.
    y = pad_axes(torch.ones(1, 1, 2, 2), [(1, 0), (1, 1)], ["zeros", "circular"])
    assert y.shape == (1, 1, 3, 4) and y[0, 0, 0].abs().sum() == 0 and y[0, 0, 1:].eq(1).all()


def test_tiny_inputs_work_in_every_mode() -> None:
    for mode in ["zeros", "reflect", "circular"]:
        model = small(dims=2, in_channels=1, padding=mode)
        assert model(torch.randn(1, 1, 1, 3), noise(1)).shape == (1, 1, 1, 3)


def test_conditioning_vector_changes_the_output() -> None:
    model = randomized(small(dims=1, in_channels=1, vector_dim=5))
    x = torch.randn(2, 1, 40)
    a = model(x, noise(2), Conditioning(vector=torch.zeros(2, 5)))
    b = model(x, noise(2), Conditioning(vector=torch.ones(2, 5)))
    assert not torch.allclose(a, b)
    with raises(ValueError, "vector_dim=5 but cond.vector is missing"):
        model(x, noise(2))
    with raises(ValueError, "cond.vector must have shape (2, 5), got (2, 4)"):
        model(x, noise(2), Conditioning(vector=torch.zeros(2, 4)))


def test_concat_channels_are_used_and_must_match_the_grid() -> None:
    model = randomized(small(dims=2, in_channels=1, concat_channels=2))
    x = torch.randn(2, 1, 21, 30)
    a = model(x, noise(2), Conditioning(concat=torch.zeros(2, 2, 21, 30)))
    b = model(x, noise(2), Conditioning(concat=torch.randn(2, 2, 21, 30)))
    assert a.shape == x.shape and not torch.allclose(a, b)
    with raises(ValueError, "cond.concat must have shape (2, 2, 21, 30), got (2, 2, 20, 30)"):
        model(x, noise(2), Conditioning(concat=torch.zeros(2, 2, 20, 30)))


def test_tokens_are_attended_to() -> None:
    model = randomized(small(dims=2, in_channels=1, token_dim=6))
    x = torch.randn(2, 1, 12, 12)
    a = model(x, noise(2), Conditioning(tokens=torch.zeros(2, 3, 6)))
    b = model(x, noise(2), Conditioning(tokens=torch.randn(2, 7, 6)))  # any number of tokens
    assert a.shape == x.shape and not torch.allclose(a, b)
    with raises(ValueError, "cond.tokens must have shape (2, L, 6)"):
        model(x, noise(2), Conditioning(tokens=torch.zeros(2, 3, 5)))


def test_unexpected_conditioning_is_an_error_not_ignored() -> None:
    model = small(dims=1, in_channels=1)
    with raises(ValueError, "vector_dim=0 but got cond.vector"):
        model(torch.randn(2, 1, 16), noise(2), Conditioning(vector=torch.zeros(2, 3)))


def test_wrong_channels_and_rank_name_the_values() -> None:
    model = small(dims=2, in_channels=3)
    with raises(ValueError, "UNet expects 3 input channels, got 1 (x_t has shape (2, 1, 8, 8))"):
        model(torch.randn(2, 1, 8, 8), noise(2))
    with raises(ValueError, "built for 2-D data (B, C, H, W); got x_t of shape (2, 3, 8) with 1"):
        model(torch.randn(2, 3, 8), noise(2))
    with raises(ValueError, "noise must have shape (2,)"):
        model(torch.randn(2, 3, 8, 8), noise(3))


def test_config_errors_name_the_values() -> None:
    with raises(ValidationError, "groups=8 must divide every width in channels=[32, 60]; 60"):
        UNetConfig(dims=2, in_channels=1, channels=[32, 60])
    with raises(ValidationError, "heads=3 must divide the attention width 16"):
        UNetConfig(dims=2, in_channels=1, channels=[8, 16], groups=4, heads=3)
    with raises(ValidationError, "attention_levels=[5] has 5, but there are only 3 levels"):
        UNetConfig(attention_levels=[5])
    with raises(ValidationError, "3 modes for 2-D data"):
        UNetConfig(dims=2, padding=["zeros", "circular", "reflect"])
    with raises(ValidationError, "token_dim=4 needs an attention block"):
        UNetConfig(token_dim=4, mid_attention=False)
    with raises(ValidationError, "chanels"):
        UNetConfig(chanels=[8, 16])
    with raises(ValidationError, "padding"):
        UNetConfig(padding="periodic")


def test_dims_and_channels_must_be_set_before_building() -> None:
    with raises(ValueError, "needs dims and in_channels (got dims=None, in_channels=1)"):
        UNet(UNetConfig(in_channels=1))


def test_config_round_trips_through_json() -> None:
    cfg = UNetConfig(dims=2, in_channels=1, padding=["reflect", "circular"], vector_dim=3)
    assert UNetConfig.model_validate_json(cfg.model_dump_json()) == cfg
    assert all(f.description for f in UNetConfig.model_fields.values())


# --- speed options and the fast paths compute the same function --------------------------------


@pytest.mark.parametrize(
    "dims, modes",
    [
        (1, ["reflect"]),
        (2, ["zeros", "circular"]),
        (2, ["reflect", "reflect"]),
        (3, ["circular", "reflect", "zeros"]),
    ],
)
def test_upsample_is_nearest_then_conv(dims: int, modes: list[str]) -> None:
    """The sub-pixel form must equal the textbook nearest-neighbour upsampling + 3-wide conv."""
    torch.manual_seed(0)
    up = Upsample(dims, 6, modes)
    x = torch.randn(2, 6, *[5, 4, 3][:dims], requires_grad=True)
    out = up(x, None, None)
    ref = up.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, [x, up.conv.conv.weight], g)
    ref_grads = torch.autograd.grad(ref, [x, up.conv.conv.weight], g)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


def test_attention_matches_the_conv1d_reference() -> None:
    """Attention applies its 1x1-conv weights as matmuls: same outputs as the conv formulation."""
    cfg = UNetConfig(**SMALL, dims=2, in_channels=1, token_dim=5)
    torch.manual_seed(0)
    attn = randomized(Attention(16, cfg.heads, cfg.groups, cfg.token_dim))
    x, tokens = torch.randn(2, 16, 6, 7), torch.randn(2, 3, 5)
    qkv = attn.to_qkv(attn.norm(x).flatten(2))
    q, k, v = (t.unflatten(1, (2, 8)).transpose(2, 3) for t in qkv.chunk(3, dim=1))
    kt, vt = (t.unflatten(2, (2, 8)).transpose(1, 2) for t in attn.to_kv_tokens(tokens).chunk(2, dim=2))
    k, v = torch.cat([k, kt], dim=2), torch.cat([v, vt], dim=2)
    weights = (q @ k.transpose(2, 3) / 8**0.5).softmax(-1)
    ref = x + attn.to_out((weights @ v).transpose(2, 3).flatten(1, 2)).view(x.shape)
    torch.testing.assert_close(attn(x, None, tokens), ref, atol=1e-5, rtol=1e-5)
    assert attn.to_qkv.weight.shape == (48, 16, 1)  # the state-dict layout saved pipelines have


def test_checkpointing_gives_the_same_outputs_and_gradients() -> None:
    kw = dict(dims=2, in_channels=2, token_dim=4, vector_dim=3, dropout=0.2)
    plain, ckpt = small(**kw), small(**kw, checkpointing=True)
    ckpt.load_state_dict(randomized(plain).state_dict())
    x, cond = torch.randn(2, 2, 12, 10), Conditioning(tokens=torch.randn(2, 3, 4), vector=torch.randn(2, 3))
    results = []
    for model in (plain.train(), ckpt.train()):
        torch.manual_seed(5)  # the same dropout masks; checkpointing must replay them in the backward
        out = model(x, noise(2), cond)
        out.square().mean().backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters()}))
    (out_a, grads_a), (out_b, grads_b) = results
    torch.testing.assert_close(out_a, out_b, atol=0, rtol=0)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-6, rtol=1e-5, msg=name)


def test_checkpointing_stores_fewer_activations() -> None:
    """Count the tensors autograd keeps: checkpointing must keep far fewer."""
    x = torch.randn(2, 1, 16, 16)

    def saved(model: UNet) -> int:
        count = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal count
            count += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.train()(x, noise(2)).sum().backward()
        return count

    full, ckpt = saved(small(dims=2, in_channels=1)), saved(small(dims=2, in_channels=1, checkpointing=True))
    assert ckpt < 0.5 * full


@pytest.mark.parametrize("dims", [2, 3])
def test_channels_last_gives_the_same_outputs(dims: int) -> None:
    spatial = (13, 18) if dims == 2 else (6, 8, 7)
    a = randomized(small(dims=dims, in_channels=2, channels_last=False, padding="reflect"))
    b = randomized(small(dims=dims, in_channels=2, channels_last=True, padding="reflect"))
    assert a.memory_format is None and b.memory_format is not None
    assert small(dims=dims, in_channels=2).memory_format is None  # off unless asked for
    assert small(dims=1, in_channels=2, channels_last=True).memory_format is None  # no 1-D format
    x = torch.randn(2, 2, *spatial)
    with torch.no_grad():
        out = b(x, noise(2))
        torch.testing.assert_close(out, a(x, noise(2)), atol=1e-5, rtol=1e-5)
    assert out.is_contiguous()  # handed back in the standard layout


def test_keyed_dropout_masks_follow_the_sample_not_the_batch() -> None:
    from sciddpm import seeding
    from sciddpm.nn.unet import KeyedDropout

    drop = KeyedDropout(0.5, key=3).train()
    x = torch.ones(4, 2, 5)
    with seeding.sample_positions(7, [10, 11, 12, 13]):
        whole = drop(x)
    with seeding.sample_positions(7, [12, 13]):
        half = drop(x[2:])
    assert torch.equal(whole[2:], half)  # sample 12's mask is its own, whatever the batch
    assert set(whole.unique().tolist()) == {0.0, 2.0} and not torch.equal(whole[0], whole[1])
    with seeding.sample_positions(7, [10, 11, 12, 13]):
        assert not torch.equal(KeyedDropout(0.5, key=4).train()(x), whole)  # layers draw apart
    assert torch.equal(drop.eval()(x), x)


def test_checkpointing_replays_keyed_dropout_masks() -> None:
    from sciddpm import seeding

    cfg = {"dims": 2, "in_channels": 1, "channels": [8, 16], "groups": 4, "heads": 1, "dropout": 0.3}
    plain = UNet(UNetConfig(**cfg)).train()
    ckpt = UNet(UNetConfig(**cfg, checkpointing=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    grads = []
    for model in (plain, ckpt):
        with seeding.sample_positions(1, [5, 6, 7]):
            model(x, torch.tensor([1.0, 2.0, 3.0])).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
