"""Machine-readable marking of generated content: it is synthetic, and which model and run made it.

Every file of generated samples that sciddpm writes carries a record: ``synthetic: true``, the
IPTC digital source type ``trainedAlgorithmicMedia`` (the vocabulary C2PA and news photo metadata
use for output of a generative model), the model directory and a content hash of its weights, the
sampler, steps, guidance and seed, and the sciddpm version. ``.npy`` files get it in a side-car
``NAME.npy.json``; PNG figures in their text chunks (``Description`` and ``sciddpm:provenance``);
native formats (zarr, OME) in their own attributes, written by the data source's native writer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = [
    "DIGITAL_SOURCE_TYPE",
    "PNG_KEY",
    "png_text",
    "read_sidecar",
    "record",
    "sidecar_path",
    "weights_hash",
]

#: IPTC NewsCodes digital source type of media made by a trained generative model.
DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
#: The PNG text chunk that holds the JSON record.
PNG_KEY = "sciddpm:provenance"


def weights_hash(directory: str | Path) -> str:
    """First 16 hex digits of the sha256 over ``name digest`` lines of a saved pipeline's safetensors."""
    from sciddpm.diffusion.gaussian import START_TENSORS
    from sciddpm.persistence import file_sha256

    # The Gaussian start kept for fitted schedules is sampling data, not weights.
    files = sorted(p for p in Path(directory).glob("*.safetensors") if p.name != START_TENSORS)
    listing = "\n".join(f"{path.name} {file_sha256(path)}" for path in files)
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


def record(model: str | Path | None, **run: Any) -> dict[str, Any]:
    """The provenance record of samples made by the pipeline saved in ``model`` with ``run`` settings.

    ``run`` holds the sampler, steps, guidance, seed, condition (JSON-able values). ``model`` None:
    a pipeline never saved (built in Python), recorded as such.
    """
    from sciddpm import __version__

    return {
        "synthetic": True,
        "digital_source_type": DIGITAL_SOURCE_TYPE,
        "generator": f"sciddpm {__version__}",
        "model": None if model is None else str(model),
        "weights_sha256": None if model is None else weights_hash(model),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **{k: v for k, v in run.items() if v is not None},
    }


def sidecar_path(path: str | Path) -> Path:
    """The side-car of a data file: ``samples.npy`` -> ``samples.npy.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The provenance record beside ``path``; FileNotFoundError naming the side-car when there is none."""
    side = sidecar_path(path)
    if not side.is_file():
        raise FileNotFoundError(f"{side} is missing: {path} carries no sciddpm provenance record")
    return json.loads(side.read_text(encoding="utf-8"))


def png_text(provenance: Mapping[str, Any]) -> dict[str, str]:
    """PNG text chunks for matplotlib's ``savefig(metadata=...)``: a readable line and the JSON record."""
    return {
        "Description": f"Synthetic: samples of a generative model ({provenance.get('model')}), not data.",
        "Software": str(provenance.get("generator", "sciddpm")),
        PNG_KEY: json.dumps(dict(provenance), default=str),
    }
