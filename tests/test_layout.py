"""The package's layering: no import cycles, no private names crossing modules, small modules, a light import.

The checks read the source (``ast``), so function-level and type-checking imports count too: a
cycle hidden inside a function is still a cycle a reader has to untangle.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import sciddpm

ROOT = Path(importlib.util.find_spec("sciddpm").submodule_search_locations[0])
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, str | None, int]]:
    """``(module, imported name or None, line)`` of every import of a sciddpm module in ``path``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names if a.name.startswith("sciddpm")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            if base.startswith("sciddpm"):
                found += [(base, a.name, node.lineno) for a in node.names]
    return found


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for module, attr, _ in _imports(name, path):
            target = f"{module}.{attr}" if attr and f"{module}.{attr}" in MODULES else module
            # A package re-exporting its own submodules is not a dependency worth a cycle.
            if target in MODULES and target != name and not target.startswith(name + "."):
                edges[name].add(target)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan 1972)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules() -> None:
    assert _cycles(_graph()) == []


def test_no_private_name_is_imported_across_modules() -> None:
    crossing = [
        f"{path.relative_to(ROOT.parent)}:{line} imports {attr} from {module}"
        for name, path in MODULES.items()
        for module, attr, line in _imports(name, path)
        if attr and attr.startswith("_") and not attr.startswith("__") and module != name
    ]
    assert crossing == []


def test_modules_are_small_enough_to_read_in_one_sitting() -> None:
    long = {name: n for name, path in MODULES.items() if (n := path.read_text().count("\n")) > MAX_LINES}
    assert long == {}


def test_every_module_says_what_it_does_in_its_first_lines() -> None:
    missing = [name for name, path in MODULES.items() if not ast.get_docstring(ast.parse(path.read_text()))]
    assert missing == []


def test_every_public_class_function_and_method_has_a_docstring() -> None:
    missing = []

    def walk(body: list[ast.stmt], where: str) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                if node.name.startswith("_"):
                    continue
                if not ast.get_docstring(node):
                    missing.append(f"{where}:{node.lineno} {node.name}")
                if isinstance(node, ast.ClassDef):
                    walk(node.body, where)

    for name, path in MODULES.items():
        walk(ast.parse(path.read_text()).body, name)
    assert missing == []


@pytest.mark.parametrize(
    "code",
    [
        "import sciddpm",
        "import sciddpm.config",
        "import sciddpm; sciddpm.get_registry().entries()",
        "from sciddpm.cli import main; main(['plugins'])",
        "from sciddpm.cli import main; main(['plugins', '--json'])",
    ],
)
def test_import_and_plugin_listing_import_no_torch(code: str) -> None:
    check = f"import sys, contextlib, io\nwith contextlib.redirect_stdout(io.StringIO()):\n    {code}\n"
    check += "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_everyday_api_is_on_the_package() -> None:
    from sciddpm.diffusion.loop import sample_callable
    from sciddpm.interfaces import Conditioner, DataSource, Denoiser, Encoder, Metric, Scheduler
    from sciddpm.pipeline.pipeline import Pipeline
    from sciddpm.training.trainer import train

    assert sciddpm.Pipeline is Pipeline and sciddpm.train is train
    assert sciddpm.sample_callable is sample_callable
    for interface in (Encoder, Denoiser, Conditioner, Scheduler, DataSource, Metric):
        assert getattr(sciddpm, interface.__name__) is interface
    assert set(sciddpm.__all__) <= set(dir(sciddpm))
    with pytest.raises(AttributeError, match="no attribute 'Pipelin'"):
        _ = sciddpm.Pipelin
