"""Plugin discovery and component lookup.

Plugins are found under the ``sciddpm.plugins`` entry-point group and managed
by pluggy; the core's own components come from :mod:`sciddpm.builtin`
through the same hook. Discovery only collects :class:`~sciddpm.hooks.Component`
records: a component's module is imported when it is first built.

A plugin that fails to import, implements an unknown hook, or returns bad
records is recorded as a :class:`LoadFailure` and skipped, so one broken
plugin never breaks the others. Environment switches:

- ``SCIDDPM_STRICT_PLUGINS=1``: any load failure raises :class:`PluginLoadError`.
- ``SCIDDPM_DISABLE_PLUGIN_AUTOLOAD=1``: load only the built-in components.
- ``SCIDDPM_BLOCK_PLUGINS=a,b``: skip the plugins (entry-point names) a and b.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as metadata
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pluggy

from sciddpm import builtin
from sciddpm.hooks import API_VERSION, COMPATIBLE_API_VERSIONS, Component, Specs
from sciddpm.interfaces import KINDS
from sciddpm.spec import ComponentSpec, validate_params

__all__ = [
    "BUILTIN_PLUGIN",
    "ENTRY_POINT_GROUP",
    "RESERVED_FIELDS",
    "AmbiguousNameError",
    "Entry",
    "LoadFailure",
    "NameClashError",
    "PluginError",
    "PluginLoadError",
    "Registry",
    "UnknownComponentError",
    "get_registry",
    "interface_for",
    "reload_registry",
    "resolve_reference",
]

ENTRY_POINT_GROUP = "sciddpm.plugins"
BUILTIN_PLUGIN = "sciddpm"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


class PluginError(Exception):
    """Base class of every registry error."""


class PluginLoadError(PluginError):
    """A plugin failed to load while ``SCIDDPM_STRICT_PLUGINS=1``."""


class NameClashError(PluginError):
    """Two plugins register the same full name."""


class UnknownComponentError(PluginError, KeyError):
    """No installed component has this name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class AmbiguousNameError(PluginError, KeyError):
    """A short name matches components of several plugins."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class LoadFailure:
    """A plugin (or one of its components) that could not be loaded."""

    plugin: str
    distribution: str | None
    version: str | None
    error: str

    def __str__(self) -> str:
        dist = f" ({self.distribution} {self.version})" if self.distribution else ""
        return f"{self.plugin}{dist}: {self.error}"


@dataclass(frozen=True)
class Entry:
    """A component record together with the plugin that registered it."""

    component: Component
    plugin: str
    distribution: str | None
    version: str | None

    @property
    def kind(self) -> str:
        """The component's kind (encoder, denoiser, conditioner, scheduler, data, metric)."""
        return self.component.kind

    @property
    def name(self) -> str:
        """The component's short name within its plugin."""
        return self.component.name

    @property
    def full_name(self) -> str:
        """``plugin/name``: the name that is always unique."""
        return f"{self.plugin}/{self.component.name}"

    def config_class(self) -> type:
        """The component's pydantic config class, imported on first use.

        Raises PluginError, naming the plugin, the component and the problem, when it is not a
        pydantic model or has a field whose name a run file reserves (``type``).
        """
        config = resolve_reference(self.component.config, self.full_name)
        problem = _config_problem(config)
        if problem:
            raise PluginError(f"plugin {self.plugin!r}, component {self.component.name!r}: {problem}")
        return config

    def factory(self) -> Any:
        """The component's factory, imported on first use."""
        factory = resolve_reference(self.component.factory, self.full_name)
        if not callable(factory):
            raise PluginError(f"component {self.full_name!r}: factory {factory!r} is not callable")
        return factory


def resolve_reference(ref: Any, owner: str) -> Any:
    """Import a lazy ``"module:attr"`` reference from a plugin record.

    References come from installed plugins' code, never from config files.
    """
    if not isinstance(ref, str):
        return ref
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise PluginError(f"component {owner!r}: reference {ref!r} is not of the form 'module:attr'")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"component {owner!r}: cannot import {ref!r}: {exc}") from exc
    return obj


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _blocked() -> set[str]:
    return {p.strip() for p in os.environ.get("SCIDDPM_BLOCK_PLUGINS", "").split(",") if p.strip()}


