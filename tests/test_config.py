"""Run-file validation: typos name the path and a suggestion; configs round-trip."""

from __future__ import annotations

import json
import re
import sys

import pytest

from sciddpm.config import ComponentSpec, ConfigError, RunConfig, dump_run, load_run

RUN = {
    "data": {"type": "digits", "size": 16},
    "pipeline": {
        "encoder": {"type": "standardize"},
        "denoiser": {"type": "unet", "channels": [16, 32], "attention_levels": [1]},
        "conditioner": {"type": "class_label", "num_classes": 10},
        "scheduler": {"type": "ddim", "eta": 0.0},
    },
    "train": {"steps": 10, "batch_size": 8},
}


def _problem(exc: ConfigError) -> dict[str, str]:
    return dict(exc.problems)


def test_valid_run_fills_component_defaults():
    run = load_run(RUN)
    assert run.pipeline.denoiser.type == "unet"
    assert run.pipeline.denoiser.params["channels"] == [16, 32]
    assert "blocks_per_level" in run.pipeline.denoiser.params  # defaults made explicit
    assert run.train.steps == 10 and run.train.lr == 2e-4


def test_typo_in_section_names_path_and_suggestion():
    with pytest.raises(ConfigError) as info:
        load_run({**RUN, "train": {"bach_size": 8}})
    assert _problem(info.value)["train.bach_size"] == "unknown field; did you mean 'batch_size'?"
    assert "train.bach_size" in str(info.value)


def test_typo_in_component_params_is_checked_by_its_config_class():
    run = json.loads(json.dumps(RUN))
    run["pipeline"]["denoiser"]["chanels"] = [8]
    with pytest.raises(ConfigError) as info:
        load_run(run)
    assert _problem(info.value)["pipeline.denoiser.chanels"] == "unknown field; did you mean 'channels'?"


def test_wrong_type_names_path_and_value():
    with pytest.raises(ConfigError) as info:
        load_run({**RUN, "train": {"steps": "many"}})
    assert "train.steps" in _problem(info.value)
    assert "'many'" in _problem(info.value)["train.steps"]


