"""The docs' generated reference pages (docs/hooks.py) list every command, option and config field."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from sciddpm.cli.commands import build_parser
from sciddpm.config import TrainConfig
from sciddpm.registry import get_registry

_spec = importlib.util.spec_from_file_location("docs_hooks", Path(__file__).with_name("hooks.py"))
hooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hooks)


def test_the_cli_page_has_every_command_and_option() -> None:
    page = hooks.cli_page()
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        assert f"## `sciddpm {name}`" in page
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in page, (name, flag)


def test_the_configuration_and_components_pages_have_every_field() -> None:
    config = hooks.config_page()
    for name, field in TrainConfig.model_fields.items():
        assert f"| {name} |" in config and (field.description or "").replace("|", "\\|") in config
    components = hooks.components_page()
    for entry in get_registry().entries():
        assert f"### `{entry.full_name}`" in components
    assert "| data_range | tuple[float, float] | [0.0, 1.0] |" in components  # as a run file writes it


def test_defaults_read_as_a_run_file_writes_them() -> None:
    config = hooks.config_page()
    assert '| encoder | ComponentSpec | {type = "identity"} |' in config  # not a Python repr
    assert "| warmup_steps | int \\| None | null |" in config
    cli = hooks.cli_page()
    assert "| `--seed` | 0 |" in cli  # a zero default is shown (0 == False must not hide it)


def test_sphinx_roles_in_rendered_docstrings_become_plain_code() -> None:
    html = ":class:<code>~sciddpm.pipeline.Pipeline</code>, :func:<code>sciddpm.train</code>"
    assert hooks.on_page_content(html) == "<code>Pipeline</code>, <code>sciddpm.train</code>"
