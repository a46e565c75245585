"""Checks and provenance shared by the data sources: shapes, dtypes, labels, NaN/inf, content hashes.

Sources validate their data at the boundary with these, so every source names itself, the bad
sample and the fix in the same way. Plugins' sources use them too.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

__all__ = ["check_labels", "check_samples", "content_hash", "first_nonfinite", "to_tensor"]


def content_hash(*arrays: np.ndarray | None) -> str:
    """First 16 hex digits of the sha256 of the arrays' bytes (shape and dtype included; None counts).

    A data source's provenance for model cards and run manifests: the same data give the same hash.
    """
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def check_samples(x: np.ndarray, where: str) -> None:
    """Check ``x`` is ``(N, C, *spatial)`` with 1-3 spatial dims, N > 0, of a real numeric dtype.

    Raises ValueError starting with ``where`` (the source's name) and saying the fix.
    """
    if x.dtype == object:
        raise ValueError(f"{where}: holds Python objects (dtype=object); pass a numeric array")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or np.iscomplexobj(x):
        raise ValueError(f"{where}: dtype {x.dtype} is not a real numeric type; pass float or int data")
    if not 3 <= x.ndim <= 5:
        raise ValueError(
            f"{where}: expected shape (N, C, *spatial) with 1 to 3 spatial dims, got {tuple(x.shape)}; "
            "for single-channel data add a channel axis, e.g. x[:, None]"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{where}: contains no samples (shape {tuple(x.shape)})")


def first_nonfinite(x: np.ndarray) -> int | None:
    """Index of the first sample holding NaN/inf, or None (one vectorised pass)."""
    if not np.issubdtype(x.dtype, np.floating):
        return None
    bad = ~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
    return int(np.argmax(bad)) if bad.any() else None


def check_labels(labels: Any, n: int, where: str) -> np.ndarray:
    """``labels`` as int64 class indices ``(n,)`` >= 0; raises ValueError starting with ``where`` if not."""
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"{where}: labels must have shape ({n},) (one per sample), got {y.shape}")
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all() or (y != np.round(y)).any():
            raise ValueError(f"{where}: labels must be integer class indices, got non-integer values")
    elif not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{where}: labels must be integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if (y < 0).any():
        i = int(np.argmax(y < 0))
        raise ValueError(f"{where}: label {y[i]} of sample {i} is negative; class labels are 0..K-1")
    return y


def to_tensor(x: np.ndarray) -> torch.Tensor:
    """A contiguous float32 tensor sharing memory with ``x`` where it can."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
