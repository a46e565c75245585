"""MkDocs hook: reference pages generated from the code at build time, so they cannot drift.

- ``reference/cli.md`` from the argparse parser (``sciddpm.cli.commands.build_parser``): every
  subcommand, its usage and each option with its default and help;
- ``reference/configuration.md`` from the pydantic models of the run file (``RunConfig`` and the
  models it holds): every field with its type, default (as a run file writes it) and description;
- ``reference/components.md`` from the registry: every installed component with its plugin,
  description and config fields.

The pages are added to the build as generated files (MkDocs 1.6 ``File.generated``); nothing is
written into ``docs/``. A plugin whose config cannot be read gets a note, not a failed build.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from pydantic import BaseModel

_LONGEST = 60  # characters of a default shown before it is cut
# A Sphinx cross-reference as the docstrings write it and mkdocstrings renders it:
# :func:<code>~sciddpm.x.name</code> (a leading ~ shows the last part only).
_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|obj|exc):<code>(~?)([^<]+)</code>")


def _cell(text: Any) -> str:
    """``text`` safe inside a Markdown table cell (no code span: ``\\|`` would show in one)."""
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _toml(value: Any) -> str:
    """A default as a run file writes it: ``true``, ``[0.0, 1.0]``, ``"realization"``, ``{type = "unet"}``."""
    if isinstance(value, BaseModel):  # a component spec: {type = "unet", ...}
        value = value.model_dump(mode="json", exclude_none=True)
        value = {"type": value.pop("type"), **value.get("params", {})} if "type" in value else value
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    if isinstance(value, float):
        text = f"{value:.6g}"
    if isinstance(value, dict):  # an inline TOML table
        text = "{" + ", ".join(f"{k} = {json.dumps(v, default=str)}" for k, v in value.items()) + "}"
    text = text.replace("`", "'")  # a backtick in a repr would open a code span
    return text if len(text) <= _LONGEST else text[: _LONGEST - 3] + "..."


def cli_page() -> str:
    """The command line: every subcommand's usage and options, from the parser."""
    from sciddpm.cli.commands import build_parser

    parser = build_parser()
    lines = [
        "# Command line",
        "",
        "Generated from the `sciddpm` parser at build time. `sciddpm COMMAND --help` prints the same.",
        "",
        "```text",
        parser.format_usage().strip(),
        "```",
        "",
        *_options(parser),
    ]
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help or "" for choice in subparsers._choices_actions}
    for name, sub in subparsers.choices.items():
        lines += [f"## `sciddpm {name}`", "", _cell(helps.get(name, "")), ""]
        lines += ["```text", sub.format_usage().strip(), "```", "", *_options(sub)]
    return "\n".join(lines)


def _options(parser: argparse.ArgumentParser) -> list[str]:
    lines = ["| option | default | help |", "|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        flag = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest}`"
        # Identity, not equality: a default of 0 is a default (0 == False).
        hidden = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        default = (
            "" if hidden or isinstance(action, argparse._VersionAction) else _cell(_toml(action.default))
        )
        lines.append(f"| {flag} | {default} | {_cell(action.help or '')} |")
    return [*lines, ""]


def _fields_table(model: type[BaseModel]) -> list[str]:
    lines = ["| field | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        key = field.alias or name  # what a run file writes
        if field.is_required():
            default = "required"
        else:
            try:
                value = field.get_default(call_default_factory=True, validated_data={})
            except Exception:  # a factory that needs the other fields' values
                value = "(computed)"
            # A nested section is documented under its own heading, named by its model.
            section = isinstance(value, BaseModel) and type(value).__name__ != "ComponentSpec"
            default = f"see {type(value).__name__}" if section else _toml(value)
        annotation = field.annotation
        kind = annotation.__name__ if isinstance(annotation, type) else str(annotation)
        kind = kind.replace("typing.", "").replace("sciddpm.spec.", "")
        text = field.description or ""
        lines.append(f"| {_cell(key)} | {_cell(kind)} | {_cell(default)} | {_cell(text)} |")
    return lines


def config_page() -> str:
    """The run file's sections and every field, from the pydantic models."""
    from sciddpm.config import PipelineConfig, RunConfig, TrainConfig

    lines = [
        "# Configuration",
        "",
        "Generated from the pydantic models at build time. A run file (TOML, JSON or YAML) has the",
        "sections `data` (a component spec), `pipeline` and `train`; unknown keys are refused.",
        'Each component is `{type = "NAME", ...}` with the fields of its config',
        "([components](components.md)).",
        "",
    ]
    sections = (("Run file", RunConfig), ("[pipeline]", PipelineConfig), ("[train]", TrainConfig))
    for title, model in sections:
        summary = _cell((model.__doc__ or "").strip().split("\n\n")[0])
        lines += [f"## {title}: {model.__name__}", "", summary, ""]
        lines += [*_fields_table(model), ""]
    return "\n".join(lines)


def components_page() -> str:
    """Every installed component with its description and config fields, from the registry."""
    from sciddpm.registry import KINDS, get_registry

    registry = get_registry()
    plugins = sorted({entry.plugin for entry in registry.entries()})
    lines = [
        "# Components",
        "",
        f"Every component installed where these docs were built (plugins: {', '.join(plugins)}),",
        "generated from the registry; `sciddpm plugins` lists yours. A component is named in a run",
        'file as `{type = "NAME", ...}` with its config\'s fields.',
        "",
    ]
    for kind in KINDS:
        lines += [f"## {kind}", ""]
        for entry in registry.entries(kind):
            lines += [f"### `{entry.full_name}`", "", _cell(entry.component.description), ""]
            try:
                config = entry.config_class()
            except Exception as err:  # a broken plugin is documented as such, not a failed build
                lines += [f"*Its config cannot be read: {_cell(err)}*", ""]
                continue
            if config is not None and config.model_fields:
                lines += [*_fields_table(config), ""]
    return "\n".join(lines)


def _reference(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if short else target}</code>"


def on_page_content(html: str, **kwargs: Any) -> str:
    """Docstrings' Sphinx roles (``:func:`x```) shown as the code they name, without the role."""
    return _ROLE.sub(_reference, html)


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
