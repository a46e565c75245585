"""Named random streams: the random numbers that sampling and training reproduce exactly.

A stream is keyed by the run's seed and a position (a sample's index, a training position, an
epoch), so a number never depends on batch size, device, the number of processes or an
interruption: sample ``i`` of a seeded run is the same whether it is drawn alone or in a batch of
64, and training position ``p`` sees the same noise under gradient accumulation, ``torchrun`` or
a resume. Seeds come from numpy's ``SeedSequence`` (hash-based, so different keys give unrelated
streams); draws are made on the CPU, so they agree across devices. Numbers outside these streams
are seeded by their own component's ``seed`` (weight initialisation, the CLIP stage, subsets
spread over a source). A domain sampled block by block draws from chunked fields
(:func:`field_noise`), so overlapping blocks agree on their shared cells.

The streams' keys are part of every saved result: changing one changes every seeded sample. They
are those of sciddpm 0.1.0, including one accident kept for that reason: the autoencoder stage's
key ``(seed, 4)`` is also the initial-noise key of sample 4.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "AUTOENCODER",
    "EPOCH_ORDER",
    "EVALUATION_ENSEMBLES",
    "FIELD_NOISE",
    "FIELD_STEP_NOISE",
    "INITIAL_NOISE",
    "NETWORK",
    "STEP_NOISE",
    "TRAINING_DRAWS",
    "Stream",
    "field_noise",
    "generator",
    "keyed_rand",
    "noise_for",
    "sample_positions",
    "seed_for",
]


@dataclass(frozen=True)
class Stream:
    """A named stream of random numbers: ``tag`` is appended to its key (None: nothing appended)."""

    name: str
    tag: int | None


#: The initial noise of a sampled sample, keyed ``(seed, sample index)``.
INITIAL_NOISE = Stream("initial noise", None)
#: The noise a stochastic sampler adds at each step, keyed ``(seed, sample index)``.
STEP_NOISE = Stream("step noise", 1)
#: The order in which the trainer visits the data in one epoch, keyed ``(seed, epoch)``.
EPOCH_ORDER = Stream("epoch order", 2)
#: A training sample's noise level, noise and condition-dropout draw, keyed ``(seed, run position)``.
TRAINING_DRAWS = Stream("training draws", 3)
#: The autoencoder stage's data order and posterior noise, keyed ``(seed,)``.
AUTOENCODER = Stream("autoencoder stage", 4)
#: Randomness inside the network while training (dropout, a plugin's stochastic layer), keyed
#: ``(seed, run position, layer key)``: see :func:`keyed_rand`.
NETWORK = Stream("network randomness", 5)
#: The initial noise of a domain sampled block by block, keyed ``(seed, sample index, channel,
#: *chunk grid position)``: see :func:`field_noise`.
FIELD_NOISE = Stream("field initial noise", 6)
#: A stochastic sampler's step noise on such a domain, keyed ``(seed, sample index, step, channel,
#: *chunk grid position)``.
FIELD_STEP_NOISE = Stream("field step noise", 7)
#: The seed of the ensemble ``sciddpm evaluate`` draws for its ``k``-th condition, keyed ``(seed, k)``.
EVALUATION_ENSEMBLES = Stream("evaluation ensembles", 8)

# The (seed, positions) of the samples the network is running on, set by sample_positions. A
# module-level value rather than a context variable: gradient checkpointing recomputes layers
# inside backward, which autograd may run on another thread.
_POSITIONS: tuple[int, tuple[int, ...]] | None = None


def seed_for(stream: Stream, seed: int, *key: int) -> int:
    """A 63-bit seed for ``stream`` at ``(seed, *key)``, by numpy's ``SeedSequence``.

    Raises ValueError for negative integers (``SeedSequence`` takes none).
    """
    entropy = [int(seed), *(int(k) for k in key)]
    if stream.tag is not None:
        entropy.append(stream.tag)
    if any(v < 0 for v in entropy):
        raise ValueError(f"seeds and stream positions must be >= 0, got {entropy} for the {stream.name}")
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)


def generator(stream: Stream, seed: int, *key: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded for ``stream`` at ``(seed, *key)`` (see :func:`seed_for`)."""
    return torch.Generator().manual_seed(seed_for(stream, seed, *key))


