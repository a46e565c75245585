"""Conditional models: does a sample show what it was asked for?

A classifier or regressor the user trusts (trained on real data) predicts the condition of each
generated sample; the agreement with the requested condition is the accuracy for class labels
and the error and R^2 for numbers (as the digits demo scores its samples with a classifier).
Without one, :func:`fit_condition_predictor` fits a plain scikit-learn model on the real data and
reports how well it does on real data it did not see, the reference to read its agreement against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["condition_agreement", "fit_condition_predictor"]


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


def fit_condition_predictor(
    x: Any, conditions: Any, cells: int = 8, seed: int = 0
) -> tuple[Callable[[Any], Any], dict[str, Any]]:
    """``(predict, about)``: a model of the condition fitted on real samples ``x (N, C, *spatial)``.

    Features are :func:`~sciddpm.evaluation.features.pooled_features` of ``x`` (``cells`` per axis).
    Integer ``conditions (N,)`` are class labels and fit a logistic regression; float ``(N,)`` or
    ``(N, K)`` are numbers and fit a ridge regression (scikit-learn): the dtype decides. A fifth of
    the samples (seeded, at least 2) is held out, and ``about`` holds the model, its feature cells,
    how many samples it was fitted on and held out, and its :func:`condition_agreement` on the
    held-out real samples (``heldout``): a reference for reading the agreement of generated ones,
    not a bound (samples more typical than real data can score above it). Raises ImportError
    naming the package when scikit-learn is missing; ValueError for fewer than 10 samples,
    conditions that are neither integer labels ``(N,)`` nor numbers ``(N,)``/``(N, K)``, or
    fewer than two classes among the samples fitted on.
    """
    try:
        from sklearn.linear_model import LogisticRegression, Ridge
    except ImportError:
        raise ImportError(
            "condition agreement without your own classifier needs scikit-learn: "
            "pip install scikit-learn (or sciddpm[data])"
        ) from None
    from sciddpm.evaluation.features import pooled_features

    wanted = np.stack([np.asarray(c) for c in conditions]) if len(conditions) else np.zeros(0)
    if len(wanted) < 10 or len(wanted) != len(x):
        raise ValueError(
            f"need one condition per sample and at least 10 of them, got {len(wanted)} for {len(x)}"
        )
    numeric = wanted.dtype != object and np.issubdtype(wanted.dtype, np.number)
    classes = numeric and np.issubdtype(wanted.dtype, np.integer)
    if not numeric or wanted.ndim > 2 or (classes and wanted.ndim != 1):
        raise ValueError(
            f"conditions of shape {wanted.shape} and dtype {wanted.dtype}: agreement fits a classifier "
            "of integer labels (N,) or a regressor of numbers (N,) or (N, K); for fields or captions "
            "give your own predict to condition_agreement"
        )
    features = pooled_features(x, cells=cells)
    f = np.asarray(features(x), dtype=np.float64)
    order = np.random.default_rng(seed).permutation(len(f))
    held, fit = order[: max(2, len(f) // 5)], order[max(2, len(f) // 5) :]
    if classes and len(np.unique(wanted[fit])) < 2:
        raise ValueError("the samples to fit on hold one class only; agreement needs at least two")
    model = LogisticRegression(max_iter=2000) if classes else Ridge(alpha=1.0)
    model.fit(f[fit], wanted[fit])

    def predict(generated: Any) -> Any:
        return model.predict(np.asarray(features(generated), dtype=np.float64))

    reference = condition_agreement(x[held], wanted[held], predict)
    about = {
        "model": type(model).__name__,
        "feature_cells": cells,
        "fitted_on": len(fit),
        "held_out": len(held),
        "heldout": reference,
    }
    return predict, about
