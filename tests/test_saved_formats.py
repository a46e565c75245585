"""Directories saved by earlier sciddpm versions still load and sample as they did.

``fixtures/pipeline_v0_1`` was saved by sciddpm 0.1.0 before the core re-cut, together with the
samples that code drew from it (``fixtures/make_pipeline_v0_1.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sciddpm.pipeline import Pipeline

FIXTURE = Path(__file__).parent / "fixtures" / "pipeline_v0_1"
RUNS = json.loads((FIXTURE / "expected_runs.json").read_text())

#: Samplers whose update was changed on purpose since 0.1, and why. Their samples are compared
#: with ``fixtures/pipeline_v0_1_changed_samplers.npz`` (``fixtures/make_changed_samples.py``).
CHANGED_SINCE_0_1 = {
    # Heun's trapezoid in sigma on this cosine VP's first step (sigma 22 026 -> 3.8) drew samples
    # up to |x| = 1 294 in 0.1 (every other sampler: < 9); its correction on steps where sigma
    # falls more than 2x is now exponential.
    "heun": "issue 21, item 2",
    # UniPC-3 takes steps that grow and are longer than 0.3 in log-SNR at second order (the last
    # steps of these 6 trailing ones); with lower_order_uneven=False it draws 0.1's samples (below).
    "unipc_3": "issue 21, item 1",
}


@pytest.fixture(scope="module")
def legacy() -> Pipeline:
    return Pipeline.load(FIXTURE)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_pipeline_saved_by_0_1_samples_as_it_did(legacy: Pipeline, name: str) -> None:
    changed = FIXTURE.parent / "pipeline_v0_1_changed_samplers.npz"
    expected = np.load(changed if name in CHANGED_SINCE_0_1 else FIXTURE / "expected_samples.npz")
    kw = RUNS[name]
    guided = legacy.sample(4, [0, 1, 2, 0], steps=6, guidance_scale=2.0, seed=3, **kw)
    np.testing.assert_allclose(guided.numpy(), expected[name], rtol=1e-4, atol=1e-4)
    live = legacy.sample(2, None, steps=6, seed=5, use_ema=False, **kw)
    np.testing.assert_allclose(live.numpy(), expected[name + "_uncond_live"], rtol=1e-4, atol=1e-4)


def test_unipc_3_without_the_third_order_rule_samples_as_0_1_did(legacy: Pipeline) -> None:
    expected = np.load(FIXTURE / "expected_samples.npz")
    kw = {"scheduler": {"type": "unipc", "order": 3, "lower_order_uneven": False}}
    guided = legacy.sample(4, [0, 1, 2, 0], steps=6, guidance_scale=2.0, seed=3, **kw)
    np.testing.assert_allclose(guided.numpy(), expected["unipc_3"], rtol=1e-4, atol=1e-4)


def test_the_saved_directory_holds_the_0_1_files(legacy: Pipeline) -> None:
    meta = json.loads((FIXTURE / "pipeline.json").read_text())
    assert meta["format"] == 1 and meta["sciddpm_version"] == "0.1.0"
    assert legacy.data_shape == (2, 6, 10)
    assert torch.equal(legacy.encoder.fitted, torch.tensor(True))


def test_a_gaussian_start_saved_by_0_1_as_one_file_still_loads(tmp_path) -> None:
    from sciddpm.diffusion.gaussian import GaussianStart

    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64)
    x = x * torch.tensor([3, 2, 1, 0.5, 0.2, 0.1], dtype=torch.float64)
    old = GaussianStart.load(FIXTURE.parent / "gaussian_start_v0_1.safetensors")
    new = GaussianStart.fit(x, rank=3)
    for name in ("mean", "eigvecs", "eigvals"):
        torch.testing.assert_close(getattr(old, name), getattr(new, name))
    assert old.residual == pytest.approx(new.residual)
    with pytest.raises(ValueError, match="takes a directory"):
        new.save(tmp_path / "start.safetensors")
