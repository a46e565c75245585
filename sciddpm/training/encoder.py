"""Training an autoencoder stage on its own: ``sciddpm train RUN --stage encoder --out DIR``.

The run's ``pipeline.encoder`` (a trainable encoder such as the ``vae``) is sized from the run's
data, fitted, and saved in ``DIR``; ``encoder = {type = "vae", weights = "DIR"}`` reuses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sciddpm.config import ComponentSpec, RunConfig, load_run
from sciddpm.interfaces import DataSource, Encoder
from sciddpm.pipeline.pipeline import complete_spec
from sciddpm.registry import get_registry

__all__ = ["train_encoder"]


def train_encoder(
    run: RunConfig | str | Path | Mapping[str, Any],
    out: str | Path,
    *,
    source: DataSource | None = None,
) -> Encoder:
    """Train only the run's autoencoder (``pipeline.encoder``) on its data and save it in ``out``.

    The result is reused by ``encoder = {type = "vae", weights = "<out>"}``. This is what
    ``sciddpm train RUN --stage encoder --out DIR`` runs. Raises FileExistsError when ``out`` holds
    a saved autoencoder, and ValueError when the run has no data, the encoder has no training stage,
    or it names weights already trained.
    """
    run = run if isinstance(run, RunConfig) else load_run(run)
    registry = get_registry()
    if source is None:
        if run.data is None:
            raise ValueError("the run has no [data] section: add one or pass source=...")
        source = registry.build("data", run.data)
    spec = ComponentSpec.coerce(run.pipeline.encoder)
    shape = tuple(source.sample_shape)
    spec = complete_spec(registry, "encoder", spec, {"dims": len(shape) - 1, "in_channels": shape[0]})
    encoder = registry.build("encoder", spec)
    if not encoder.trainable or not hasattr(encoder, "save") or not hasattr(encoder, "config_file"):
        raise ValueError(
            f"--stage encoder trains an autoencoder, but pipeline.encoder is {spec.type!r}, which has no "
            "training stage; use type = 'vae'"
        )
    if spec.params.get("weights") is not None:
        raise ValueError(
            f"pipeline.encoder.weights is {spec.params['weights']!r}: that VAE is already trained; "
            "remove weights to train a new one"
        )
    if (Path(out) / encoder.config_file).exists():
        raise FileExistsError(
            f"{out} already holds a saved VAE ({encoder.config_file}); choose another output directory or "
            "delete it"
        )
    encoder.fit(source)
    encoder.save(out)
    return encoder
