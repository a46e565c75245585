"""Captioned digits: scikit-learn's digits with a caption from varied templates as the condition.

The templates are split in two: :data:`TRAIN_TEMPLATES` caption the training data, and
:data:`HELDOUT_TEMPLATES` (wordings never seen in training, e.g. "a picture of the digit 7")
test whether a text tower generalises beyond the phrasings it was trained on. A template has the
fields ``{word}`` ("seven"), ``{num}`` ("7") and ``{a_word}`` ("a seven", "an eight").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field

from sciddpm.data.digits import DigitsSource, DigitsSourceConfig
from sciddpm.interfaces import Sample

__all__ = [
    "DIGIT_WORDS",
    "HELDOUT_TEMPLATES",
    "TRAIN_TEMPLATES",
    "CaptionedDigits",
    "CaptionedDigitsConfig",
    "caption",
    "class_captions",
]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: Wordings that caption the training data.
TRAIN_TEMPLATES: tuple[str, ...] = (
    "a handwritten {word}",
    "the digit {num}",
    "the number {word}",
    "a photo of the number {word}",
    "an image of a {num}",
    "a drawing of the digit {word}",
    "{a_word}, written by hand",
    "a scanned {word}",
    "this is {a_word}",
    "a small blurry {num}",
    "the handwritten digit {num}",
    "a grey image of the number {num}",
)

#: Wordings never used in training: zero-shot classification is measured with these.
HELDOUT_TEMPLATES: tuple[str, ...] = (
    "a picture of the digit {num}",
    "a handwritten {num}",
    "a sketch of the number {word}",
    "an image of {a_word}",
)


def caption(digit: int, template: str) -> str:
    """``template`` filled in for ``digit`` 0..9."""
    if not 0 <= digit <= 9:
        raise ValueError(f"digit {digit} is not 0..9")
    word = DIGIT_WORDS[digit]
    article = "an" if word[0] in "aeiou" else "a"
    return template.format(word=word, num=str(digit), a_word=f"{article} {word}")


def class_captions(templates: Sequence[str] = HELDOUT_TEMPLATES) -> list[list[str]]:
    """For zero-shot classification: per digit 0..9, its captions under every template."""
    return [[caption(d, t) for t in templates] for d in range(10)]


class CaptionedDigitsConfig(DigitsSourceConfig):
    """scikit-learn digits whose condition is a caption drawn from a set of templates."""

    templates: Literal["train", "heldout", "all"] = Field(
        default="train",
        description="Caption wordings: 'train' (TRAIN_TEMPLATES), 'heldout' (HELDOUT_TEMPLATES, for "
        "testing generalisation to unseen wordings) or 'all'.",
    )


class CaptionedDigits(DigitsSource):
    """Digits ``(1, size, size)`` in units 0..16 with a caption as the condition.

    Every sample's template comes from one draw seeded by ``seed``, so a sample's caption is
    fixed. The class labels stay available as ``labels`` for evaluation; ``num_classes`` is 0
    because the condition is text, not a label.
    """

    num_classes = 0

    def __init__(self, config: CaptionedDigitsConfig | None = None) -> None:
        super().__init__(config or CaptionedDigitsConfig())
        c: CaptionedDigitsConfig = self.config  # type: ignore[assignment]
        self.templates = {
            "train": TRAIN_TEMPLATES,
            "heldout": HELDOUT_TEMPLATES,
            "all": TRAIN_TEMPLATES + HELDOUT_TEMPLATES,
        }[c.templates]
        rng = np.random.default_rng((c.seed, 1))  # one vectorised draw: sample i's template
        self._template = rng.integers(0, len(self.templates), size=len(self))

    @property
    def labels(self) -> np.ndarray:
        """The digit ``(N,)`` of every sample."""
        return self._labels

    def caption(self, index: int) -> str:
        """The caption of sample ``index``: its digit in its (seeded) template's words."""
        return caption(int(self._labels[index]), self.templates[int(self._template[index])])

    def __getitem__(self, index: int) -> Sample:
        return Sample(x=self._x[index], condition=self.caption(index))

    def describe(self) -> Mapping[str, Any]:
        """The digits' provenance plus which caption templates were used."""
        c: CaptionedDigitsConfig = self.config  # type: ignore[assignment]
        return {
            **super().describe(),
            "type": "digits_captions",
            "num_classes": 0,
            "templates": c.templates,
            "caption_templates": list(self.templates),
        }
