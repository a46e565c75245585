"""MkDocs hook: reference pages generated from the code at build time, so they cannot drift.

- ``reference/cli.md`` from the argparse parser (``sciddpm.cli.commands.build_parser``): every
  subcommand, its usage and each option with its default and help;
- ``reference/configuration.md`` from the pydantic models of the run file (``RunConfig`` and the
  models it holds): every field with its type, default (as a run file writes it) and description;
- ``reference/components.md`` from the registry: every installed component with its plugin,
  description and config fields;
- ``reference/api/*.md``, one page per subpackage: every public module of ``sciddpm``, rendered by
  mkdocstrings from its docstrings. The docstrings' Sphinx cross-references (``:class:`x```)
  become links to the object's entry once the site is written (``on_post_build``), and stay code
  where the target is not documented here (torch, numpy, private names).

The pages are added to the build as generated files (MkDocs 1.6 ``File.generated``); nothing is
written into ``docs/``. A plugin whose config cannot be read gets a note, not a failed build.
"""

from __future__ import annotations

import argparse
import ast
import functools
import html as html_lib
import importlib
import importlib.util
import json
import os
import pkgutil
import posixpath
import re
from pathlib import Path
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


# What on_page_content leaves for on_post_build: the code a role names, with its full target.
_MARKED = re.compile(r'<code data-ref="([^"]+)">([^<]*)</code>')
_ID = re.compile(r'id="(sciddpm[\w.]*)"')
#: The API pages: title and the subpackage each documents ("" is the top-level modules).
API_GROUPS = {
    "core": "",
    "pipeline": "pipeline",
    "training": "training",
    "diffusion": "diffusion",
    "components": "components",
    "nn": "nn",
    "data": "data",
    "evaluation": "evaluation",
    "bridge": "bridge",
    "testing": "testing",
    "cli": "cli",
}


def _reference(match: re.Match[str]) -> str:
    short, target = match.groups()
    shown = target.rsplit(".", 1)[-1] if short else target
    return f'<code data-ref="{html_lib.escape(target, quote=True)}">{shown}</code>'


def on_page_content(html: str, **kwargs: Any) -> str:
    """Docstrings' Sphinx roles (``:func:`x```) shown as the code they name, without the role.

    The full target rides along as ``data-ref``; :func:`on_post_build` makes it a link.
    """
    return _ROLE.sub(_reference, html)


def public_modules() -> list[str]:
    """Every public module of ``sciddpm`` with something of its own to document.

    A package whose ``__init__`` only re-exports is left out: its names are documented where they
    are defined, and rendering them twice would give one object two anchors.
    """
    import sciddpm

    names = []

    def fail(name: str) -> None:  # a subpackage that cannot be imported is an error, not a gap
        raise ImportError(f"{name} cannot be imported, so its modules cannot be documented")

    for info in pkgutil.walk_packages(sciddpm.__path__, "sciddpm.", onerror=fail):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        if info.ispkg:
            origin = importlib.util.find_spec(info.name).origin
            tree = ast.parse(Path(origin).read_text(encoding="utf-8"))
            if not any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) for n in tree.body):
                continue
        names.append(info.name)
    return names


def api_pages() -> dict[str, str]:
    """``reference/api/<group>.md`` for each of :data:`API_GROUPS`: every public module in it."""
    modules = public_modules()
    pages = {}
    for title, package in API_GROUPS.items():
        if package:
            prefix = f"sciddpm.{package}"
            members = [m for m in modules if m == prefix or m.startswith(prefix + ".")]
            heading = f"# `{prefix}`"
        else:
            members = [m for m in modules if m.count(".") == 1 and m.split(".")[1] not in API_GROUPS.values()]
            heading = "# `sciddpm`: the top-level modules"
        lines = [
            heading,
            "",
            "Generated from the docstrings at build time: every public module, its classes and functions.",
            "",
        ]
        for module in members:
            lines += [f"::: {module}", ""]
        pages[f"reference/api/{title}.md"] = "\n".join(lines)
    return pages


