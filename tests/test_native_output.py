"""Pipeline.sample_into: drawing into a resumable writer skips completed samples and matches sample()."""

from __future__ import annotations

import pytest
import torch
from tiny import TINY_UNET

from sciddpm.interfaces import NativeWriter
from sciddpm.pipeline import Pipeline


class MemoryWriter(NativeWriter):
    """Keeps written rows in a dict; optionally fails on a given start index."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.rows: dict[int, torch.Tensor] = {}
        self.calls: list[tuple[int, int]] = []
        self.fail_at = fail_at

    def completed(self) -> set[int]:
        return set(self.rows)

    def write(self, start: int, samples: torch.Tensor) -> None:
        if start == self.fail_at:
            raise KeyboardInterrupt
        self.calls.append((start, len(samples)))
        for k, row in enumerate(samples):
            self.rows[start + k] = row


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    torch.manual_seed(0)
    return Pipeline.from_config(
        {"denoiser": TINY_UNET, "conditioner": {"type": "class_label"}, "scheduler": {"type": "ddpm"}},
        data_shape=(1, 8, 8),
        num_classes=3,
    )


def test_sample_into_resumes_to_the_same_samples(pipe: Pipeline) -> None:
    labels = [0, 1, 2, 0, 1, 2, 0]
    opts = {"steps": 3, "seed": 4}
    reference = pipe.sample(7, labels, **opts)
    writer = MemoryWriter(fail_at=4)
    with pytest.raises(KeyboardInterrupt):
        pipe.sample_into(writer, 7, labels, chunk=2, **opts)
    assert writer.completed() == {0, 1, 2, 3}
    del writer.rows[1]  # a hole: only the missing samples are drawn, in consecutive runs
    writer.fail_at = None
    writer.calls.clear()
    assert pipe.sample_into(writer, 7, labels, chunk=2, **opts) == [1, 4, 5, 6]
    assert writer.calls == [(1, 1), (4, 2), (6, 1)]
    torch.testing.assert_close(torch.stack([writer.rows[i] for i in range(7)]), reference)
    assert pipe.sample_into(writer, 7, labels, **opts) == []


def test_sample_into_and_first_reject_bad_arguments(pipe: Pipeline) -> None:
    with pytest.raises(ValueError, match="chunk"):
        pipe.sample_into(MemoryWriter(), 3, chunk=0)
    with pytest.raises(ValueError, match="got 2 conditions for n=3"):
        pipe.sample_into(MemoryWriter(), 3, [0, 1])
    with pytest.raises(ValueError, match="first must be >= 0"):
        pipe.sample(1, first=-1)
