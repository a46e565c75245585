"""``sciddpm new-plugin``: render a complete, installable plugin package from plain template files.

The templates (``templates/plugin/*.tmpl``) are filled with :class:`string.Template`: a plugin has
a handful of files and three names, which a template engine's questionnaire and dependency would
not make simpler. Everything is rendered in memory and validated before anything is written, then
written to a temporary folder that is renamed into place, so a refused or failed run leaves nothing.
"""

from __future__ import annotations

import keyword
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

__all__ = ["EXAMPLES", "render_plugin"]


@dataclass(frozen=True)
class _Example:
    """One kind's example component: its registry name, module, classes and conformance test."""

    name: str
    module: str
    factory: str
    config: str
    description: str
    test: str


#: The example component rendered for each kind ``--kinds`` accepts.
EXAMPLES: dict[str, _Example] = {
    "data": _Example(
        "folder", "source", "FolderSource", "FolderSourceConfig", "A folder of .npy files, one sample each",
        "def test_folder_source(folder: Path, tmp_path: Path) -> None:\n"
        '    check_component("data", "$name/folder", path=str(folder))\n'
        "    greyscale = tmp_path / \"greyscale\"  # files of (H, W), one channel each\n"
        "    greyscale.mkdir()\n"
        "    for i in range(4):\n"
        '        np.save(greyscale / f"image{i}.npy", np.full((9, 11), float(i)))\n'
        '    check_component("data", "$name/folder", path=str(greyscale), channel_axis=False)\n'
        "    with pytest.raises(ConformanceError, match=\"channel_axis = false\"):  # 2-D files: say which\n"
        '        check_component("data", "$name/folder", path=str(greyscale))\n',
    ),
    "encoder": _Example(
        "log", "encoder", "LogEncoder", "LogEncoderConfig", "log(x + offset), standardised per channel",
        'def test_log_encoder() -> None:\n    check_component("encoder", "$name/log")\n',
    ),
    "conditioner": _Example(
        "scalars", "conditioner", "ScalarsConditioner", "ScalarsConfig",
        "A few numbers per sample as a FiLM vector",
        "def test_scalars_conditioner() -> None:\n"
        '    conditions = [[0.5, 20.0], [1.0, 25.0], [2.0, 30.0]]  # (exposure s, temperature C) per sample\n'
        '    check_component("conditioner", "$name/scalars", values=2, dim=8, inputs=conditions)\n',
    ),
    "denoiser": _Example(
        "convnet", "denoiser", "ConvNet", "ConvNetConfig", "A small residual conv net for 1/2/3-D fields",
        "@pytest.mark.parametrize(\"dims\", [1, 2, 3])\n"
        "def test_convnet(dims: int) -> None:\n"
        '    check_component("denoiser", "$name/convnet", dims=dims, width=8, blocks=2)\n'
        '    check_component("denoiser", "$name/convnet", dims=dims, width=8, blocks=2, vector_dim=4)\n',
    ),
    "metric": _Example(
        "channel_means", "metric", "ChannelMeans", "ChannelMeansConfig", "Distance of per-channel means",
        "def test_channel_means() -> None:\n"
        "    rng = np.random.default_rng(0)\n"
        "    reference = rng.gamma(2.0, 50.0, (16, 2, 8, 8))\n"
        '    check_component("metric", "$name/channel_means", inputs=(reference * 1.2, reference))\n',
    ),
}  # fmt: skip

_FOLDER_FIXTURE = '''

@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Six positive 2-channel 12 x 12 samples, one with a missing (NaN) value."""
    rng = np.random.default_rng(0)
    for i in range(6):
        x = rng.gamma(2.0, 50.0, (2, 12, 12)).astype(np.float32)
        if i == 0:
            x[0, 0, 0] = np.nan
        np.save(tmp_path / f"sample{i:03d}.npy", x)
    return tmp_path
'''

_NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")


def _installed_names() -> set[str]:
    """Entry-point names of installed sciddpm plugins and the names of installed distributions."""
    from importlib.metadata import distributions, entry_points

    from sciddpm.registry import ENTRY_POINT_GROUP

    names = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return names | {(d.metadata["Name"] or "").lower() for d in distributions()}


