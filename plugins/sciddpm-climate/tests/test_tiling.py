"""Tiled generation: one tile is pipe.sample; several tiles cover a larger domain smoothly."""

from __future__ import annotations

import pytest
import torch
from climate_data import make_dataset
from sciddpm.pipeline import Pipeline

from sciddpm_climate.source import XarraySource
from sciddpm_climate.tiling import sample_tiled, tile_origins, tile_weight

TINY = {
    "encoder": {"type": "standardize"},
    "denoiser": {"type": "unet", "channels": [8, 16], "blocks_per_level": 1, "groups": 4, "heads": 1,
                 "mid_attention": False, "padding": ["reflect", "circular"]},
    "conditioner": {"type": "climate/fields", "coarse_channels": 1, "static_channels": 1, "dim": 8},
    "scheduler": {"type": "ddim"},
}  # fmt: skip


def test_tile_layout_and_weights() -> None:
    assert tile_origins(16, 8, 4) == [0, 4, 8]
    assert tile_origins(14, 8, 2) == [0, 6]
    assert tile_origins(8, 8, 0) == [0]
    w = tile_weight(8, 8, (2, 0))
    assert w[0, 0] == pytest.approx(1 / 3) and w[1, 3] == pytest.approx(2 / 3) and w[4, 0] == 1
    with pytest.raises(ValueError, match="larger than the domain"):
        tile_origins(4, 8, 2)
    with pytest.raises(ValueError, match="overlap"):
        tile_origins(16, 8, 8)


def test_one_tile_is_pipe_sample_and_larger_domains_are_covered() -> None:
    ds = make_dataset(nt=4, nlat=8, nlon=16, nan=False)
    patch = XarraySource.from_dataset(ds, variables=["tas"], static=["orog"], patch=[8, 8], coarsen=4)
    full = XarraySource.from_dataset(ds, variables=["tas"], static=["orog"], coarsen=4)
    torch.manual_seed(0)
    pipe = Pipeline.from_config(TINY, patch)
    cond = patch[0].condition
    one = sample_tiled(pipe, 2, cond, (8, 8), overlap=(0, 0), steps=3, seed=2)
    torch.testing.assert_close(one, pipe.sample(2, cond, steps=3, seed=2), rtol=1e-4, atol=1e-4)
    big = sample_tiled(pipe, 2, full[0].condition, (8, 16), overlap=(0, 4), steps=3, seed=2)
    assert big.shape == (2, 1, 8, 16) and torch.isfinite(big).all()
