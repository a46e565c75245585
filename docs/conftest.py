"""Run the tutorial and how-to pages as tests: every block of each page, in order.

The pages: getting-started.md, plugins.md (the plugin tutorial), howto.md (recipes), evaluation.md,
diffusers.md, climate.md, microscopy.md, latent.md, clip.md and architecture.md.
A page may make what its blocks read in an invisible block (an HTML comment Sybil runs,
``<!-- invisible-code-block: python``), e.g. tiny random diffusers models instead of a download.

Sybil finds the code blocks (no hand-written Markdown parsing). Python blocks share one namespace;
bash blocks run in ``bash -euo pipefail`` in the same temporary folder. ``pip install`` in a block
installs into a throwaway folder on the path instead of the test environment (``--target``, no
dependencies, offline build), so the test leaves the environment as it found it: the teardown
drops every module imported from the page's folder and restores torch's global random state.
Under pytest-xdist a page must run in one worker, in order: ``--dist loadfile`` (or
``loadscope``), which the README's test command gives; another distribution is refused.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from sybil import Sybil
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser

_PIP_SHIM = """
pip() {
    if [ "$1" = install ]; then
        shift
        local args=()
        for a in "$@"; do [ "$a" != "-e" ] && args+=("$a"); done
        python -m pip install -q --no-deps --no-build-isolation --upgrade \
            --target "$SCIDDPM_DOCS_SITE" "${args[@]}"
    else
        python -m pip "$@"
    fi
}
"""


def pytest_configure(config: Any) -> None:
    """Refuse an xdist distribution that could split one page's blocks over workers."""
    dist = config.getoption("dist", "no")
    if dist not in ("no", "loadfile", "loadscope"):
        raise pytest.UsageError(
            f"--dist {dist} would split a docs page's blocks over workers, which share nothing; "
            "run the docs with --dist loadfile (the README's test command)"
        )


def _setup(namespace: dict[str, Any]) -> None:
    import torch

    work = Path(tempfile.mkdtemp(prefix="sciddpm-docs-"))
    site = work / ".site"
    site.mkdir()
    # _repo: the checkout, for a page whose blocks use its files (plugins/..., as a reader's would).
    repo = Path(__file__).parents[1]
    namespace.update(_work=work, _site=site, _cwd=os.getcwd(), _path=list(sys.path), _repo=repo,
                     _rng=torch.get_rng_state())  # fmt: skip
    sys.path.insert(0, str(site))
    os.chdir(work)


def _teardown(namespace: dict[str, Any]) -> None:
    from sciddpm import registry

    os.chdir(namespace["_cwd"])
    sys.path[:] = namespace["_path"]
    import torch

    work = str(namespace["_work"])
    for name, module in list(sys.modules.items()):  # e.g. the tutorial's plugin, installed there
        if str(getattr(module, "__file__", None) or "").startswith(work):
            del sys.modules[name]
    registry._REGISTRY = None  # rediscover without what the page installed
    torch.set_rng_state(namespace["_rng"])  # a page's torch.manual_seed stays in the page
    shutil.rmtree(namespace["_work"], ignore_errors=True)


def _bash(example: Any) -> None:
    ns = example.namespace
    env = {**os.environ, "SCIDDPM_DOCS_SITE": str(ns["_site"]), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ns["_site"]), env.get("PYTHONPATH", "")])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", _PIP_SHIM + example.parsed],
        cwd=ns["_work"], env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, f"bash block failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    # What the block installed is importable and discoverable by the Python blocks that follow.
    importlib.invalidate_caches()
    from sciddpm import registry

    registry._REGISTRY = None


pytest_collect_file = Sybil(
    parsers=[PythonCodeBlockParser(), CodeBlockParser(language="bash", evaluator=_bash)],
    patterns=[
        "getting-started.md",
        "plugins.md",
        "howto.md",
        "evaluation.md",
        "diffusers.md",
        "climate.md",
        "microscopy.md",
        "latent.md",
        "clip.md",
        "architecture.md",
    ],
    setup=_setup,
    teardown=_teardown,
).pytest()
