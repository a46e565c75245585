"""Evaluate a saved pipeline: draw samples, score them against data, write the report and figures.

What ``sciddpm evaluate RUN_DIR`` runs. The reference data default to the run's own data source
(read from its ``run.toml``), which is also the training data the memorisation check compares
with; a held-out ``.npy`` can be the reference instead. The report records which model (a content
hash of its weights), sampler, steps and seed made the samples, and its headline figures are
appended to the model card.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["evaluate_run", "headline"]

EVALUATION_HEADING = "## Evaluation"


def _run_source(directory: Path) -> Any:
    from sciddpm.config import load_saved_run
    from sciddpm.registry import get_registry

    run_file = directory / "run.toml"
    if not run_file.is_file():
        return None
    run = load_saved_run(run_file)
    return None if run.data is None else get_registry().build("data", run.data)


def _take(source: Any, n: int) -> tuple[torch.Tensor, list[Any]]:
    """Up to ``n`` samples spread evenly over ``source`` (missing values as NaN) and their conditions."""
    from sciddpm.evaluation.features import with_missing

    idx = np.unique(np.linspace(0, len(source) - 1, min(n, len(source))).astype(int))
    xs, conditions = [], []
    for i in idx:
        s = source[int(i)]
        xs.append(with_missing(s))
        conditions.append(s.condition)
    return torch.stack(xs), conditions


def evaluate_run(
    directory: str | Path,
    out: str | Path | None = None,
    *,
    reference: str | Path | None = None,
    samples: str | Path | None = None,
    n: int = 256,
    max_reference: int = 2000,
    metrics: Sequence[str] | None = None,
    steps: int = 50,
    scheduler: str | None = None,
    seed: int = 0,
    bootstrap: int = 50,
    progress: bool = True,
    agreement: bool = False,
    members: int = 8,
    conditions: int = 8,
) -> dict[str, Any]:
    """Evaluate the pipeline saved in ``directory``; writes ``report.json`` and figures to ``out``.

    ``agreement``: for a model conditioned on class labels or numbers, fit a classifier (or
    regressor) of the condition on the run's data and report how often the samples show what they
    were asked for (:func:`~sciddpm.evaluation.conditional.fit_condition_predictor`), with that
    model's agreement on held-out real data beside it as the reference. Raises ValueError for
    ``agreement`` with ``samples`` or an unconditional model, ImportError without scikit-learn.

    A conditional model whose data source names domain metrics (``source.domain_metrics()``:
    climate CRPS and spread-skill, microscopy PSNR, SSIM, FRC, coverage) also gets them, under
    ``ensembles``: ``members`` members drawn for each of ``conditions`` data samples spread over the
    run's data and scored against them (:func:`~sciddpm.evaluation.ensembles.ensemble_scores`; the
    run's data are its training data, so these are in-sample scores), before anything else, with
    ``samples`` given too. ``members=0`` skips them; ``members=1`` or below 0 raises ValueError.

    ``out`` defaults to ``directory/evaluation``. Samples are read from ``samples`` (``.npy``) or
    drawn: ``n`` of them, with ``steps`` of ``scheduler`` (default: the trained one) from ``seed``,
    conditioned on the conditions of the run's data samples when the model is conditional. The
    reference is ``reference`` (``.npy``, ``(N, C, *spatial)``) or up to ``max_reference`` samples of
    the run's data source. Returns the report. Raises ValueError when there is no reference (no
    ``run.toml`` and no ``reference``) or shapes differ, FileNotFoundError for a missing file.
    """
    from sciddpm.evaluation.conditional import fit_condition_predictor
    from sciddpm.evaluation.figures import save_figures
    from sciddpm.evaluation.report import DEFAULT_METRICS, evaluate
    from sciddpm.persistence import finite_json, write_json
    from sciddpm.pipeline.pipeline import CARD_FILE, Pipeline
    from sciddpm.provenance import record

    directory = Path(directory)
    if members < 0 or members == 1:
        raise ValueError(f"members must be 0 (no ensembles) or >= 2 per ensemble, got {members}")
    if agreement and samples is not None:
        raise ValueError("--agreement draws its own samples with known conditions: leave out --samples")
    out = Path(out) if out is not None else directory / "evaluation"
    pipe = Pipeline.load(directory)
    source = _run_source(directory)
    training, labels = _take(source, max_reference) if source is not None else (None, [])
    if reference is not None:
        ref = torch.as_tensor(np.load(reference, allow_pickle=False)).double()
        ref_text = str(reference)
    elif training is not None:
        ref, ref_text = training, "the run's data source (its training data)"
    else:
        raise ValueError(
            f"{directory} has no run.toml to read its data from: give --reference DATA.npy (N, C, *spatial)"
        )
    # A conditioner that declares no part (concat, vector, tokens) gives the network nothing.
    parts = ("concat_channels", "vector_dim", "token_dim")
    unconditional = not any(getattr(pipe.conditioner, name, 0) for name in parts)
    ensembles = None
    domain = list(source.domain_metrics()) if source is not None and not unconditional else []
    if domain and members > 0:  # first: a metric that refuses the ensemble fails before the rest
        from sciddpm.evaluation.ensembles import ensemble_scores

        chosen = np.unique(np.linspace(0, len(source) - 1, min(conditions, len(source))).astype(int))
        ensembles = ensemble_scores(
            pipe, source, domain, indices=chosen.tolist(), members=members, steps=steps,
            scheduler=scheduler, seed=seed, bootstrap=bootstrap, progress=progress,
        )  # fmt: skip
        ensembles["data"] = "the run's data source (its training data)"
    made: dict[str, Any]
    condition = None
    if samples is not None:
        gen = torch.as_tensor(np.load(samples, allow_pickle=False)).double()
        made = {"samples_file": str(samples)}
    else:
        condition = None if unconditional or not labels else [labels[i % len(labels)] for i in range(n)]
        gen = pipe.sample(
            n, condition, steps=steps, scheduler=scheduler, seed=seed, progress=progress
        ).double()
        made = {"steps": steps, "scheduler": scheduler or "trained", "seed": seed, "n": n}
    predict, about, asked = None, None, None
    if agreement:
        if condition is None or training is None:
            raise ValueError(
                "--agreement needs a conditional model and its run's data, whose conditions train "
                "the classifier"
            )
        predict, about = fit_condition_predictor(training, labels[: len(training)])
        asked = np.stack([np.asarray(c) for c in condition])
    report = evaluate(
        gen,
        ref,
        metrics=metrics or DEFAULT_METRICS,
        training=training,
        bootstrap=bootstrap,
        progress=progress,
        conditions=asked,
        predict=predict,
    )
    if about is not None:
        report["condition_agreement"]["classifier"] = about
    report["ensembles"] = ensembles
    report["provenance"] = {**record(directory, **made), "reference": ref_text}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", finite_json(report))
    names = getattr(source, "channel_names", None)
    units = getattr(source, "channel_units", None)
    save_figures(out, gen, ref, report, training=training, channel_names=names, units=units)
    _append_to_card(directory / CARD_FILE, report, out)
    return report


def headline(report: Mapping[str, Any]) -> list[str]:
    """One line per metric value (with its interval), the condition agreement (beside the fitted
    classifier's on real held-out data), the domain metrics of the ensembles and the memorisation
    figure."""
    lines = []
    for name, entry in report["metrics"].items():
        for key, value in entry.items():
            if key in ("higher_is_better", "interval", "target"):
                continue
            label = name if key == "value" else f"{name}.{key}"
            interval = entry.get("interval") if key == "value" else None
            text = f"[{interval[0]:.4g}, {interval[1]:.4g}]" if interval else ""
            lines.append(f"{label:28} {value:.4g} {text}".rstrip())
    agree = report.get("condition_agreement")
    if agree:
        figures = ", ".join(f"{k} {v:.3g}" for k, v in agree.items() if isinstance(v, float))
        held = agree.get("classifier", {}).get("heldout")
        real = ", ".join(f"{k} {v:.3g}" for k, v in (held or {}).items())
        lines.append(
            f"{'condition agreement':28} {figures}" + (f" (real held-out data: {real})" if real else "")
        )
    ensembles = report.get("ensembles")
    for name, entry in (ensembles or {}).get("metrics", {}).items():
        intervals = entry.get("intervals") or {"value": entry.get("interval")}
        for key, value in entry.items():
            if key in ("target", "higher_is_better") or not isinstance(value, float):
                continue
            interval = intervals.get(key)
            text = f" [{interval[0]:.4g}, {interval[1]:.4g}]" if interval else ""
            label = name if key == "value" else f"{name}.{key}"
            lines.append(f"{label:28} {value:.4g}{text}")
    if ensembles:
        lines.append(
            f"{'':28} ({ensembles['conditions']} conditions x {ensembles['members']} members, "
            "domain metrics of the ensemble or its mean, averaged over conditions)"
        )
    memo = report.get("memorization")
    if memo:
        lines.append(
            f"{'memorisation':28} {memo['fraction_flagged']:.1%} of samples nearer one training sample than "
            f"{memo['threshold']:.2f} x the next (median ratio {memo['median_ratio']:.2f})"
        )
    return lines


def _append_to_card(card: Path, report: Mapping[str, Any], out: Path) -> None:
    """Replace the card's evaluation section (or add one) with the report's headline figures."""
    from sciddpm.persistence import write_atomic

    if not card.is_file():
        return
    text = card.read_text(encoding="utf-8").split(f"\n{EVALUATION_HEADING}\n")[0].rstrip() + "\n"
    level = int(100 * report.get("interval_level", 0.95))
    section = (
        f"\n{EVALUATION_HEADING}\n\n{report['generated']} generated samples against {report['reference']} "
        f"reference samples ({report['provenance']['reference']}); {level} % bootstrap intervals. "
        f"Full report: `{out / 'report.json'}`.\n\n```\n" + "\n".join(headline(report)) + "\n```\n"
    )
    write_atomic(card, lambda p: Path(p).write_text(text + section, encoding="utf-8"))
