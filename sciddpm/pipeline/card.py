"""The model card written beside every saved pipeline."""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from typing import Any

__all__ = ["model_card"]

_INTENDED_USE = (
    "Research on generative modelling of the training data's distribution. "
    "Not validated for operational or clinical decisions."
)


def model_card(meta: Mapping[str, Any], info: Mapping[str, Any]) -> str:
    """A Markdown model card from the saved config ``meta`` and training ``info``.

    ``info`` may hold ``data`` (the source's provenance, including its content
    hash), ``seed``, ``license``, ``train`` (figures such as steps, final loss,
    seconds) and ``intended_use``.
    """
    pipeline = meta.get("pipeline", {})
    components = "\n".join(f"- {k}: `{v.get('type')}`" for k, v in pipeline.items())
    data = info.get("data")
    train = info.get("train")
    return f"""# sciddpm pipeline

**Outputs of this model are synthetic.** They are samples from a generative
model trained on the data below, not observations.

## Components
{components}

Prediction type: `{meta.get("prediction_type")}`; sample shape `{meta.get("data_shape")}` in the
physical units of the training data.

## Data
{_block(data) if data else "Not recorded (built from the Python API without a data source)."}

## Training
- seed: {info.get("seed", "not recorded")}
{_block(train) if train else "- figures: not recorded"}

## Intended use
{info.get("intended_use", _INTENDED_USE)}

## Licence
{info.get("license", "Not stated: ask the owner of the training data before sharing samples or weights.")}

## Environment
- sciddpm {meta.get("sciddpm_version")}, torch {meta.get("torch_version")}, Python {platform.python_version()}
- plugins: {", ".join(f"{k} {v}" for k, v in meta.get("plugins", {}).items())}
"""


def _block(value: Any) -> str:
    return "```json\n" + json.dumps(value, indent=2, default=str) + "\n```"