def _check(name: str, kinds: Sequence[str], target: Path) -> None:
    """Raise ValueError or FileExistsError, naming the value and the fix, for an unusable request."""
    if name == "sciddpm":
        raise ValueError(
            "plugin name 'sciddpm' is reserved for the core's built-in components; choose your lab's name"
        )
    taken = _installed_names()
    if name in taken or f"sciddpm-{name}" in taken:
        raise ValueError(
            f"plugin name {name!r} is taken by an installed plugin or package (sciddpm-{name}); installing "
            "a second one would replace it: choose another name"
        )
    if not _NAME.match(name) or keyword.iskeyword(name):
        raise ValueError(
            f"plugin name {name!r} is not usable: give lower-case letters and digits, words joined by '-' or "
            "'_', starting with a letter (e.g. 'mylab' or 'lab-spectra'); it becomes the entry-point name, "
            "the package sciddpm_NAME and the prefix of the components' names"
        )
    unknown = [k for k in kinds if k not in EXAMPLES]
    if "scheduler" in unknown:
        raise ValueError(
            "--kinds scheduler: schedulers are sciddpm's diffusion maths, which the core keeps in one place; "
            f"a plugin offers {', '.join(EXAMPLES)} (ask for a sampler in sciddpm's issues)"
        )
    if unknown or not kinds:
        what = f"unknown kind {unknown[0]!r}" if unknown else "no kind given"
        raise ValueError(f"--kinds {','.join(kinds)!r}: {what}; choose one or more of {','.join(EXAMPLES)}")
    if target.exists():
        raise FileExistsError(f"{target} already exists; choose another --out or name, or remove it")


def _test_imports(kinds: Sequence[str]) -> str:
    """The import block of the rendered conformance test: only what its tests use (lint-clean)."""
    data = "data" in kinds
    lines = ["from pathlib import Path\n"] if data else []
    if data or "metric" in kinds:
        lines.append("import numpy as np")
    if data or "denoiser" in kinds:
        lines.append("import pytest")
    names = "ConformanceError, check_component" if data else "check_component"
    return "\n".join(lines) + ("\n" if lines else "") + f"from sciddpm.testing import {names}\n"


def _render(name: str, kinds: Sequence[str]) -> dict[str, str]:
    """Relative path -> text of every file of the package."""
    from sciddpm import __version__

    package = "sciddpm_" + name.replace("-", "_")
    chosen = [EXAMPLES[k] for k in kinds]
    record = "        Component(\n" + '            "{}",\n' * 5 + "        ),"
    records = "\n".join(
        record.format(
            kind,
            e.name,
            f"{package}.{e.module}:{e.factory}",
            f"{package}.{e.module}:{e.config}",
            e.description,
        )
        for kind, e in zip(kinds, chosen, strict=True)
    )
    values = {
        "name": name,
        "dist": f"sciddpm-{name}",
        "package": package,
        "core_version": __version__,
        "component_list": ", ".join(
            f"`{name}/{e.name}` ({kind})" for kind, e in zip(kinds, chosen, strict=True)
        ),
        "records": records,
        "fixtures": _FOLDER_FIXTURE if "data" in kinds else "",
        "imports": _test_imports(kinds),
        "tests": "\n\n" + "\n\n".join(Template(e.test).substitute(name=name) for e in chosen),
        "data": f'type = "{name}/folder"\npath = "examples/data"'
        if "data" in kinds
        else 'type = "array"\npath = "examples/data.npy"',
        "encoder": f'{{ type = "{name}/log" }}' if "encoder" in kinds else '{ type = "standardize" }',
        # v-prediction: an eps-predicting model's samples are far off after a short run.
        "denoiser": f'{{ type = "{name}/convnet", width = 32, blocks = 3, prediction = "v" }}'
        if "denoiser" in kinds
        else '{ type = "unet", channels = [16, 32], blocks_per_level = 1, groups = 8, heads = 1, '
        'prediction = "v" }',
    }
    files = {
        "pyproject.toml": "pyproject.toml",
        "README.md": "README.md",
        f"{package}/__init__.py": "init.py",
        f"{package}/_plugin.py": "_plugin.py",
        "tests/test_conformance.py": "test_conformance.py",
        "tests/test_train.py": "test_train.py",
        "examples/make_example_data.py": "make_example_data.py",
        "examples/run.toml": "run.toml",
        ".github/workflows/tests.yml": "ci.yml",
    }
    files.update({f"{package}/{e.module}.py": f"{e.module}.py" for e in chosen})
    templates = resources.files("sciddpm.cli") / "templates" / "plugin"
    return {
        path: Template((templates / f"{template}.tmpl").read_text(encoding="utf-8")).substitute(values)
        for path, template in files.items()
    }


def render_plugin(name: str, kinds: Sequence[str], out: str | Path = ".") -> Path:
    """Write the package ``sciddpm-NAME`` into ``out`` with an example component of each of ``kinds``.

    ``kinds`` are among ``data``, ``encoder``, ``conditioner``, ``denoiser`` and ``metric``. Returns
    the package's folder. Raises ValueError for an unusable name or kind and FileExistsError when
    the folder exists; in every case nothing is written.
    """
    kinds = list(dict.fromkeys(kinds))  # drop repeats, keep the order given
    target = Path(out) / f"sciddpm-{name}"
    _check(name, kinds, target)
    files = _render(name, kinds)
    Path(out).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".sciddpm-{name}-", dir=out))
    try:
        for path, text in files.items():
            (staging / path).parent.mkdir(parents=True, exist_ok=True)
            (staging / path).write_text(text, encoding="utf-8")
        os.rename(staging, target)  # atomic on one file system: the package appears whole or not at all
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