def test_missing_data_section_is_reported_when_training(tmp_path):
    from sciddpm.training.trainer import train

    run = load_run({"train": {"steps": 1}})
    assert run.data is None  # allowed: Python users may pass a source instead
    with pytest.raises(ValueError, match=r"the run has no data section"):
        train(run, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_all_problems_reported_at_once():
    run = json.loads(json.dumps(RUN))
    run["pipeline"]["scheduler"]["etta"] = 1
    run["train"]["stpes"] = 3
    with pytest.raises(ConfigError) as info:
        load_run(run)
    assert {"pipeline.scheduler.etta", "train.stpes"} <= set(_problem(info.value))


def test_unknown_component_type_suggests_and_lists():
    run = json.loads(json.dumps(RUN))
    run["pipeline"]["scheduler"] = {"type": "ddmi"}
    with pytest.raises(ConfigError) as info:
        load_run(run)
    message = _problem(info.value)["pipeline.scheduler.type"]
    assert "Did you mean" in message and "sciddpm/ddim, sciddpm/ddpm" in message


def test_type_is_never_imported_as_a_python_path(tmp_path):
    marker = tmp_path / "imported"
    module = tmp_path / "evil_module.py"
    module.write_text(f"open({str(marker)!r}, 'w').close()\nclass Thing: pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        for ref in ("evil_module:Thing", "evil_module.Thing"):
            with pytest.raises(ConfigError, match="unknown encoder"):
                load_run({**RUN, "pipeline": {"encoder": {"type": ref}}})
    finally:
        sys.path.remove(str(tmp_path))
    assert not marker.exists()
    assert "evil_module" not in sys.modules


@pytest.mark.parametrize("suffix", [".toml", ".json", ".yaml"])
def test_round_trip_through_files_is_exact(tmp_path, suffix):
    first = load_run(RUN)
    path = tmp_path / f"run{suffix}"
    dump_run(first, path)
    second = load_run(path)
    assert second == first
    assert dump_run(second) == dump_run(first)


def test_file_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_run(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps = 1")
    with pytest.raises(ConfigError, match=r"cannot parse bad\.toml"):
        load_run(bad)
    with pytest.raises(ConfigError, match=r"use \.toml, \.json or \.yaml"):
        load_run(_write(tmp_path / "run.ini", "x"))


def _write(path, text):
    path.write_text(text)
    return path


def test_component_spec_coerce():
    assert ComponentSpec.coerce("unet").type == "unet"
    assert ComponentSpec.coerce({"type": "unet", "dims": 2}).params == {"dims": 2}
    with pytest.raises(ConfigError, match="missing"):
        ComponentSpec.coerce({"dims": 2})


def test_every_config_field_is_read_somewhere() -> None:
    # A field that is validated, saved and documented but never read is a setting that silently
    # does nothing (train.num_workers was one). Every field of the run file and of every installed
    # component's config must be read by some code: as an attribute (".name") or a key ("name"),
    # other than its own declaration.
    import re
    from pathlib import Path

    from sciddpm.config import PipelineConfig, TrainConfig
    from sciddpm.registry import get_registry

    registry = get_registry()
    classes = {RunConfig, TrainConfig, PipelineConfig} | {e.config_class() for e in registry.entries()}
    packages = {Path(__import__(c.__module__.split(".")[0]).__file__).parent for c in classes}
    code = [line for root in packages for p in root.rglob("*.py") for line in p.read_text().splitlines()]
    unread = []
    for cls in classes:
        for name in cls.model_fields:
            use = re.compile(rf"(\.{name}\b|[\"']{name}[\"'])")
            declaration = re.compile(rf"^\s+{name}\s*:")
            if not any(use.search(line) and not declaration.match(line) for line in code):
                unread.append(f"{cls.__module__}.{cls.__name__}.{name}")
    assert len(classes) > 20 and unread == []


def test_one_problem_is_one_line_and_several_are_listed(tmp_path) -> None:
    with pytest.raises(ConfigError) as one:
        load_run(tmp_path / "nope.toml")
    assert "\n" not in str(one.value) and "file not found" in str(one.value)
    with pytest.raises(ConfigError) as two:
        load_run({"train": {"stepz": 1, "bach_size": 2}})
    assert str(two.value).count("\n") == 2 and "did you mean 'steps'" in str(two.value)


def test_every_prediction_type_the_docs_name_is_accepted() -> None:
    # docs/architecture.md once listed 'flow', which the unet refused.
    import re
    import typing
    from pathlib import Path

    from sciddpm.interfaces import PREDICTION_TYPES
    from sciddpm.nn.unet import UNetConfig

    docs = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text()
    named = re.search(r"declares `prediction_type`\s*\(([^)]*)\)", docs).group(1)
    types = re.findall(r"`(\w+)`", named)
    assert set(types) == set(PREDICTION_TYPES)
    assert set(typing.get_args(UNetConfig.model_fields["prediction"].annotation)) == set(PREDICTION_TYPES)
    from tiny import TINY_UNET

    from sciddpm.pipeline import Pipeline

    for prediction in types:  # each builds into a pipeline whose scheduler drives it, and samples
        spec = {"type": "dpmpp_2m", "process": "flow" if prediction == "flow" else "vp"}
        pipe = Pipeline.from_config(
            {"denoiser": {**TINY_UNET, "prediction": prediction}, "scheduler": spec}, data_shape=(1, 8)
        )
        assert pipe.sample(1, steps=2).shape == (1, 1, 8)


def test_a_run_directory_written_with_an_ignored_vp_field_still_opens(tmp_path) -> None:
    from sciddpm.config import load_saved_run

    run = tmp_path / "run.toml"
    run.write_text(
        '[data]\ntype = "digits"\n[pipeline.scheduler]\ntype = "euler"\nprocess = "ve"\nbeta_end = 0.012\n'
    )
    with pytest.raises(ConfigError, match=r"beta_end=0.012 sets the VP noise schedule.*remove it"):
        load_run(run)  # a run file to train from is validated as written
    opened = load_saved_run(run)  # sciddpm evaluate / sample on the run directory
    assert opened.pipeline.scheduler.params["beta_end"] == 0.02 and opened.data.type == "digits"
    run.write_text('[pipeline.scheduler]\ntype = "euler"\nprocess = "ve"\nrho = "x"\n')
    with pytest.raises(ConfigError, match=rf"in {re.escape(str(run))}.*rho"):
        load_saved_run(run)
