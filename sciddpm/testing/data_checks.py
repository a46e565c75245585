"""Conformance checks of the DataSource contract (see :class:`sciddpm.interfaces.DataSource`).

Each check reads the first 32 samples, 16 drawn (seeded) from the rest and the last, so that a
source of any size is checked in seconds, and says which index broke the contract. A fault in a
sample it does not read goes unseen: the kit checks the code, not every file of a data set.
"""

from __future__ import annotations

import json
import numbers
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from sciddpm.interfaces import DataSource, Sample
from sciddpm.testing.runner import CheckFailed, NotApplicable, Subject, checks

__all__ = ["DATA_CHECKS", "NATIVE_SUFFIXES"]

#: File endings tried when looking for a source's native writer (the contract leaves the format open).
NATIVE_SUFFIXES = (".zarr", ".ome.zarr", ".ome.tif", ".tif", ".nc", ".h5")


def _source(subject: Subject) -> DataSource:
    source = subject.instance()
    if not isinstance(source, DataSource):
        raise CheckFailed(f"built a {type(source).__name__}, not a sciddpm.interfaces.DataSource")
    return source


#: Samples each data check reads: the first ones, then a seeded draw from the rest and the last.
FIRST, DRAWN = 32, 16


def _probe(source: DataSource) -> Iterator[int]:
    n = len(source)
    rest = range(FIRST, n - 1)
    drawn = (
        torch.randperm(len(rest), generator=torch.Generator().manual_seed(0))[:DRAWN].tolist() if rest else []
    )
    yield from sorted({*range(min(FIRST, n)), *(rest[i] for i in drawn), n - 1})


def check_builds(subject: Subject) -> None:
    """The factory builds a DataSource with samples and a ``(C, *spatial)`` sample shape."""
    source = _source(subject)
    n = len(source)
    if not isinstance(n, int) or n < 1:
        raise CheckFailed(f"len(source) is {n!r}; a source has at least one sample")
    shape = tuple(source.sample_shape)
    if not 2 <= len(shape) <= 4 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise CheckFailed(f"sample_shape is {shape!r}; expected (C, *spatial) with 1-3 spatial dims")


def check_sample_type_and_shape(subject: Subject) -> None:
    """``source[i]`` is a Sample whose ``x`` is a float tensor of ``sample_shape``."""
    source = _source(subject)
    for i in _probe(source):
        sample = source[i]
        if not isinstance(sample, Sample):
            raise CheckFailed(f"source[{i}] is a {type(sample).__name__}, not a sciddpm.interfaces.Sample")
        x = sample.x
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            kind = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise CheckFailed(f"source[{i}].x is {kind}; expected a float torch tensor")
        if tuple(x.shape) != tuple(source.sample_shape):
            raise CheckFailed(
                f"source[{i}].x has shape {tuple(x.shape)}, sample_shape is {tuple(source.sample_shape)}"
            )


def check_finite_or_masked(subject: Subject) -> None:
    """``x`` is finite; a mask is shaped like ``x`` or ``(1, *spatial)``, finite and >= 0, and ``x`` is 0
    where the mask is 0."""
    source = _source(subject)
    for i in _probe(source):
        sample = source[i]
        x, mask = sample.x, sample.mask
        if not torch.isfinite(x).all():
            raise CheckFailed(
                f"source[{i}].x holds {int((~torch.isfinite(x)).sum())} NaN/inf values; missing values are "
                "0 in x and 0 in the mask"
            )
        if mask is None:
            continue
        spatial = tuple(x.shape[1:])
        if tuple(mask.shape) not in (tuple(x.shape), (1, *spatial)):
            raise CheckFailed(f"source[{i}].mask has shape {tuple(mask.shape)}; x has {tuple(x.shape)}")
        if (mask < 0).any() or not torch.isfinite(mask).all():
            raise CheckFailed(f"source[{i}].mask has negative or non-finite weights: min {mask.min()}")
        hidden = (mask == 0).expand_as(x)
        if (x[hidden] != 0).any():
            raise CheckFailed(f"source[{i}].x is not 0 where its mask is 0 (fill values must not reach x)")


