"""The conformance kit over installed plugins: what ``sciddpm plugins --check`` runs and prints.

Each registered component is built with its record's ``check_params``; one whose config needs
more (a path to data), or whose record says ``check_params=None``, is reported as not run, naming
the missing fields or pointing to the plugin's own tests. A plugin that failed to
load is one failed ``loads`` row with the registry's message (import error, bad record, plugin
API version): every problem is a row naming the plugin and the check, never a traceback.
"""

from __future__ import annotations

from typing import Any

from sciddpm.testing.runner import Outcome

__all__ = ["check_installed"]


def check_installed(plugin: str | None = None, registry: Any = None) -> list[Outcome]:
    """Outcomes of every check of every component of ``plugin`` (an entry-point name; None: all).

    Raises ValueError naming the installed plugins when ``plugin`` is neither loaded nor failed.
    """
    from sciddpm.registry import PluginError, get_registry
    from sciddpm.spec import ConfigError, validate_params
    from sciddpm.testing import checks_for, run_checks, subject

    registry = registry or get_registry()
    entries = [e for e in registry.entries() if plugin is None or e.plugin == plugin]
    failures = [f for f in registry.failures if plugin is None or f.plugin == plugin]
    if plugin is not None and not entries and not failures:
        known = sorted({e.plugin for e in registry.entries()} | {f.plugin for f in registry.failures})
        raise ValueError(f"no plugin {plugin!r} is installed; installed plugins: {', '.join(known)}")
    outcomes = [Outcome(f"{f.plugin} (plugin)", "plugin", "loads", "fail", f.error) for f in failures]
    for entry in entries:
        if entry.component.check_params is None:
            reason = (
                "needs the user's data to build (its record says check_params=None): check it in the "
                f"plugin's tests with check_component({entry.kind!r}, {entry.full_name!r}, ...)"
            )
            outcomes += [
                Outcome(entry.full_name, entry.kind, c.name, "not run", reason)
                for c in checks_for(entry.kind)
            ]
            continue
        try:
            # Sized as the kit builds it (dims, in_channels, data_shape filled in), then validated.
            target = subject(entry.kind, entry.full_name, dict(entry.component.check_params), None, registry)
            validate_params(entry.config_class(), dict(target.params), path=(entry.kind,))
        except PluginError as exc:
            outcomes.append(Outcome(entry.full_name, entry.kind, "config_class", "fail", str(exc)))
            continue
        except ConfigError as exc:
            reason = (
                f"needs parameters to build ({'; '.join(f'{p}: {m}' for p, m in exc.problems)}): check it in "
                f"the plugin's tests with check_component({entry.kind!r}, {entry.full_name!r}, ...)"
            )
            outcomes += [
                Outcome(entry.full_name, entry.kind, c.name, "not run", reason)
                for c in checks_for(entry.kind)
            ]
            continue
        outcomes += run_checks(target, False)
    return outcomes
