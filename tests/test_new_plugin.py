"""``sciddpm new-plugin``: the package installs, passes its tests and trains; bad requests write nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sciddpm.cli import main
from sciddpm.cli.new_plugin import EXAMPLES, render_plugin


def test_rendered_plugin_installs_passes_its_tests_and_the_kit(tmp_path: Path) -> None:
    package = render_plugin("lab-spectra", list(EXAMPLES), tmp_path)
    assert (package / "sciddpm_lab_spectra" / "_plugin.py").is_file()
    site = tmp_path / "site"  # installed apart from the test environment, as pip would for a user
    pip = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "--target",
        str(site),
    ]
    subprocess.run([*pip, str(package)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=package,
        env=env,
        capture_output=True,
        text=True,
    )
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert (
        "8 passed" in tests.stdout
    )  # five components' conformance (convnet in 1/2/3-D) and the training run
    check = subprocess.run(
        [sys.executable, "-m", "sciddpm", "plugins", "--check", "lab-spectra"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0 and " 0 failed" in check.stdout, check.stdout[-3000:]


def test_bad_requests_are_refused_and_write_nothing(tmp_path: Path, capsys) -> None:
    (tmp_path / "sciddpm-taken").mkdir()
    before = sorted(tmp_path.rglob("*"))
    cases = [
        (["new-plugin", "Lab Data"], "plugin name 'Lab Data' is not usable"),
        (["new-plugin", "2lab"], "starting with a letter"),
        (["new-plugin", "taken"], "already exists"),
        (["new-plugin", "climate"], "taken by an installed plugin"),
        (["new-plugin", "sciddpm"], "reserved"),
        (["new-plugin", "lab", "--kinds", "scheduler"], "schedulers are sciddpm's diffusion maths"),
        (["new-plugin", "lab", "--kinds", "data,sampler"], "choose one or more of data,encoder"),
    ]
    for argv, message in cases:
        assert main([*argv, "--out", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert sorted(tmp_path.rglob("*")) == before


def test_cli_writes_the_chosen_kinds_only(tmp_path: Path, capsys) -> None:
    assert main(["new-plugin", "mylab", "--kinds", "data,metric", "--out", str(tmp_path)]) == 0
    assert "pip install -e" in capsys.readouterr().out
    modules = sorted(p.name for p in (tmp_path / "sciddpm-mylab" / "sciddpm_mylab").iterdir())
    assert modules == ["__init__.py", "_plugin.py", "metric.py", "source.py"]
    run = (tmp_path / "sciddpm-mylab" / "examples" / "run.toml").read_text()
    assert 'type = "mylab/folder"' in run and 'type = "standardize"' in run
    with pytest.raises(FileExistsError):
        render_plugin("mylab", ["data"], tmp_path)
