"""Shared fixtures: throwaway plugin distributions and a clean registry."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from sciddpm import registry as registry_module

# The tests use small tensors, for which one thread is fastest and never
# oversubscribes a shared 2-core machine.
torch.set_num_threads(1)

_ENV = ("SCIDDPM_STRICT_PLUGINS", "SCIDDPM_DISABLE_PLUGIN_AUTOLOAD", "SCIDDPM_BLOCK_PLUGINS")


@pytest.fixture(autouse=True)
def _clean_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test discovers plugins afresh, with no environment switch set."""
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    registry_module._REGISTRY = None
    yield
    registry_module._REGISTRY = None


@pytest.fixture
def make_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Install a throwaway distribution: a ``*.dist-info`` with entry points plus modules.

    ``make_dist("labplug", {"labplug": "labplug_hooks"}, {"labplug_hooks.py": "..."})``
    puts the files on a temporary ``sys.path`` entry, as pip would.
    """
    counter = iter(range(1000))

    def make(
        dist: str, entry_points: dict[str, str], modules: dict[str, str], version: str = "0.1.0"
    ) -> Path:
        root = tmp_path / f"site{next(counter)}"
        info = root / f"{dist}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[sciddpm.plugins]\n{lines}\n")
        for filename, source in modules.items():
            (root / filename).write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(root))
        for filename in modules:
            monkeypatch.delitem(sys.modules, filename.removesuffix(".py"), raising=False)
        return root

    return make
