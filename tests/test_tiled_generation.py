"""Tiled generation (sciddpm.pipeline.tiling): tiles, weights, per-tile conditions, 1-3-D domains, blocks."""

from __future__ import annotations

import pytest
import torch

from sciddpm import seeding
from sciddpm.pipeline import Pipeline
from sciddpm.pipeline.tiling import block_layout, sample_tiled, slice_condition, tile_origins, tile_weight


def _pipe(data_shape: tuple[int, ...], conditioner: dict | None = None, scheduler: str = "ddim") -> Pipeline:
    torch.manual_seed(0)
    config = {
        "encoder": {"type": "identity"},
        "denoiser": {"type": "unet", "channels": [8, 8], "blocks_per_level": 1, "groups": 4, "heads": 1,
                     "mid_attention": False},
        "conditioner": conditioner or {"type": "none"},
        "scheduler": {"type": scheduler},
    }  # fmt: skip
    return Pipeline.from_config(config, data_shape=data_shape, num_classes=3 if conditioner else None)


def test_tile_layout_covers_the_domain_flush() -> None:
    assert tile_origins(16, 8, 4) == [0, 4, 8]
    assert tile_origins(14, 8, 2) == [0, 6]
    assert tile_origins(8, 8, 0) == [0]
    with pytest.raises(ValueError, match="larger than the domain"):
        tile_origins(4, 8, 2)
    with pytest.raises(ValueError, match="overlap"):
        tile_origins(16, 8, 8)


def test_tile_weight_is_a_product_of_ramps_in_any_dimension() -> None:
    w = tile_weight((4, 8, 8), (0, 2, 1))
    assert w.shape == (4, 8, 8)
    assert w[0, 0, 0] == pytest.approx(1 / 3 * 1 / 2) and w[2, 4, 4] == 1
    torch.testing.assert_close(w[1], w[3])  # no ramp along the first dim
    with pytest.raises(ValueError, match="different lengths"):
        tile_weight((8, 8), (2,))


def test_slice_condition_cuts_domain_sized_fields_and_passes_the_rest() -> None:
    image = torch.arange(2 * 6 * 10.0).reshape(2, 6, 10)
    cond = {"field": image, "time": torch.ones(4), "label": 2, "list": [image, 3]}
    region = (slice(1, 5), slice(2, 10))
    part = slice_condition(cond, (6, 10), region)
    torch.testing.assert_close(part["field"], image[:, 1:5, 2:10])
    torch.testing.assert_close(part["list"][0], image[:, 1:5, 2:10])
    assert part["label"] == 2 and part["time"].shape == (4,) and part["list"][1] == 3


@pytest.mark.parametrize("data_shape", [(1, 8), (2, 8, 8), (1, 4, 8, 8)])
def test_one_tile_is_pipe_sample(data_shape: tuple[int, ...]) -> None:
    pipe = _pipe(data_shape)
    one = sample_tiled(pipe, 2, None, data_shape[1:], overlap=0, steps=3, seed=2)
    torch.testing.assert_close(one, pipe.sample(2, steps=3, seed=2), rtol=1e-4, atol=1e-4)


def test_a_larger_3d_domain_with_a_class_condition() -> None:
    pipe = _pipe((1, 4, 8, 8), {"type": "class_label"})
    out = sample_tiled(pipe, 2, 1, (6, 12, 8), overlap=(2, 4, 0), steps=2, seed=0)
    assert out.shape == (2, 1, 6, 12, 8) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="has 2 dims but the pipeline's patch"):
        sample_tiled(pipe, 1, 1, (12, 8), steps=2)


def test_field_noise_is_the_same_at_a_cell_whatever_region_draws_it() -> None:
    def field(region: tuple[slice, ...]) -> torch.Tensor:
        return seeding.field_noise(seeding.FIELD_NOISE, 3, (1, 0), region, (4, 5))

    whole = field((slice(0, 13), slice(0, 17)))
    assert whole.shape == (13, 17) and abs(float(whole.mean())) < 0.3 and 0.7 < float(whole.std()) < 1.3
    torch.testing.assert_close(field((slice(3, 11), slice(6, 9))), whole[3:11, 6:9], rtol=0, atol=0)
    torch.testing.assert_close(field((slice(4, 8), slice(0, 5))), whole[4:8, 0:5], rtol=0, atol=0)
    other = seeding.field_noise(seeding.FIELD_NOISE, 3, (2, 0), (slice(0, 13), slice(0, 17)), (4, 5))
    assert not torch.equal(other, whole)  # another sample index, another field
    with pytest.raises(ValueError, match="region of 1 dims for chunks of 2"):
        seeding.field_noise(seeding.FIELD_NOISE, 0, (0,), (slice(0, 4),), (4, 4))
    with pytest.raises(ValueError, match="start at >= 0"):
        seeding.field_noise(seeding.FIELD_NOISE, 0, (0,), (slice(-1, 4),), (4,))


