"""``evaluate`` and ``sciddpm evaluate``: report, intervals, memorisation, figures, model card, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sciddpm.cli import main
from sciddpm.evaluation.report import evaluate
from sciddpm.provenance import weights_hash

RUN = {
    "data": {"type": "digits", "classes": [3, 7]},
    "pipeline": {
        "encoder": {"type": "standardize"},
        "denoiser": {"type": "unet", "channels": [8, 16], "blocks_per_level": 1, "groups": 4, "heads": 1,
                     "prediction": "v"},
        "conditioner": {"type": "class_label", "dim": 8},
        "scheduler": {"type": "ddim"},
    },
    "train": {"steps": 3, "batch_size": 8, "warmup_steps": 1, "checkpoint_every": 0},
}  # fmt: skip


def _fields(n, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 8, 8, generator=g, dtype=torch.float64) + shift
    x[:, 0] = 280 + 15 * x[:, 0]
    return x


def test_report_has_every_metric_intervals_and_flags_copies():
    training = _fields(100, 0)
    copies = training[:40] + 1e-3 * torch.randn(40, 2, 8, 8, dtype=torch.float64)
    report = evaluate(copies, _fields(120, 1), training=training, bootstrap=20)
    metrics = report["metrics"]
    assert set(metrics) == {"wasserstein", "sliced_wasserstein", "spectrum", "frechet", "kid", "prdc"}
    lo, hi = metrics["spectrum"]["interval"]
    assert lo <= hi and metrics["spectrum"]["higher_is_better"] is False
    assert metrics["prdc"]["interval"] is None and metrics["kid"]["interval"] is None
    assert set(metrics["prdc"]) >= {"precision", "recall", "density", "coverage"}
    assert report["memorization"]["fraction_flagged"] == 1.0  # every sample is a copy
    novel = evaluate(_fields(30, 5), _fields(120, 1), metrics=["wasserstein"], training=training, bootstrap=0)
    assert novel["memorization"]["fraction_flagged"] == 0.0
    json.dumps(report)  # JSON-able as it stands


def test_a_shifted_model_scores_worse_than_a_matching_one():
    reference = _fields(200, 1)
    good = evaluate(_fields(200, 2), reference, metrics=["wasserstein", "frechet"], bootstrap=20)["metrics"]
    bad = evaluate(_fields(200, 2, shift=0.5), reference, metrics=["wasserstein", "frechet"], bootstrap=20)[
        "metrics"
    ]
    for name in ("wasserstein", "frechet"):
        assert good[name]["interval"][1] < bad[name]["interval"][0], name  # intervals apart


def test_bad_inputs_name_the_shapes_and_the_installed_metrics():
    with pytest.raises(
        ValueError, match=r"generated samples have shape \(2, 8, 8\) but reference samples \(1, 8, 8\)"
    ):
        evaluate(_fields(10, 0), _fields(10, 1)[:, :1])
    with pytest.raises(KeyError, match=r"Installed metrics: .*sciddpm/wasserstein"):
        evaluate(_fields(10, 0), _fields(10, 1), metrics=["wassrstein"])


def test_cli_evaluates_a_trained_run_and_updates_its_card(tmp_path, capsys, monkeypatch):
    from sciddpm.training.trainer import train

    train(RUN, tmp_path / "run", progress=False)
    args = [
        "evaluate",
        str(tmp_path / "run"),
        "--n",
        "40",
        "--steps",
        "2",
        "--bootstrap",
        "5",
        "--no-progress",
    ]
    assert main([*args, "--metrics", "wasserstein,spectrum,prdc"]) == 0
    printed = capsys.readouterr().out
    assert "memorisation" in printed and "wasserstein" in printed
    out = tmp_path / "run" / "evaluation"
    report = json.loads((out / "report.json").read_text(), parse_constant=_not_json)
    assert report["generated"] == 40 and report["provenance"]["weights_sha256"] == weights_hash(
        tmp_path / "run"
    )
    assert report["provenance"]["synthetic"] is True and report["provenance"]["steps"] == 2
    assert report["ensembles"] is None  # digits name no domain metrics
    for name in ("samples.png", "reference.png", "spectra.png", "histograms.png", "closest_pairs.png"):
        assert (out / name).stat().st_size > 0, name
    # A second evaluation replaces the card's section; its undefined figure is null in report.json.
    import sciddpm.evaluation.report as report_module

    scored = report_module.evaluate

    def undefined(*a, **k):
        report = scored(*a, **k)
        report["metrics"]["spectrum"]["value"] = float("nan")
        return report

    monkeypatch.setattr(report_module, "evaluate", undefined)
    assert main([*args, "--metrics", "spectrum"]) == 0
    saved = json.loads((out / "report.json").read_text(), parse_constant=_not_json)
    assert saved["metrics"]["spectrum"]["value"] is None
    monkeypatch.undo()
    card = (tmp_path / "run" / "README.md").read_text()
    assert (
        card.count("## Evaluation") == 1
        and "spectrum" in card
        and "prdc" not in card.split("## Evaluation")[1]
    )
    # A classifier fitted on the run's digits checks that samples show the classes asked for.
    assert main([*args, "--metrics", "wasserstein", "--agreement"]) == 0
    assert "condition agreement" in capsys.readouterr().out
    agree = json.loads((out / "report.json").read_text())["condition_agreement"]
    assert set(agree) == {"accuracy", "classifier"} and agree["classifier"]["model"] == "LogisticRegression"
    assert agree["classifier"]["heldout"]["accuracy"] > 0.9  # 3 vs 7 on real digits: a classifier to trust
    np.save(tmp_path / "wrong.npy", np.zeros((5, 2, 8, 8)))
    assert main([*args, "--samples", str(tmp_path / "wrong.npy"), "--agreement"]) == 1
    assert "--agreement draws its own samples" in capsys.readouterr().err
    assert main([*args, "--reference", str(tmp_path / "wrong.npy")]) == 1
    assert "reference samples (2, 8, 8)" in capsys.readouterr().err


def test_pipeline_evaluate_samples_and_scores(tiny_pipeline, tiny_source):
    reference = torch.stack([s.x for s in tiny_source])
    report = tiny_pipeline.evaluate(reference, 20, metrics=["wasserstein", "spectrum"], steps=2, bootstrap=3)
    assert report["generated"] == 20 and report["reference"] == 16
    assert report["provenance"]["synthetic"] is True and report["provenance"]["steps"] == 2
    assert report["ensembles"] is None  # digits name no domain metrics
    assert report["metrics"]["spectrum"]["interval"] is not None


def test_fitted_condition_predictors_report_their_held_out_score():
    from sciddpm.evaluation.conditional import condition_agreement, fit_condition_predictor

    g = torch.Generator().manual_seed(0)
    level = torch.rand(60, generator=g, dtype=torch.float64) * 4  # a field's mean is its condition
    x = level.view(-1, 1, 1, 1) + 0.1 * torch.randn(60, 1, 8, 8, generator=g, dtype=torch.float64)
    predict, about = fit_condition_predictor(x, level.numpy())
    assert about["model"] == "Ridge" and about["held_out"] == 12 and about["heldout"]["r2"] > 0.95
    fresh = torch.rand(20, generator=g, dtype=torch.float64) * 4  # new samples, never fitted on
    y = fresh.view(-1, 1, 1, 1) + 0.1 * torch.randn(20, 1, 8, 8, generator=g, dtype=torch.float64)
    assert condition_agreement(y, fresh.numpy(), predict)["r2"] > 0.95
    # Class labels: two field levels are told apart; labels unrelated to the fields are not.
    labels = (level > 2).long().numpy()
    assert fit_condition_predictor(x, labels)[1]["heldout"]["accuracy"] > 0.9
    shuffled = np.random.default_rng(0).permutation(labels)
    assert fit_condition_predictor(x, shuffled)[1]["heldout"]["accuracy"] < 0.8
    with pytest.raises(ValueError, match=r"shape \(60, 2\) and dtype int64"):
        fit_condition_predictor(x, np.zeros((60, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=r"integer labels \(N,\) or a regressor of numbers"):
        fit_condition_predictor(x[:12], ["a caption"] * 12)
    with pytest.raises(ValueError, match="at least 10"):
        fit_condition_predictor(x[:5], level[:5].numpy())


def test_a_source_gives_metrics_members_and_truth_as_arrays_that_pair(tiny_source):
    shape = tuple(tiny_source.sample_shape)
    members, truth = tiny_source.metric_inputs(torch.ones(4, *shape), torch.zeros(shape), 0)
    assert members.shape == (4, *shape) and truth.shape == shape and isinstance(members, np.ndarray)
    mean, _ = tiny_source.metric_inputs(torch.ones(1, *shape), torch.zeros(shape), 0)
    assert mean.shape == shape  # the ensemble mean pairs with its truth
    assert list(tiny_source.domain_metrics()) == []


def _not_json(name: str) -> None:
    raise AssertionError(f"report.json holds {name}, which JSON readers other than Python's reject")


def test_non_finite_report_figures_are_written_as_null(tmp_path) -> None:
    from sciddpm.persistence import finite_json, write_json

    report = {"r2": float("nan"), "ratio": [1.5, float("inf")], "n": 3, "pair": (float("-inf"), "a")}
    write_json(tmp_path / "report.json", finite_json(report))
    text = (tmp_path / "report.json").read_text()
    assert json.loads(text, parse_constant=_not_json) == {
        "r2": None,
        "ratio": [1.5, None],
        "n": 3,
        "pair": [None, "a"],
    }


def test_a_failing_metric_closes_the_progress_report(monkeypatch):
    import sciddpm.evaluation.report as report_module
    import sciddpm.progress
    from sciddpm.progress import LineProgress

    closed = []

    class Recording(LineProgress):
        def close(self) -> None:
            closed.append(self.n)
            super().close()

    monkeypatch.setattr(sciddpm.progress, "progress_bar", lambda total, desc, *a, **k: Recording(total, desc))
    scored, calls = report_module.metric_values, []

    def fails_on_the_second_resample(value):
        calls.append(value)
        if len(calls) > 2:
            raise RuntimeError("a metric failed")
        return scored(value)

    monkeypatch.setattr(report_module, "metric_values", fails_on_the_second_resample)
    with pytest.raises(RuntimeError, match="a metric failed"):
        evaluate(_fields(10, 0), _fields(10, 1), metrics=["wasserstein"], bootstrap=3)
    assert closed == [2]