class Registry:
    """The components of every loaded plugin, looked up by kind and name."""

    def __init__(self, entries: Iterable[Entry], failures: Iterable[LoadFailure] = ()) -> None:
        self.failures: list[LoadFailure] = list(failures)
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        for entry in entries:
            table = self._entries[entry.kind]
            other = table.get(entry.full_name)
            if other is not None:
                raise NameClashError(
                    f"{entry.kind} {entry.full_name!r} is registered twice: by "
                    f"{_origin(other)} and by {_origin(entry)}; uninstall or block one of them "
                    "(SCIDDPM_BLOCK_PLUGINS=name)"
                )
            table[entry.full_name] = entry

    @classmethod
    def load(cls, *, strict: bool | None = None, plugins: Mapping[str, object] | None = None) -> Registry:
        """Discover plugins: the built-in one, entry points, and ``plugins`` given directly.

        ``plugins`` maps a plugin name to a module or object with hook
        implementations; it is how tests and notebooks add a plugin without
        installing it.
        """
        strict = _env_flag("SCIDDPM_STRICT_PLUGINS") if strict is None else strict
        loader = _Loader()
        loader.add(BUILTIN_PLUGIN, builtin, None, None)
        blocked = _blocked()
        if not _env_flag("SCIDDPM_DISABLE_PLUGIN_AUTOLOAD"):
            for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
                if ep.name not in blocked:
                    loader.add_entry_point(ep)
        for name, plugin in (plugins or {}).items():
            if name not in blocked:
                loader.add(name, plugin, None, None)
        entries = loader.collect()
        if strict and loader.failures:
            listing = "\n  ".join(str(f) for f in loader.failures)
            raise PluginLoadError(
                f"{len(loader.failures)} plugin(s) failed to load (SCIDDPM_STRICT_PLUGINS is set):\n"
                f"  {listing}"
            )
        return cls(entries, loader.failures)

    def entries(self, kind: str | None = None) -> list[Entry]:
        """Every entry, or those of one kind, sorted by kind then full name."""
        kinds = KINDS if kind is None else (_check_kind(kind),)
        return [self._entries[k][n] for k in kinds for n in sorted(self._entries[k])]

    def names(self, kind: str) -> list[str]:
        """Full names of the installed components of ``kind``."""
        return sorted(self._entries[_check_kind(kind)])

    def get(self, kind: str, name: str) -> Entry:
        """Look up a component by full name (``plugin/name``) or unique short name."""
        table = self._entries[_check_kind(kind)]
        if "/" in name:
            if name in table:
                return table[name]
            candidates = []
        else:
            candidates = [e for e in table.values() if e.name == name]
            if len(candidates) == 1:
                return candidates[0]
        if len(candidates) > 1:
            listing = ", ".join(sorted(e.full_name for e in candidates))
            raise AmbiguousNameError(
                f"{kind} name {name!r} is ambiguous: it matches {listing}; use the full name"
            )
        raise UnknownComponentError(self._unknown_message(kind, name))

    def _unknown_message(self, kind: str, name: str) -> str:
        installed = self.names(kind)
        short = sorted({e.name for e in self._entries[kind].values()})
        close = difflib.get_close_matches(name, installed + short, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        msg = f"unknown {kind} {name!r}.{hint} Installed {kind}s: {', '.join(installed) or 'none'}."
        if self.failures:
            msg += " Plugins that failed to load: " + "; ".join(str(f) for f in self.failures) + "."
        return msg

    def build(self, kind: str, spec: Any, **overrides: Any) -> Any:
        """Build a component from a name, a ``{"type": ..., ...}`` mapping or a ComponentSpec.

        ``overrides`` replace parameters of the spec. The parameters are
        validated by the component's config class first.
        """
        spec = ComponentSpec.coerce(spec)
        entry = self.get(kind, spec.type)
        config = validate_params(entry.config_class(), {**spec.params, **overrides}, path=(kind,))
        component = entry.factory()(config)
        interface = interface_for(kind)
        if not isinstance(component, interface):
            raise PluginError(
                f"{kind} {entry.full_name!r} built a {type(component).__name__}, which does not "
                f"implement sciddpm.interfaces.{interface.__name__}"
            )
        if kind == "scheduler" and not callable(
            getattr(getattr(component, "process", None), "alpha_sigma", None)
        ):
            raise PluginError(
                f"scheduler {entry.full_name!r} declares no noise process: give it a `process` attribute "
                "(a sciddpm.diffusion.processes.NoiseProcess), as the Scheduler contract of API "
                f"{API_VERSION} asks; the sampling loop reads its noise levels there"
            )
        return component


#: Keys of a component reference in a run file; a config field may not use them.
RESERVED_FIELDS = ("type",)


def _config_problem(config: Any) -> str | None:
    """Why ``config`` cannot be a component's config class, or None when it can."""
    from pydantic import BaseModel

    if not (isinstance(config, type) and issubclass(config, BaseModel)):
        return f"config {config!r} is not a pydantic BaseModel subclass"
    reserved = [name for name in RESERVED_FIELDS if name in config.model_fields]
    if reserved:
        return (
            f"its config class {config.__name__} has a field named {reserved[0]!r}, which run files reserve "
            'for the component\'s registry name ({type = "plugin/name", ...}); rename the field'
        )
    return None


def _origin(entry: Entry) -> str:
    dist = f" ({entry.distribution} {entry.version})" if entry.distribution else ""
    return f"plugin {entry.plugin!r}{dist}"


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; kinds are {', '.join(KINDS)}")
    return kind


def interface_for(kind: str) -> type:
    """The interface class (in :mod:`sciddpm.interfaces`) components of ``kind`` implement."""
    from sciddpm import interfaces

    name = {"data": "DataSource"}.get(kind, kind.capitalize())
    return getattr(interfaces, name)


class _Loader:
    """Registers plugins one by one, recording failures instead of raising."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("sciddpm")
        self.pm.add_hookspecs(Specs)
        self.failures: list[LoadFailure] = []
        self.origin: dict[str, tuple[str | None, str | None]] = {}
        self._specs = {n for n in dir(Specs) if n.startswith("sciddpm_")}

    def fail(self, plugin: str, error: str) -> None:
        dist, version = self.origin.get(plugin, (None, None))
        self.failures.append(LoadFailure(plugin, dist, version, error))

    def add_entry_point(self, ep: metadata.EntryPoint) -> None:
        dist = getattr(ep, "dist", None)
        dist_name, version = (dist.name, dist.version) if dist is not None else (None, None)
        if ep.name in self.origin:
            raise NameClashError(
                f"two plugins are named {ep.name!r}: {self.origin[ep.name][0]} and {dist_name}; "
                f"uninstall one or block it with SCIDDPM_BLOCK_PLUGINS={ep.name}"
            )
        self.origin[ep.name] = (dist_name, version)
        try:
            plugin = ep.load()
        except Exception as exc:
            self.fail(ep.name, f"import failed: {type(exc).__name__}: {exc}")
            return
        self.add(ep.name, plugin, dist_name, version)

    def add(self, name: str, plugin: object, dist: str | None, version: str | None) -> None:
        if self.pm.has_plugin(name):
            first = self.origin.get(name, (None, None))[0] or "an earlier plugin"
            raise NameClashError(
                f"two plugins are named {name!r}: {first} and {dist or 'another plugin'}; "
                f"uninstall one or block it with SCIDDPM_BLOCK_PLUGINS={name}"
            )
        self.origin.setdefault(name, (dist, version))
        unknown = [
            attr
            for attr in dir(plugin)
            if self.pm.parse_hookimpl_opts(plugin, attr) is not None and attr not in self._specs
        ]
        if unknown:
            hints = []
            for attr in unknown:
                close = difflib.get_close_matches(attr, sorted(self._specs), n=1)
                hints.append(f"{attr!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            self.fail(name, "implements unknown hook " + ", ".join(hints))
            return
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # pluggy.PluginValidationError: bad hook signature
            self.fail(name, f"invalid hook implementation: {exc}")

    def collect(self) -> list[Entry]:
        entries: list[Entry] = []
        for impl in self.pm.hook.sciddpm_components.get_hookimpls():
            plugin = impl.plugin_name
            dist, version = self.origin.get(plugin, (None, None))
            try:
                records = list(impl.function())
            except Exception as exc:
                self.fail(plugin, f"sciddpm_components() raised {type(exc).__name__}: {exc}")
                continue
            for record in records:
                problem = _check_record(record)
                if problem:
                    self.fail(plugin, problem)
                    continue
                entries.append(Entry(record, plugin, dist, version))
        return entries


def _check_record(record: object) -> str | None:
    """Why ``record`` cannot be registered, or None when it can."""
    if not isinstance(record, Component):
        return f"returned {record!r}, not a sciddpm.hooks.Component"
    if record.kind not in KINDS:
        return f"component {record.name!r} has unknown kind {record.kind!r}; kinds are {', '.join(KINDS)}"
    if not _NAME.match(record.name):
        return f"component name {record.name!r} is invalid: use letters, digits, '_', '-', '.' and no '/'"
    if not isinstance(record.config, str) and _config_problem(record.config):
        return f"component {record.name!r}: {_config_problem(record.config)}"
    if record.api_version != API_VERSION and record.kind not in COMPATIBLE_API_VERSIONS.get(
        record.api_version, ()
    ):
        changed = " (API 2: a scheduler declares `process` and `sigma_data`; `step` takes x0 estimates)"
        return (
            f"component {record.name!r} targets sciddpm component API {record.api_version}, "
            f"this sciddpm provides API {API_VERSION}{changed if record.kind == 'scheduler' else ''}; "
            "upgrade the plugin or sciddpm"
        )
    for requirement in record.requires:
        dist = re.split(r"[<>=!~\[;\s]", requirement, maxsplit=1)[0]
        try:
            metadata.distribution(dist)
        except metadata.PackageNotFoundError:
            return (
                f"component {record.name!r} requires {requirement!r}, which is not installed "
                f"(pip install {dist})"
            )
    return None


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, discovered on first use and then cached."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry.load()
    return _REGISTRY


def reload_registry(**kwargs: Any) -> Registry:
    """Discover plugins again (after installing one, or changing the environment switches)."""
    global _REGISTRY
    _REGISTRY = Registry.load(**kwargs)
    return _REGISTRY
