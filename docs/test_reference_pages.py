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


def test_sphinx_roles_in_rendered_docstrings_become_code_marked_with_their_target() -> None:
    html = ":class:<code>~sciddpm.pipeline.Pipeline</code>, :func:<code>sciddpm.train</code>"
    assert hooks.on_page_content(html) == (
        '<code data-ref="sciddpm.pipeline.Pipeline">Pipeline</code>, '
        '<code data-ref="sciddpm.train">sciddpm.train</code>'
    )


def test_references_link_to_where_the_object_is_documented_or_stay_code() -> None:
    html = hooks.on_page_content(
        ":class:<code>~sciddpm.Pipeline</code> :func:<code>sciddpm.training.trainer.train</code> "
        ":class:<code>torch.Tensor</code>"
    )
    pipeline, trainer = "sciddpm.pipeline.pipeline.Pipeline", "sciddpm.training.trainer.train"
    anchors = {
        pipeline: f"reference/api/pipeline/index.html#{pipeline}",
        trainer: f"reference/api/training/index.html#{trainer}",
    }
    linked = hooks.link_references({"howto/index.html": html}, anchors)["howto/index.html"]
    assert linked == (  # a re-exported name links to where it is defined
        '<a href="../reference/api/pipeline/index.html#sciddpm.pipeline.pipeline.Pipeline">'
        "<code>Pipeline</code></a> "
        '<a href="../reference/api/training/index.html#sciddpm.training.trainer.train">'
        "<code>sciddpm.training.trainer.train</code></a> <code>torch.Tensor</code>"
    )


def test_the_api_pages_hold_every_public_module_once() -> None:
    pages = "\n".join(hooks.api_pages().values())
    shown = [line.removeprefix("::: ") for line in pages.splitlines() if line.startswith("::: ")]
    assert sorted(shown) == sorted(hooks.public_modules())
    assert len(shown) == len(set(shown))
    for module in ("sciddpm.diffusion.solvers", "sciddpm.provenance", "sciddpm.testing", "sciddpm.cli"):
        assert module in shown
    assert "sciddpm.diffusion" not in shown  # re-exports only: documented where defined


def test_a_relative_reference_is_read_in_the_docstring_it_appears_in() -> None:
    """``:class:`GaussianStart``` in the gaussian module's docstring means that module's class,
    and a name the module imported links to where it is defined."""
    html = '<h2 id="sciddpm.diffusion.gaussian">gaussian</h2><p>' + hooks.on_page_content(
        ":class:<code>GaussianStart</code> and :class:<code>Scheduler</code> "
        "in :mod:<code>sciddpm.evaluation</code>"
    )
    anchors = {
        "sciddpm.diffusion.gaussian.GaussianStart": (
            "reference/api/diffusion/index.html#sciddpm.diffusion.gaussian.GaussianStart"
        ),
        "sciddpm.interfaces.Scheduler": "reference/api/core/index.html#sciddpm.interfaces.Scheduler",
        "sciddpm.evaluation": "reference/api/evaluation/index.html",  # a page, no anchor
    }
    page = "reference/api/diffusion/index.html"
    linked = hooks.link_references({page: html}, anchors)[page]
    start = '<a href="index.html#sciddpm.diffusion.gaussian.GaussianStart"><code>GaussianStart</code></a>'
    assert start in linked
    assert '<a href="../core/index.html#sciddpm.interfaces.Scheduler"><code>Scheduler</code></a>' in linked
    assert '<a href="../evaluation/index.html"><code>sciddpm.evaluation</code></a>' in linked
