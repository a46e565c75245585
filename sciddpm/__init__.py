"""sciddpm: diffusion models for scientific data, with plugins for your lab's data.

The everyday API is here::

    import sciddpm

    pipe = sciddpm.train(run, "runs/fields", source=source)   # or sciddpm.Pipeline.load(dir)
    samples = pipe.sample(16, steps=50, seed=0)
    unet = sciddpm.build("denoiser", "unet", dims=2, in_channels=1)

``import sciddpm`` is cheap: torch and the components are imported when a public name that needs
them is first used, so ``sciddpm plugins`` lists plugins without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it; resolved on first attribute access.
_LAZY = {
    "Pipeline": "sciddpm.pipeline.pipeline",
    "train": "sciddpm.training.trainer",
    "sample_callable": "sciddpm.diffusion.loop",
    "Component": "sciddpm.hooks",
    "hookimpl": "sciddpm.hooks",
    "API_VERSION": "sciddpm.hooks",
    "get_registry": "sciddpm.registry",
    "reload_registry": "sciddpm.registry",
    "load_run": "sciddpm.config",
    "dump_run": "sciddpm.config",
    "RunConfig": "sciddpm.config",
    "ConfigError": "sciddpm.spec",
    "Conditioner": "sciddpm.interfaces",
    "Conditioning": "sciddpm.interfaces",
    "DataSource": "sciddpm.interfaces",
    "Denoiser": "sciddpm.interfaces",
    "Encoder": "sciddpm.interfaces",
    "Metric": "sciddpm.interfaces",
    "NativeWriter": "sciddpm.interfaces",
    "Sample": "sciddpm.interfaces",
    "Scheduler": "sciddpm.interfaces",
    "StepOutput": "sciddpm.interfaces",
}

__all__ = ["__version__", "build", *_LAZY]


def build(kind: str, spec: Any, **params: Any) -> Any:
    """Build a registered component: ``sciddpm.build("denoiser", "unet", dims=2, in_channels=1)``.

    ``spec`` is a registry name, a ``{"type": ..., ...}`` mapping or a ComponentSpec; ``params``
    override its parameters. Raises the registry's errors: an unknown or ambiguous name (listing
    what is installed), ConfigError for bad parameters, PluginError for a component that does not
    implement its kind's interface.
    """
    from sciddpm.registry import get_registry

    return get_registry().build(kind, spec, **params)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sciddpm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
