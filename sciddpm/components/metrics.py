"""Built-in metrics: a digit classifier trained on real digits, and the CLIP score of text-to-image samples.

Class-conditional digit models are judged by whether a classifier trained on real digits
recognises the class they were asked for (the "classification accuracy score" idea of
Ravuri & Vinyals 2019, run in the cheap direction); text-conditional ones by the CLIP score of
each sample against its caption (Hessel et al. 2021).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sciddpm.components.clip import ClipConditioner, ClipConditionerConfig
from sciddpm.interfaces import Metric

__all__ = ["CLIPScore", "CLIPScoreConfig", "DigitsClassifier"]


class DigitsClassifier(Metric):
    """RBF-SVM on the raw pixels of real digits at ``size`` (physical units 0..16).

    Trained on the ``train`` part of the same seeded 80/20 split :class:`~sciddpm.data.digits.DigitsSource`
    uses, with the same bilinear resampling; ~98-99% accuracy on the held-out real digits.
    Fitting takes well under a second. Calling the instance returns :meth:`accuracy`.
    """

    higher_is_better = True

    def __init__(self, size: int = 8, seed: int = 0) -> None:
        from sklearn.svm import SVC

        from sciddpm.data.digits import digits_arrays

        self.size = size
        self.seed = seed
        x, y = digits_arrays(size, "train", seed)
        # No per-pixel standardisation: border pixels of real digits are almost
        # always 0, so dividing by their tiny std turns a generated background of
        # 0.3 instead of 0 into a huge feature and misclassifies clean digits
        # (0.45 vs 1.0 accuracy on the same samples). gamma="scale" adapts to units.
        self._model = SVC(C=10.0, gamma="scale")
        self._model.fit(x.reshape(len(x), -1), y)

    def _vectors(self, samples: Any) -> np.ndarray:
        if hasattr(samples, "detach"):  # a torch tensor
            samples = samples.detach().cpu().numpy()
        x = np.asarray(samples, dtype=np.float64)
        s = self.size
        if x.ndim == 4 and x.shape[1] == 1:
            x = x[:, 0]
        if x.ndim != 3 or x.shape[1:] != (s, s):
            raise ValueError(
                f"DigitsClassifier(size={s}) expects samples shaped (N, 1, {s}, {s}) or (N, {s}, {s}), "
                f"got {tuple(np.shape(samples))}; build the classifier with the size the model generates"
            )
        flat = x.reshape(len(x), -1)
        bad = ~np.isfinite(flat).all(axis=1)
        if bad.any():
            raise ValueError(f"sample {int(np.argmax(bad))} contains NaN/inf; cannot classify it")
        return flat

    def predict(self, samples: Any) -> np.ndarray:
        """Predicted digit ``(N,)`` for samples ``(N, 1, size, size)`` in units 0..16."""
        return self._model.predict(self._vectors(samples)).astype(np.int64)

    def accuracy(self, samples: Any, labels: Any) -> float:
        """Fraction of samples classified as their intended ``labels`` ``(N,)``."""
        if hasattr(labels, "detach"):
            labels = labels.detach().cpu().numpy()
        y = np.asarray(labels).reshape(-1)
        pred = self.predict(samples)
        if y.shape != pred.shape:
            raise ValueError(f"got {len(y)} labels for {len(pred)} samples")
        return float((pred == y).mean())

    def __call__(self, generated: Any, reference: Any) -> float:
        """Accuracy of ``generated`` samples against their intended labels ``reference``."""
        return self.accuracy(generated, reference)


class CLIPScoreConfig(BaseModel):
    """CLIP score of generated images against their captions, with a trained CLIP."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str | None = Field(
        default=None, description="A saved sciddpm pipeline directory whose conditioner is 'clip'."
    )
    weights: str | None = Field(
        default=None, description="Or a local pretrained CLIP directory (config.json + model.safetensors)."
    )

    @model_validator(mode="after")
    def _one(self) -> CLIPScoreConfig:
        if (self.pipeline is None) == (self.weights is None):
            raise ValueError(
                "give exactly one of pipeline (a saved sciddpm pipeline) or weights (a CLIP directory)"
            )
        return self


class CLIPScore(Metric):
    """Mean of ``100 * max(cos(image, caption), 0)`` (Hessel et al. 2021, with torchmetrics' scale of 100).

    Call it as ``metric(images (N, C, *spatial) in data units, captions)`` with one caption for
    all images or one per image.
    """

    higher_is_better = True

    def __init__(
        self, config: CLIPScoreConfig | None = None, *, conditioner: ClipConditioner | None = None
    ) -> None:
        if conditioner is None:
            if config is None:
                raise ValueError("CLIPScore needs a config (pipeline or weights) or conditioner=...")
            conditioner = _conditioner_from(config)
        self.conditioner = conditioner

    def scores(self, generated: Any, reference: str | Sequence[str]) -> torch.Tensor:
        """Per-image scores ``(N,)``."""
        images = torch.as_tensor(generated, dtype=torch.float32)
        captions = [reference] * len(images) if isinstance(reference, str) else list(reference)
        if len(captions) != len(images):
            raise ValueError(f"got {len(captions)} captions for {len(images)} images")
        cond = self.conditioner
        cond.check_fitted()
        with torch.no_grad():
            image = F.normalize(cond.encode_images(images), dim=-1)
            text = F.normalize(cond.encode_text(captions)[1], dim=-1)
        return 100 * (image * text).sum(-1).clamp_min(0).cpu()

    def __call__(self, generated: Any, reference: Any) -> float:
        return float(self.scores(generated, reference).mean())


def _conditioner_from(config: CLIPScoreConfig) -> ClipConditioner:
    if config.weights is not None:
        cond = ClipConditioner(ClipConditionerConfig(weights=config.weights))
        cond.fit(None)
        return cond.eval()
    from sciddpm.pipeline.pipeline import Pipeline

    pipe = Pipeline.load(config.pipeline)  # type: ignore[arg-type]
    if not isinstance(pipe.conditioner, ClipConditioner):
        raise ValueError(
            f"the pipeline in {config.pipeline!r} has a {type(pipe.conditioner).__name__} conditioner, "
            "not clip"
        )
    return pipe.conditioner
