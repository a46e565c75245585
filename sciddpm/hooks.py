"""pluggy markers and hook specifications for sciddpm plugins.

A plugin is a module (or object) exposed under the ``sciddpm.plugins``
entry-point group whose ``@hookimpl`` functions return :class:`Component`
records. Records are plain data: building them must not import the heavy
modules their components live in (see :mod:`sciddpm.registry`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pluggy

__all__ = ["API_VERSION", "COMPATIBLE_API_VERSIONS", "Component", "Specs", "hookimpl", "hookspec"]

#: Version of the component contract in :mod:`sciddpm.interfaces`. It changes when a contract
#: changes; a record declaring an older version is still accepted for the kinds whose contract did
#: not change since (:data:`COMPATIBLE_API_VERSIONS`), any other version is refused with an error
#: naming both versions and what changed. Version 2: a scheduler declares its ``process`` and
#: ``sigma_data`` and its ``step`` takes x0 estimates (``prediction_type="x0"``).
API_VERSION = 2
#: For each older API version, the kinds whose contract is unchanged since (records still accepted).
COMPATIBLE_API_VERSIONS: dict[int, tuple[str, ...]] = {
    1: ("encoder", "denoiser", "conditioner", "data", "metric"),
}

hookspec = pluggy.HookspecMarker("sciddpm")
hookimpl = pluggy.HookimplMarker("sciddpm")


@dataclass(frozen=True)
class Component:
    """A registration record: what a plugin offers, without importing it.

    ``factory`` and ``config`` are either objects or lazy ``"module:attr"``
    references, imported when the component is first built or validated.
    The factory is called with one validated instance of ``config`` (a
    pydantic model) and returns the component. ``check_params`` are the parameters
    ``sciddpm plugins --check`` builds it with (small and fast: a VAE of two training steps);
    None says it cannot be built without the user's data (a path), so ``--check`` reports it as not
    run and the plugin's own tests check it with :func:`sciddpm.testing.check_component`.
    """

    kind: str
    name: str
    factory: str | Callable[[Any], Any]
    config: str | type
    description: str = ""
    api_version: int = API_VERSION
    requires: Sequence[str] = ()
    capabilities: Sequence[str] = field(default_factory=tuple)
    check_params: Mapping[str, Any] | None = field(default_factory=dict)


class Specs:
    """Hook specifications; plugins implement these with ``@hookimpl``."""

    @hookspec
    def sciddpm_components(self) -> list[Component]:  # type: ignore[empty-body]
        """Return the components this plugin registers."""
