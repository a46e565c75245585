"""Evaluation on digits: do the metrics rank models and degraded data right, and what does it cost?

Issue 17's targets, measured on scikit-learn's digits at 16 x 16 (values 0..16):

- **sensitivity**: the demo's recipe trained for 800 steps ("full") and for 80 (10 %), each drawing
  ``--n`` samples (classes cycled, guidance 2, 30 DDIM steps), and the training data blurred
  (Gaussian, 1 px) and noised (+ N(0, 2^2)), scored against all 1797 digits by every general metric
  with 95 % bootstrap intervals; the classifier accuracy of the demo is printed beside them;
- **memorisation**: the same recipe trained on 20 digits (2 per class) for 800 steps is checked
  against its 20 training images, the full model against its 1437;
- **cost**: the wall time of one evaluation of the full model's samples (all metrics, bootstrap
  ``--bootstrap``, memorisation), and, as the peer, the ``prdc`` package's time for the same PRDC;
- **VAE features**: a KL-VAE trained on the training digits (``--vae-steps``), its pooled latents as
  the features of a Fréchet distance for every set, to compare its ranking with the classifier's.

``--reuse`` loads the models a previous run saved in ``--out`` instead of training them again
(their training times are then not measured).

Usage::

    python benchmarks/evaluate.py              # benchmarks/results/evaluate.json, ~15 min on 2 cores
    python benchmarks/evaluate.py --n 300 --steps 100 --json /tmp/e.json   # a quick look
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
from scipy.ndimage import gaussian_filter

from sciddpm.cli.demo import DEMO_RUN, GUIDANCE, SAMPLE_STEPS
from sciddpm.components.metrics import DigitsClassifier
from sciddpm.data import ArraySource
from sciddpm.data.digits import DigitsSource, DigitsSourceConfig
from sciddpm.evaluation import pooled_features, precision_recall_density_coverage
from sciddpm.evaluation.report import evaluate
from sciddpm.training.trainer import train


def _digits(split: str) -> tuple[torch.Tensor, list[int]]:
    source = DigitsSource(DigitsSourceConfig(size=16, split=split))
    samples = [source[i] for i in range(len(source))]
    return torch.stack([s.x for s in samples]).double(), [int(s.condition) for s in samples]


def _model(out: Path, steps: int, source: Any = None, reuse: bool = False) -> Any:
    if reuse and (out / "pipeline.json").is_file():
        from sciddpm.pipeline.pipeline import Pipeline

        return Pipeline.load(out)
    run = json.loads(json.dumps(DEMO_RUN))
    run["train"].update(steps=steps, warmup_steps=min(100, steps // 8))
    return train(run, out, progress=False, source=source)


def _samples(pipe: Any, labels: list[int]) -> torch.Tensor:
    return pipe.sample(
        len(labels), labels, steps=SAMPLE_STEPS, guidance_scale=GUIDANCE, seed=0, batch_size=250
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="samples per model (default 2000)")
    parser.add_argument(
        "--steps", type=int, default=800, help="training steps of the full model (default 800)"
    )
    parser.add_argument("--bootstrap", type=int, default=50, help="bootstrap resamples (default 50)")
    parser.add_argument("--out", default="/tmp/sciddpm_bench_evaluate", help="where the models are trained")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "evaluate.json"))
    parser.add_argument("--vae-steps", type=int, default=400, help="steps of the feature VAE (default 400)")
    parser.add_argument(
        "--reuse", action="store_true", help="load the models saved in --out by a previous run"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    out = Path(args.out)
    reference, _ = _digits("all")
    training, train_labels = _digits("train")
    labels = [k % 10 for k in range(args.n)]
    classifier = DigitsClassifier(size=16)

    timings: dict[str, float] = {}
    sets: dict[str, tuple[torch.Tensor, list[int] | None]] = {}
    for name, steps in (("full", args.steps), ("10 % of the steps", args.steps // 10)):
        begin = time.perf_counter()
        pipe = _model(out / name.split()[0], steps, reuse=args.reuse)
        timings[f"train {name}"] = time.perf_counter() - begin
        begin = time.perf_counter()
        sets[name] = (_samples(pipe, labels).double(), labels)
        timings[f"sample {name}"] = time.perf_counter() - begin
    blurred = torch.from_numpy(gaussian_filter(training.numpy(), sigma=(0, 0, 1, 1)))
    noised = training + 2.0 * torch.randn(
        training.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    sets["training data blurred"] = (blurred, train_labels)
    sets["training data noised"] = (noised, train_labels)

    results: dict[str, Any] = {}
    for name, (x, lab) in sets.items():
        begin = time.perf_counter()
        report = evaluate(x, reference, training=training, bootstrap=args.bootstrap)
        seconds = time.perf_counter() - begin
        report["classifier_accuracy"] = classifier.accuracy(x.float().numpy(), lab) if lab else None
        report["seconds"] = seconds
        results[name] = report

    # Memorisation: a model of 20 digits against its 20 training images.
    few = ArraySource.from_array(training[:20].float(), labels=train_labels[:20])
    begin = time.perf_counter()
    small = _model(out / "twenty", args.steps, source=few, reuse=args.reuse)
    timings["train on 20 digits"] = time.perf_counter() - begin
    copies = _samples(small, [train_labels[i % 20] for i in range(200)]).double()
    memo = evaluate(copies, reference, metrics=["wasserstein"], training=training[:20], bootstrap=0)[
        "memorization"
    ]

    # Fréchet distance on a VAE's latents (pooled 4 x 4), beside the classifier's ranking.
    from sciddpm.components.vae import VAE, VAEConfig
    from sciddpm.evaluation import encoder_features, frechet_distance

    begin = time.perf_counter()
    config = {"channels": [16, 32], "latent_channels": 4, "groups": 8, "batch_size": 32, "lr": 2e-3,
              "warmup_steps": 20, "beta": 1e-4, "device": "cpu"}  # fmt: skip
    vae = VAE(VAEConfig(dims=2, in_channels=1, steps=args.vae_steps, **config))
    vae.fit(ArraySource.from_array(training.float()))
    timings["train feature VAE"] = time.perf_counter() - begin
    latent = encoder_features(vae)
    reference_latents = latent(reference)
    vae_fd = {name: frechet_distance(latent(x), reference_latents) for name, (x, _) in sets.items()}

    # The peer: the prdc package on the same pooled features.
    features = pooled_features(reference)
    fg, fr = features(sets["full"][0]), features(reference)
    begin = time.perf_counter()
    ours = precision_recall_density_coverage(fg, fr)
    ours_s = time.perf_counter() - begin
    import prdc

    begin = time.perf_counter()
    theirs = prdc.compute_prdc(real_features=fr.numpy(), fake_features=fg.numpy(), nearest_k=5)
    theirs_s = time.perf_counter() - begin

    names = ["wasserstein", "sliced_wasserstein", "spectrum", "frechet", "kid"]
    print(
        f"{args.n} samples per model vs {len(reference)} digits; 95 % bootstrap intervals ({args.bootstrap})"
    )
    print(
        f"{'set':24} {'classifier':>10} "
        + " ".join(f"{n:>24}" for n in names)
        + f" {'precision':>9} {'recall':>7}"
    )
    for name, report in results.items():
        cells = []
        for n in names:
            m = report["metrics"][n]
            interval = m["interval"]
            cells.append(
                f"{m['value']:.3g} [{interval[0]:.3g}, {interval[1]:.3g}]"
                if interval
                else f"{m['value']:.3g}"
            )
        acc = report["classifier_accuracy"]
        prdc_m = report["metrics"]["prdc"]
        print(
            f"{name:24} {acc if acc is None else round(acc, 3)!s:>10} "
            + " ".join(f"{c:>24}" for c in cells)
            + f" {prdc_m['precision']:9.3f} {prdc_m['recall']:7.3f}"
        )
    full_memo = results["full"]["memorization"]
    print(
        f"memorisation, full model vs its {len(training)} training digits: "
        f"{full_memo['fraction_flagged']:.1%} flagged (median ratio {full_memo['median_ratio']:.2f})"
    )
    print(
        f"memorisation, model of 20 digits vs those 20: {memo['fraction_flagged']:.1%} flagged "
        f"(median ratio {memo['median_ratio']:.2f})"
    )
    print(
        f"cost of one evaluation (all metrics, {args.bootstrap} bootstraps, memorisation): "
        f"{results['full']['seconds']:.1f} s; PRDC alone: sciddpm {ours_s:.2f} s, prdc package "
        f"{theirs_s:.2f} s; same values: {all(abs(ours[k] - float(theirs[k])) < 1e-9 for k in ours)}"
    )
    print("Fréchet distance on VAE latents:", {k: round(v, 3) for k, v in vae_fd.items()})
    print("classifier accuracy:", {k: r["classifier_accuracy"] for k, r in results.items()})
    print("timings:", {k: round(v, 1) for k, v in timings.items()})
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "args": vars(args), "results": results, "memorization_20": memo, "timings": timings,
        "prdc_seconds": {"sciddpm": ours_s, "prdc": theirs_s}, "vae_frechet": vae_fd,
    }, indent=2, default=str))  # fmt: skip


if __name__ == "__main__":
    main()
