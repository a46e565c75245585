"""Conformance checks of the Conditioner contract (see :class:`sciddpm.interfaces.Conditioner`).

Raw conditions are the component's own business (class labels, captions, fields), so the checks
need examples: ``inputs`` is a list of single samples' raw conditions, or a DataSource, which the
conditioner is fitted on and whose first samples' conditions are used. Without either, a
conditioner that declares no parts is checked with ``None`` conditions, one with ``num_classes``
with class indices, and any other is reported as not run.
"""

from __future__ import annotations

from typing import Any

import torch

from sciddpm.interfaces import Conditioner, Conditioning, DataSource
from sciddpm.testing.modules import module_of, perturb, reload, same
from sciddpm.testing.runner import CheckFailed, MissingInputs, Subject, checks

__all__ = ["CONDITIONER_CHECKS"]

_WIDTHS = (("concat", "concat_channels"), ("vector", "vector_dim"), ("tokens", "token_dim"))


def _declared(conditioner: Any) -> Conditioner:
    return module_of(conditioner, Conditioner)  # type: ignore[no-any-return]


def _prepared(subject: Subject) -> tuple[Conditioner, list[Any]]:
    """A fresh (fitted, when given a source) conditioner and at least three raw conditions."""
    conditioner = _declared(subject.build())
    inputs = subject.inputs
    if isinstance(inputs, DataSource):
        conditioner.fit(inputs)
        raws = [inputs[i].condition for i in range(min(3, len(inputs)))]
        if all(r is None for r in raws):
            raise MissingInputs("the DataSource's samples carry no condition (condition is None)")
    elif inputs is not None:
        raws = list(inputs)
    elif not any(getattr(conditioner, w) for _, w in _WIDTHS):
        raws = [None, None, None]
    elif getattr(conditioner, "num_classes", 0):  # a class-label conditioner takes class indices
        raws = [i % conditioner.num_classes for i in range(3)]
    else:
        raise MissingInputs(
            "no example conditions: pass inputs=[raw, raw, ...] (single samples' conditions) or a DataSource"
        )
    if len(raws) < 2:
        raise CheckFailed(f"inputs holds {len(raws)} condition(s); give at least 2")
    raws = [raws[i % len(raws)] for i in range(max(3, len(raws)))]
    return conditioner, raws


def _check_parts(cond: Any, conditioner: Conditioner, n: int, what: str) -> None:
    if not isinstance(cond, Conditioning):
        raise CheckFailed(f"{what} returned a {type(cond).__name__}, not a sciddpm.interfaces.Conditioning")
    for part, width_name in _WIDTHS:
        width, value = getattr(conditioner, width_name), getattr(cond, part)
        if bool(width) != (value is not None):
            state = "missing" if value is None else f"present with shape {tuple(value.shape)}"
            raise CheckFailed(f"{what}: cond.{part} is {state} while {width_name} = {width}")
        if value is None:
            continue
        if value.shape[0] != n:
            raise CheckFailed(f"{what}: cond.{part} has {value.shape[0]} rows for a batch of {n}")
        ok = {
            "vector": value.ndim == 2 and value.shape[1] == width,
            "tokens": value.ndim == 3 and value.shape[2] == width,
            "concat": 3 <= value.ndim <= 5 and value.shape[1] == width,
        }[part]
        if not ok:
            raise CheckFailed(
                f"{what}: cond.{part} has shape {tuple(value.shape)} for {width_name} = {width}"
            )


def check_builds(subject: Subject) -> None:
    """The factory builds a Conditioner module declaring ``vector_dim``, ``token_dim``, ``concat_channels``
    >= 0.
    """
    conditioner = _declared(subject.instance())
    for _, name in _WIDTHS:
        value = getattr(conditioner, name, None)
        if not isinstance(value, int) or value < 0:
            raise CheckFailed(f"{name} is {value!r}; declare it as a whole number >= 0 (0 = absent)")


