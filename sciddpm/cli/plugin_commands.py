"""The plugin author's commands: ``sciddpm plugins [--check]`` and ``sciddpm new-plugin``.

Thin wrappers over the registry, the conformance kit (:mod:`sciddpm.testing`) and
:mod:`sciddpm.cli.new_plugin`; the parser and error handling live in :mod:`sciddpm.cli.commands`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

__all__ = ["new_plugin_command", "plugins_command", "table"]


def plugins_command(args: argparse.Namespace) -> int:
    """``sciddpm plugins``: installed components and load failures, or with ``--check`` the kit's table."""
    if args.check is not None:
        return _check(args.check or None, args.json)
    from sciddpm.interfaces import KINDS
    from sciddpm.registry import get_registry

    registry = get_registry()
    components = [
        {
            "kind": e.kind,
            "name": e.full_name,
            "plugin": e.plugin,
            "version": e.version or _core_version(e.plugin),
            "description": e.component.description,
        }
        for e in registry.entries()
    ]
    errors = [
        {"plugin": f.plugin, "distribution": f.distribution, "error": f.error} for f in registry.failures
    ]
    if args.json:
        print(json.dumps({"components": components, "errors": errors}, indent=2))
        return 0
    for kind in KINDS:
        rows = [c for c in components if c["kind"] == kind]
        print(f"{_KIND_TITLES[kind]} ({len(rows)})")
        if rows:
            print(table(rows, ("name", "plugin", "version", "description")))
        print()
    if errors:
        print(f"failed to load ({len(errors)})")
        print(table(errors, ("plugin", "distribution", "error")))
    else:
        print("failed to load: none")
    return 0


def _check(plugin: str | None, as_json: bool) -> int:
    """Run the conformance kit on the installed components (of ``plugin``); 1 when any check fails."""
    import torch

    from sciddpm.testing.installed import check_installed

    torch.set_num_threads(1)  # the kit's tensors are tiny: one thread is fastest and shares the machine
    outcomes = check_installed(plugin)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("pass", "fail", "not run")}
    if as_json:
        print(json.dumps({"outcomes": [o.as_dict() for o in outcomes], "counts": counts}, indent=2))
    else:
        rows = [o.as_dict() for o in outcomes]
        print(table(rows, ("component", "check", "status", "message")))
        print(f"\n{counts['pass']} passed, {counts['fail']} failed, {counts['not run']} not run")
    return 1 if counts["fail"] else 0


_KIND_TITLES = {
    "encoder": "encoders",
    "denoiser": "denoisers",
    "conditioner": "conditioners",
    "scheduler": "schedulers",
    "data": "data sources",
    "metric": "metrics",
}


def new_plugin_command(args: argparse.Namespace) -> int:
    """``sciddpm new-plugin NAME --kinds ...``: write the package and say what to run next."""
    from sciddpm.cli.new_plugin import render_plugin

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    target = render_plugin(args.name, kinds, args.out)
    print(
        f"wrote {target}: cd {target} && pip install -e '.[test]' && python examples/make_example_data.py "
        f"&& python -m pytest && sciddpm plugins --check {args.name}"
    )
    return 0


def _core_version(plugin: str) -> str:
    from sciddpm import __version__
    from sciddpm.registry import BUILTIN_PLUGIN

    return __version__ if plugin == BUILTIN_PLUGIN else "-"


def table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """Rows as an aligned plain-text table under a header of ``columns`` (missing values as "-")."""
    cells = [[str(r.get(c) if r.get(c) is not None else "-") for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += [
        "  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)
