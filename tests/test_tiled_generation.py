"""Tiled generation (sciddpm.pipeline.tiling): tile layout, weights, per-tile conditions, 1-3-D domains."""

from __future__ import annotations

import pytest
import torch

from sciddpm.pipeline import Pipeline
from sciddpm.pipeline.tiling import sample_tiled, slice_condition, tile_origins, tile_weight


def _pipe(data_shape: tuple[int, ...], conditioner: dict | None = None) -> Pipeline:
    torch.manual_seed(0)
    config = {
        "encoder": {"type": "identity"},
        "denoiser": {"type": "unet", "channels": [8, 8], "blocks_per_level": 1, "groups": 4, "heads": 1,
                     "mid_attention": False},
        "conditioner": conditioner or {"type": "none"},
        "scheduler": {"type": "ddim"},
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
