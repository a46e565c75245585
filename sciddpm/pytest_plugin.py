"""sciddpm's pytest plugin: fixtures for plugin authors, loaded in every pytest run (``pytest11``).

- ``sciddpm_registry(*plugins, **named)``: an isolated registry with the built-in components and only the
  named plugins (installed entry-point names, or hook modules not installed yet), made the
  process-wide one for the test, so that names resolve as they will for users;
- ``tiny_source``: 16 in-memory samples ``(2, 8, 8)`` in physical units with two classes;
- ``tiny_pipeline``: a standardise + tiny U-Net + DDIM pipeline sized from ``tiny_source``, untrained.

Importing this module imports neither torch nor sciddpm's components: pytest loads it at start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

__all__ = ["TINY_UNET", "sciddpm_registry", "tiny_pipeline", "tiny_source"]

#: The smallest U-Net that trains in milliseconds (tiny_pipeline's denoiser).
TINY_UNET = {"type": "unet", "channels": [8, 16], "blocks_per_level": 1, "groups": 4, "heads": 1,
             "mid_attention": False}  # fmt: skip


@pytest.fixture
def sciddpm_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """``make(*plugins, **named)`` -> a Registry of the built-ins and the plugins, made the process-wide one.

    A plugin is an installed entry-point name of the ``sciddpm.plugins`` group (``"mylab"``), a hook
    module (named by its entry point when installed, else by its last dotted part) or
    ``name=module`` (``make(mylab=sciddpm_mylab._plugin)``: the components are ``mylab/...``).
    Raises LookupError naming the installed plugins for an unknown name. The previous process-wide
    registry is restored after the test.
    """
    from importlib.metadata import entry_points

    from sciddpm import registry as registry_module

    def make(*plugins: Any, **named: Any) -> Any:
        installed = {ep.name: ep for ep in entry_points(group=registry_module.ENTRY_POINT_GROUP)}
        by_module = {ep.value: ep.name for ep in installed.values()}
        given: dict[str, object] = {}
        for plugin in plugins:
            if isinstance(plugin, str):
                if plugin not in installed:
                    names = ", ".join(sorted(installed)) or "none"
                    raise LookupError(
                        f"no installed sciddpm plugin {plugin!r}; installed: {names} "
                        "(pip install -e . your plugin first, or pass its hook module as name=module)"
                    )
                given[plugin] = installed[plugin].load()
            else:  # a hook module: its entry-point name when installed, else name it with name=module
                module_name = getattr(plugin, "__name__", type(plugin).__name__)
                given[by_module.get(module_name, module_name.rsplit(".", 1)[-1])] = plugin
        given.update(named)
        monkeypatch.setenv("SCIDDPM_DISABLE_PLUGIN_AUTOLOAD", "1")
        registry = registry_module.Registry.load(plugins=given, strict=True)
        monkeypatch.setattr(registry_module, "_REGISTRY", registry)
        return registry

    yield make


@pytest.fixture
def tiny_source() -> Any:
    """16 samples ``(2, 8, 8)``: a temperature-like channel (K) and a small positive one, classes 0/1."""
    from sciddpm.data.arrays import ArraySource
    from sciddpm.testing.modules import example_batch

    return ArraySource.from_array(example_batch(2, (8, 8), n=16, seed=0), labels=[i % 2 for i in range(16)])


@pytest.fixture
def tiny_pipeline(tiny_source: Any) -> Any:
    """An untrained Pipeline (standardize, a tiny U-Net, no conditioner, DDIM) fitted on ``tiny_source``."""
    from sciddpm.pipeline.pipeline import Pipeline

    config = {
        "encoder": {"type": "standardize"},
        "denoiser": TINY_UNET,
        "conditioner": {"type": "none"},
        "scheduler": {"type": "ddim"},
    }
    return Pipeline.from_config(config, tiny_source)
