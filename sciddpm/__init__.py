"""sciddpm: diffusion models for scientific data, with plugins for your lab's data.

``import sciddpm`` is cheap: torch and the components are imported when a
public name that needs them is first used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it; resolved on first attribute access.
_LAZY = {
    "Component": "sciddpm.hooks",
    "hookimpl": "sciddpm.hooks",
    "API_VERSION": "sciddpm.hooks",
    "get_registry": "sciddpm.registry",
    "reload_registry": "sciddpm.registry",
    "load_run": "sciddpm.config",
    "dump_run": "sciddpm.config",
    "RunConfig": "sciddpm.config",
    "ConfigError": "sciddpm.config",
    "Conditioning": "sciddpm.interfaces",
    "Sample": "sciddpm.interfaces",
}

__all__ = ["__version__", "build", *_LAZY]


def build(kind: str, spec: Any, **params: Any) -> Any:
    """Build a registered component: ``sciddpm.build("denoiser", "unet", dims=2, in_channels=1)``."""
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