def noise_for(shape: Sequence[int], seed: int, start: int, count: int) -> torch.Tensor:
    """Initial noise ``(count, *shape)``, float32 on the CPU, of samples ``start .. start + count - 1``.

    Each sample's noise comes from the :data:`INITIAL_NOISE` stream at its own index, so it does not
    depend on the batch it is drawn in or on the device.
    """
    out = torch.empty((count, *shape))
    for row, index in enumerate(range(start, start + count)):
        out[row] = torch.randn(tuple(shape), generator=generator(INITIAL_NOISE, seed, index))
    return out


def field_noise(
    stream: Stream, seed: int, key: Sequence[int], region: Sequence[slice], chunk: Sequence[int]
) -> torch.Tensor:
    """Unit normal noise over ``region`` (a slice per spatial dim) of a field without bounds.

    The field is cut into chunks of ``chunk`` cells from the origin; the chunk at grid position
    ``g`` is drawn from ``stream`` at ``(seed, *key, *g)``, so any region, of any block of a
    domain, sees the same numbers at the same cells: two overlapping blocks start from the same
    noise where they overlap. Returns float32 ``(*sizes of region)`` on the CPU. Raises ValueError
    for a region with a negative start or another length than ``chunk``.
    """
    region, chunk = tuple(region), tuple(int(c) for c in chunk)
    if len(region) != len(chunk):
        raise ValueError(f"region of {len(region)} dims for chunks of {len(chunk)}")
    if any(r.start < 0 for r in region) or any(c < 1 for c in chunk):
        raise ValueError(f"field regions start at >= 0 and chunks are >= 1 cell, got {region}, {chunk}")
    out = torch.empty(tuple(r.stop - r.start for r in region))
    grid = [range(r.start // c, (r.stop - 1) // c + 1) for r, c in zip(region, chunk, strict=True)]
    for g in itertools.product(*grid):
        block = torch.randn(chunk, generator=generator(stream, seed, *key, *g))
        lows = [max(r.start, i * c) for r, i, c in zip(region, g, chunk, strict=True)]
        highs = [min(r.stop, (i + 1) * c) for r, i, c in zip(region, g, chunk, strict=True)]
        into = tuple(slice(lo - r.start, hi - r.start) for lo, hi, r in zip(lows, highs, region, strict=True))
        take = tuple(
            slice(lo - i * c, hi - i * c) for lo, hi, i, c in zip(lows, highs, g, chunk, strict=True)
        )
        out[into] = block[take]
    return out


@contextmanager
def sample_positions(seed: int, positions: Sequence[int]) -> Iterator[None]:
    """Within the block, :func:`keyed_rand` draws row ``i`` from the stream of run position ``positions[i]``.

    The trainer wraps each micro-batch's forward and backward pass in it, so dropout masks depend
    on the sample, not on how the batch is split over accumulation steps or ranks, and a layer
    recomputed by gradient checkpointing draws the same mask again.
    """
    global _POSITIONS
    before = _POSITIONS
    _POSITIONS = (int(seed), tuple(int(p) for p in positions))
    try:
        yield
    finally:
        _POSITIONS = before


def keyed_rand(
    batch: int,
    shape: Sequence[int],
    key: int,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Uniform [0, 1) draws ``(batch, *shape)`` for a stochastic layer identified by ``key``.

    Inside :func:`sample_positions`, row ``i`` comes from the :data:`NETWORK` stream at ``(seed,
    position i, key)``: the same numbers whatever the batch split, and again when the layer runs
    again for the same samples (checkpointing). Outside it, from torch's global generator. ``key``
    must differ between the layers of a network (``sciddpm.nn.unet`` numbers its dropouts). Raises
    ValueError when ``batch`` is not the number of positions set.
    """
    shape = tuple(int(s) for s in shape)
    if _POSITIONS is None:
        return torch.rand((batch, *shape), device=device, dtype=dtype)
    seed, positions = _POSITIONS
    if len(positions) != batch:
        raise ValueError(
            f"keyed_rand got a batch of {batch} inside sample_positions of {len(positions)} samples"
        )
    rows = [torch.rand(shape, generator=generator(NETWORK, seed, p, key)) for p in positions]
    return torch.stack(rows).to(device=device, dtype=dtype or torch.get_default_dtype())
