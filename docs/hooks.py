"""MkDocs hook: reference pages generated from the code at build time, so they cannot drift.

- ``reference/cli.md`` from the argparse parser (``sciddpm.cli.commands.build_parser``): every
  subcommand, its usage and each option with its help;
- ``reference/configuration.md`` from the pydantic models of the run file (``RunConfig`` and the
  models it holds): every field with its type, default and description;
- ``reference/components.md`` from the registry: every installed component with its plugin,
  description and config fields.

The pages are added to the build as generated files (MkDocs 1.6 ``File.generated``); nothing is
written into ``docs/``.
"""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import BaseModel


def _cell(text: Any) -> str:
    """``text`` safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def cli_page() -> str:
    from sciddpm.cli.commands import build_parser

    parser = build_parser()
    lines = [
        "# Command line",
        "",
        "Generated from the `sciddpm` parser at build time. `sciddpm COMMAND --help` prints the same.",
        "",
    ]
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in subparsers._choices_actions}
    for name, sub in subparsers.choices.items():
        lines += [
            f"## `sciddpm {name}`",
            "",
            _cell(helps.get(name, "")),
            "",
            "```text",
            sub.format_usage().strip(),
            "```",
            "",
        ]
        lines += ["| option | default | help |", "|---|---|---|"]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            flag = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest}`"
            default = "" if action.default in (None, False, argparse.SUPPRESS) else f"`{action.default}`"
            lines.append(f"| {flag} | {default} | {_cell(action.help or '')} |")
        lines.append("")
    return "\n".join(lines)


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    return text or str(annotation).replace("typing.", "")


def _fields_table(model: Any) -> list[str]:
    lines = ["| field | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        value = None if field.is_required() else field.get_default(call_default_factory=True)
        if field.is_required():
            default = "required"
        elif isinstance(value, BaseModel):  # a nested section, listed under its own heading
            default = f"see `{type(value).__name__}`"
        else:
            default = f"`{value!r}`"
        kind, text = _cell(_type_name(field.annotation)), _cell(field.description or "")
        lines.append(f"| `{name}` | `{kind}` | {_cell(default)} | {text} |")
    return lines


def config_page() -> str:
    from sciddpm.config import PipelineConfig, RunConfig, TrainConfig

    lines = [
        "# Configuration",
        "",
        "Generated from the pydantic models at build time. A run file (TOML, JSON or YAML) has the",
        "sections `data` (a component spec), `pipeline` and `train`; unknown keys are refused.",
        "",
    ]
    for title, model in (
        ("Run file", RunConfig),
        ("`[pipeline]`", PipelineConfig),
        ("`[train]`", TrainConfig),
    ):
        lines += [f"## {title}", "", _cell((model.__doc__ or "").strip().split("\n\n")[0]), ""]
        lines += [*_fields_table(model), ""]
    return "\n".join(lines)


def components_page() -> str:
    from sciddpm.registry import KINDS, get_registry

    registry = get_registry()
    lines = [
        "# Components",
        "",
        "Every component installed where these docs were built (the core's and the climate and",
        "microscopy plugins'), generated from the registry; `sciddpm plugins` lists yours.",
        'A component is named in a run file as `{type = "NAME", ...}` with its config\'s fields.',
        "",
    ]
    for kind in KINDS:
        lines += [f"## {kind}", ""]
        for entry in registry.entries(kind):
            lines += [f"### `{entry.full_name}`", "", _cell(entry.component.description), ""]
            config = entry.config_class()
            if config is not None and config.model_fields:
                lines += [*_fields_table(config), ""]
    return "\n".join(lines)


def on_files(files: Any, config: Any) -> Any:
    """Add the generated reference pages to the build."""
    from mkdocs.structure.files import File

    for path, make in (
        ("reference/cli.md", cli_page),
        ("reference/configuration.md", config_page),
        ("reference/components.md", components_page),
    ):
        files.append(File.generated(config, path, content=make()))
    return files
