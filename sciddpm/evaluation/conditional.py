"""Conditional models: does a sample show what it was asked for?

A classifier or regressor the user trusts (trained on real data) predicts the condition of each
generated sample; the agreement with the requested condition is the accuracy for class labels
and the error and R^2 for numbers (as the digits demo scores its samples with a classifier).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["condition_agreement"]


def condition_agreement(generated: Any, conditions: Any, predict: Callable[[Any], Any]) -> dict[str, float]:
    """Agreement of ``predict(generated)`` with the requested ``conditions``, one per sample.

    Integer conditions ``(N,)`` are class labels: returns ``{"accuracy"}``. Numbers ``(N,)`` or
    ``(N, K)`` are regression targets: returns ``{"mae", "rmse", "r2"}`` (R^2 over all values, 1 =
    perfect). Raises ValueError when the counts or shapes of predictions and conditions differ.
    """
    wanted = np.asarray(conditions)
    got = np.asarray(predict(generated))
    if len(got) != len(wanted) or len(wanted) != len(generated):
        raise ValueError(
            f"{len(generated)} samples, {len(wanted)} conditions and {len(got)} predictions: give one "
            "condition per sample, and a predict that returns one prediction per sample"
        )
    if np.issubdtype(wanted.dtype, np.integer):
        return {"accuracy": float((got.reshape(-1) == wanted.reshape(-1)).mean())}
    if got.shape != wanted.shape:
        raise ValueError(f"predictions have shape {got.shape}, conditions {wanted.shape}")
    error = got.astype(np.float64) - wanted
    spread = ((wanted - wanted.mean(axis=0)) ** 2).sum()
    return {
        "mae": float(np.abs(error).mean()),
        "rmse": float(np.sqrt((error**2).mean())),
        "r2": float(1 - (error**2).sum() / spread) if spread > 0 else float("nan"),
    }