def check_forward_parts(subject: Subject) -> None:
    """``forward(collate(raws), B)`` gives exactly the declared parts, ``B`` rows each, of the declared
    widths.
    """
    conditioner, raws = _prepared(subject)
    with torch.no_grad():
        cond = conditioner(conditioner.collate(raws), len(raws))
    _check_parts(cond, conditioner, len(raws), "forward")


def check_forward_one_condition(subject: Subject) -> None:
    """``forward(raw, B)`` with one sample's raw condition conditions every row alike (``Pipeline.sample``
    with one condition)."""
    conditioner, raws = _prepared(subject)
    with torch.no_grad():
        cond = conditioner(raws[0], len(raws))
        alone = conditioner(conditioner.collate(raws[:1]), 1)
    _check_parts(cond, conditioner, len(raws), "forward(one condition)")
    for part, _ in _WIDTHS:
        value = getattr(cond, part)
        if value is not None:
            for i in range(len(raws)):
                same(value[i : i + 1], getattr(alone, part), f"row {i} of cond.{part} for one condition")


def check_forward_per_row_list(subject: Subject) -> None:
    """``forward([raw_0, ..., raw_B-1], B)``, the uncollated list ``Pipeline.sample`` passes for one
    condition per sample, equals ``forward(collate(raws), B)``."""
    conditioner, raws = _prepared(subject)
    with torch.no_grad():
        listed = conditioner(list(raws), len(raws))
        collated = conditioner(conditioner.collate(raws), len(raws))
    _check_parts(listed, conditioner, len(raws), "forward(list of conditions)")
    for part, _ in _WIDTHS:
        if getattr(collated, part) is not None:
            same(getattr(listed, part), getattr(collated, part), f"cond.{part} from a list vs collated")


def check_null_matches_forward(subject: Subject) -> None:
    """``null(B)`` has the parts and shapes of ``forward`` (what guidance mixes with it)."""
    conditioner, raws = _prepared(subject)
    with torch.no_grad():
        cond = conditioner(conditioner.collate(raws), len(raws))
        null = conditioner.null(len(raws))
    _check_parts(null, conditioner, len(raws), "null")
    for part, _ in _WIDTHS:
        a, b = getattr(cond, part), getattr(null, part)
        if a is not None and b is not None and a.shape != b.shape:
            raise CheckFailed(f"cond.{part} is {tuple(a.shape)} from forward but {tuple(b.shape)} from null")


def check_drop_rows(subject: Subject) -> None:
    """``drop(raw, keep)`` keeps rows where ``keep`` and gives the null condition's rows elsewhere,
    exactly.
    """
    conditioner, raws = _prepared(subject)
    keep = torch.tensor([i % 2 == 0 for i in range(len(raws))])
    with torch.no_grad():
        raw = conditioner.collate(raws)
        cond, null = conditioner(raw, len(raws)), conditioner.null(len(raws))
        dropped = conditioner.drop(raw, keep)
    for part, _ in _WIDTHS:
        got, kept, nulled = getattr(dropped, part), getattr(cond, part), getattr(null, part)
        if kept is None:
            continue
        if got is None:
            raise CheckFailed(f"drop lost cond.{part}")
        for i, k in enumerate(keep.tolist()):
            want = kept[i] if k else nulled[i]
            if not torch.equal(got[i].to(want.device), want):
                raise CheckFailed(f"drop: row {i} of cond.{part} is not the {'kept' if k else 'null'} row")


def check_save_load(subject: Subject) -> None:
    """Learned or fitted state survives save -> load into a fresh conditioner (same conditioning)."""
    conditioner, raws = _prepared(subject)
    perturb(conditioner)
    fresh = reload(subject, conditioner)
    with torch.no_grad():
        a = conditioner(conditioner.collate(raws), len(raws))
        b = fresh(fresh.collate(raws), len(raws))
    for part, _ in _WIDTHS:
        if getattr(a, part) is not None:
            same(getattr(b, part), getattr(a, part), f"cond.{part} after save -> load")


CONDITIONER_CHECKS = checks(
    "conditioner",
    check_builds,
    check_forward_parts,
    check_forward_one_condition,
    check_forward_per_row_list,
    check_null_matches_forward,
    check_drop_rows,
    check_save_load,
)