@functools.cache
def _canonical(target: str) -> str:
    """Where ``target`` is defined: ``sciddpm.Pipeline`` -> ``sciddpm.pipeline.pipeline.Pipeline``."""
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        except Exception:  # a name that is not a module at all may fail in any way: no link
            return target
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
        except AttributeError:
            return target
        module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if isinstance(module, str) and isinstance(qualname, str):
            return f"{module}.{qualname}"
        return target
    return target


@functools.cache
def _is_package(name: str) -> bool:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError, AttributeError):  # a class or function, not a module
        return False
    return spec is not None and spec.submodule_search_locations is not None


def _candidates(target: str, context: str) -> list[str]:
    """Full paths ``target`` may mean inside the docstring of ``context`` (an object's full path).

    Like Sphinx's reading of a relative name: ``GaussianStart.correct`` in
    ``sciddpm.diffusion.gaussian.fit`` is tried as ``sciddpm.diffusion.gaussian.fit.GaussianStart.correct``,
    then in each enclosing scope up to the module (``sciddpm.diffusion.gaussian.GaussianStart.correct``),
    not in its packages; each also where it is defined (a name the module imported). A name
    starting with ``sciddpm`` is also taken as written.
    """
    names = [target] if target.startswith("sciddpm") else []
    parts = context.split(".") if context else []
    for cut in range(len(parts), 0, -1):
        if _is_package(".".join(parts[:cut])):
            break
        names.append(".".join([*parts[:cut], target]))
    return [n for name in names for n in (name, _canonical(name))]


def link_references(pages: dict[str, str], anchors: dict[str, str]) -> dict[str, str]:
    """``pages`` (site path -> HTML) with every marked reference whose target has an anchor linked.

    ``anchors`` maps an object's full path to the site path of the page that documents it, with
    ``#`` and the anchor, or without one for a whole page (a package that only re-exports names
    has its group's page). A relative target is read in the docstring it appears in (the last
    anchor before it); one with no anchor stays code.
    """
    linked = {}
    for path, text in pages.items():
        ids = [(m.start(), m.group(1)) for m in _ID.finditer(text)]

        def link(match: re.Match[str], here: str = path, ids: list = ids) -> str:
            target, shown = html_lib.unescape(match.group(1)), match.group(2)
            context = next((name for start, name in reversed(ids) if start < match.start()), "")
            for name in _candidates(target, context):
                if name in anchors:
                    page, _, anchor = anchors[name].partition("#")
                    where = posixpath.relpath(page, posixpath.dirname(here) or ".")
                    return f'<a href="{where}{"#" + anchor if anchor else ""}"><code>{shown}</code></a>'
            return f"<code>{shown}</code>"

        linked[path] = _MARKED.sub(link, text)
    return linked


def on_post_build(config: Any, **kwargs: Any) -> None:
    """Link the docstrings' cross-references to the API pages' entries, in the written site."""
    site = Path(config["site_dir"])
    pages = {
        os.path.relpath(f, site).replace(os.sep, "/"): f.read_text(encoding="utf-8")
        for f in site.rglob("*.html")
    }
    anchors: dict[str, str] = {}
    for path, text in pages.items():
        if path.startswith("reference/api/"):
            for name in _ID.findall(text):
                anchors.setdefault(name, f"{path}#{name}")
    for title, package in API_GROUPS.items():  # a package's name links to its group's page
        anchors.setdefault(
            f"sciddpm.{package}" if package else "sciddpm", f"reference/api/{title}/index.html"
        )
    for path, text in link_references(pages, anchors).items():
        if text != pages[path]:
            (site / path).write_text(text, encoding="utf-8")


def on_files(files: Any, config: Any) -> Any:
    """Add the generated reference pages to the build."""
    from mkdocs.structure.files import File

    for path, make in (
        ("reference/cli.md", cli_page),
        ("reference/configuration.md", config_page),
        ("reference/components.md", components_page),
    ):
        files.append(File.generated(config, path, content=make()))
    for path, content in api_pages().items():
        files.append(File.generated(config, path, content=content))
    return files