def test_block_layout_partitions_the_domain_and_grows_blocks_to_tile_edges() -> None:
    shape, tile, overlap = (40, 30), (8, 8), (2, 2)
    layout = block_layout(shape, (16, 12), (3, 0), tile, overlap)
    covered = torch.zeros(shape, dtype=torch.int64)
    edges = [{o for o in tile_origins(s, t, v)} for s, t, v in zip(shape, tile, overlap, strict=True)]
    for outer, inner in layout:
        covered[inner] += 1
        for o, i, m, size, t, starts in zip(outer, inner, (3, 0), shape, tile, edges, strict=True):
            assert o.start <= max(0, i.start - m) and o.stop >= min(size, i.stop + m)
            assert o.start in starts and o.stop - t in starts  # on the domain's own tile grid
    assert bool((covered == 1).all()) and len(layout) == 3 * 3
    with pytest.raises(ValueError, match="differ in length"):
        block_layout(shape, (16,), (3, 0), tile, overlap)
    with pytest.raises(ValueError, match="margins >= 0"):
        block_layout(shape, (16, 12), (-1, 0), tile, overlap)


def _coupled_pipe(scheduler: str, data_shape: tuple[int, ...] = (1, 8, 8)) -> Pipeline:
    """A pipeline whose zero-initialised output layers are made random, so x0 depends on neighbours."""
    pipe = _pipe(data_shape, scheduler=scheduler)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in (pipe.trainable, pipe.ema):
            for param in module.parameters():
                if not param.any():
                    param.copy_(torch.randn(param.shape, generator=g) * 0.05)
    return pipe


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm"])
def test_blocks_agree_with_one_block_up_to_the_margin(scheduler: str) -> None:
    pipe = _coupled_pipe(scheduler)
    kw = {"overlap": 2, "steps": 3, "seed": 1, "progress": False}
    one = sample_tiled(pipe, 3, None, (12, 20), block=(12, 20), **kw)
    other_seed = sample_tiled(pipe, 3, None, (12, 20), block=(12, 20), **{**kw, "seed": 2})
    # A margin over the whole domain: every block is the one-block run, cut.
    blocks = sample_tiled(pipe, 3, None, (12, 20), block=(5, 7), margin=20, batch_size=2, **kw)
    torch.testing.assert_close(blocks, one, rtol=1e-5, atol=1e-4)
    # A narrow one: the blocks (columns 0-9, 10-19) see the same tiles and field noise as the whole
    # run, so they differ only near their border, by far less than another sample does.
    near = sample_tiled(pipe, 3, None, (12, 20), block=(12, 10), margin=2, **kw)
    diff = (near - one).abs().amax(dim=(0, 1, 2))
    assert float(diff[[0, 1, 2, 3, 17, 18, 19]].max()) < 1e-3
    # Near the border they do differ (the network couples neighbours, so the far cells' agreement
    # above means something), by less than a thousandth of what separates two samples.
    assert 1e-4 < float(diff[8:12].max()) < 1e-3 * float((other_seed - one).abs().mean())


def test_blocks_of_a_3d_domain_assemble_the_one_block_run() -> None:
    pipe = _coupled_pipe("ddim", (1, 4, 8, 8))
    kw = {"overlap": (0, 2, 2), "steps": 2, "seed": 3, "progress": False}
    one = sample_tiled(pipe, 2, None, (6, 12, 10), block=(6, 12, 10), **kw)
    blocks = sample_tiled(pipe, 2, None, (6, 12, 10), block=(3, 5, 4), margin=12, **kw)
    torch.testing.assert_close(blocks, one, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match=r"block .* has 2 entries for 3 spatial dims: give one number or 3"):
        sample_tiled(pipe, 2, None, (6, 12, 10), block=(3, 5), **kw)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        sample_tiled(pipe, 2, None, (6, 12, 10), batch_size=0, **kw)


def test_tiled_samples_do_not_depend_on_the_batch_size() -> None:
    pipe = _pipe((1, 8, 8), scheduler="ddpm")
    kw = {"overlap": 4, "steps": 2, "seed": 5, "progress": False}
    torch.testing.assert_close(
        sample_tiled(pipe, 3, None, (8, 16), batch_size=1, **kw), sample_tiled(pipe, 3, None, (8, 16), **kw)
    )