def check_same_sample_for_same_index(subject: Subject) -> None:
    """Reading index ``i`` twice gives the same x, mask and condition."""
    source = _source(subject)
    for i in _probe(source):
        a, b = source[i], source[i]
        if not torch.allclose(a.x, b.x, rtol=0, atol=0, equal_nan=True):
            raise CheckFailed(f"source[{i}].x differs between two reads (max diff {(a.x - b.x).abs().max()})")
        if (a.mask is None) != (b.mask is None) or (a.mask is not None and not torch.equal(a.mask, b.mask)):
            raise CheckFailed(f"source[{i}].mask differs between two reads")
        if not _same(a.condition, b.condition):
            raise CheckFailed(f"source[{i}].condition differs between two reads")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if hasattr(a, "shape") and hasattr(a, "dtype"):  # numpy arrays
        import numpy as np

        return bool(np.array_equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def check_index_out_of_range(subject: Subject) -> None:
    """``source[len(source)]`` raises IndexError (so iteration and bad indices stop cleanly)."""
    source = _source(subject)
    n = len(source)
    try:
        source[n]
    except IndexError:
        return
    except Exception as exc:
        raise CheckFailed(f"source[{n}] raised {type(exc).__name__}: {exc}; expected IndexError") from None
    raise CheckFailed(f"source[{n}] returned a sample; a source of {n} samples must raise IndexError")


def check_describe_is_json(subject: Subject) -> None:
    """``describe()`` is a JSON-serialisable mapping (the model card's provenance)."""
    info = _source(subject).describe()
    if not isinstance(info, dict):
        raise CheckFailed(f"describe() returned a {type(info).__name__}; expected a dict")
    try:
        json.dumps(info)
    except (TypeError, ValueError) as exc:
        raise CheckFailed(f"describe() is not JSON-serialisable: {exc}") from None


def check_epoch_order(subject: Subject) -> None:
    """``epoch_order(epoch, seed)`` is None or a permutation of the indices, the same for the same
    arguments.
    """
    source = _source(subject)
    n = len(source)
    for epoch in (0, 1):
        order = source.epoch_order(epoch, 0)
        if order is None:
            continue
        order = [int(i) for i in order]
        if sorted(order) != list(range(n)):
            raise CheckFailed(f"epoch_order({epoch}, 0) is not a permutation of range({n}): {order[:8]}...")
        if [int(i) for i in source.epoch_order(epoch, 0)] != order:  # type: ignore[union-attr]
            raise CheckFailed(f"epoch_order({epoch}, 0) changes between calls with the same arguments")


def check_to_native(subject: Subject) -> None:
    """``to_native`` takes a generated batch ``(N, *sample_shape)``."""
    source = _source(subject)
    batch = torch.stack([source[i].x for i in (0, len(source) - 1)])
    native = source.to_native(batch)
    if native is None:
        raise CheckFailed("to_native returned None for a batch of 2 generated samples")


def check_native_writer_resumes(subject: Subject) -> None:
    """A native writer marks written samples complete; a new writer on the same path finds them."""
    source = _source(subject)
    batch = torch.stack([source[i].x for i in (0, len(source) - 1)])
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in NATIVE_SUFFIXES:
            path = str(Path(tmp) / f"generated{suffix}")
            writer = source.native_writer(path, 2, info={"model": "conformance-check", "seed": 0})
            if writer is None:
                continue
            if writer.completed():
                raise CheckFailed(f"a new {suffix} writer reports samples {sorted(writer.completed())} done")
            writer.write(0, batch[:1])
            again = source.native_writer(path, 2, info={"model": "conformance-check", "seed": 0})
            assert again is not None
            if again.completed() != {0}:
                raise CheckFailed(
                    f"after writing sample 0 to {suffix}, a new writer finds {sorted(again.completed())}"
                )
            again.write(1, batch[1:])
            if again.completed() != {0, 1}:
                raise CheckFailed(f"after writing both samples, completed() is {sorted(again.completed())}")
            return
    raise NotApplicable(f"the source writes no native format (asked for {', '.join(NATIVE_SUFFIXES)})")


def check_class_labels(subject: Subject) -> None:
    """With ``num_classes > 0`` a sample's condition is an int in ``range(num_classes)``."""
    source = _source(subject)
    k = int(source.num_classes)
    if k == 0:
        raise NotApplicable("num_classes is 0 (samples carry no class label)")
    for i in _probe(source):
        label = source[i].condition
        if isinstance(label, torch.Tensor) and label.numel() == 1 and not label.is_floating_point():
            label = label.item()
        if isinstance(label, bool) or not isinstance(label, numbers.Integral) or not 0 <= label < k:
            raise CheckFailed(f"source[{i}].condition is {label!r}; expected a class index in range({k})")


DATA_CHECKS = checks(
    "data",
    check_builds,
    check_sample_type_and_shape,
    check_finite_or_masked,
    check_same_sample_for_same_index,
    check_index_out_of_range,
    check_describe_is_json,
    check_epoch_order,
    check_to_native,
    check_native_writer_resumes,
    check_class_labels,
)
