"""Conditional models: does a sample show what it was asked for?

A classifier or regressor the user trusts (trained on real data) predicts the condition of each
generated sample; the agreement with the requested condition is the accuracy for class labels
and the error and R^2 for numbers (as the digits demo scores its samples with a classifier).
Without one, :func:`fit_condition_predictor` fits a plain scikit-learn model on the real data and
reports how well it does on real data it did not see, which bounds what its agreement can mean.
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
    Integer ``conditions (N,)`` fit a logistic regression, numbers ``(N,)`` or ``(N, K)`` a ridge
    regression (scikit-learn). A fifth of the samples (seeded) is held out: ``about`` holds the
    model, its feature cells and its score there (``heldout_accuracy``, or ``heldout_r2``), the
    ceiling of the agreement a generated sample can reach. Raises ImportError naming the package
    when scikit-learn is missing, ValueError for fewer than 10 samples or conditions that are
    neither class labels nor numbers.
    """
    try:
        from sklearn.linear_model import LogisticRegression, Ridge
    except ImportError:
        raise ImportError(
            "agreement without your own classifier needs scikit-learn: pip install scikit-learn"
        ) from None
    from sciddpm.evaluation.features import pooled_features

    wanted = np.stack([np.asarray(c) for c in conditions]) if len(conditions) else np.zeros(0)
    if len(wanted) < 10 or len(wanted) != len(x):
        raise ValueError(
            f"need one condition per sample and at least 10 of them, got {len(wanted)} for {len(x)}"
        )
    if wanted.dtype == object or not np.issubdtype(wanted.dtype, np.number):
        raise ValueError(
            "agreement needs class labels or numbers as conditions; these are "
            f"{wanted.dtype} (fields or captions: give your own predict to condition_agreement)"
        )
    features = pooled_features(x, cells=cells)
    f = np.asarray(features(x), dtype=np.float64)
    order = np.random.default_rng(seed).permutation(len(f))
    held, fit = order[: len(f) // 5], order[len(f) // 5 :]
    classes = np.issubdtype(wanted.dtype, np.integer)
    model = LogisticRegression(max_iter=2000) if classes else Ridge(alpha=1.0)
    model.fit(f[fit], wanted[fit])
    if classes:
        score = {"heldout_accuracy": float((model.predict(f[held]) == wanted[held]).mean())}
    else:
        score = {"heldout_r2": float(model.score(f[held], wanted[held]))}
    about = {"model": type(model).__name__, "feature_cells": cells, "fitted_on": len(fit), **score}

    def predict(generated: Any) -> Any:
        return model.predict(np.asarray(features(generated), dtype=np.float64))

    return predict, about
