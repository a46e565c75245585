"""The ``sciddpm`` command line: thin wrappers over the Python API.

Errors print one line (``sciddpm: error: ...``) and exit with status 1;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sciddpm.cli import bridge_commands, plugin_commands

__all__ = ["build_parser", "main"]


def _threads_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="torch CPU threads (default: SCIDDPM_NUM_THREADS, train.threads, or all cores); on a machine "
        "other jobs use, 1 is often fastest",
    )


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return int(text)


def _use_threads(args: argparse.Namespace) -> None:
    """``--threads`` wins over SCIDDPM_NUM_THREADS and the run file: it is set as the variable."""
    import os

    from sciddpm.training.distributed import THREADS_ENV, use_threads

    if args.threads is not None:
        os.environ[THREADS_ENV] = str(args.threads)
    use_threads()


def _train(args: argparse.Namespace) -> int:
    _use_threads(args)
    from sciddpm.training.trainer import Trainer

    if args.out is None and (args.resume or not args.dry_run):
        raise ValueError("--out is required: the run directory for checkpoints, logs and the pipeline")
    # A dry run writes nothing, so it needs no directory; this one is never created.
    out = Path(args.out) if args.out is not None else Path("sciddpm-dry-run-writes-nothing")
    if args.stage == "encoder":
        from sciddpm.training.encoder import train_encoder

        if args.resume or args.dry_run:
            raise ValueError("--stage encoder trains the autoencoder in one go: drop --resume/--dry-run")

        encoder = train_encoder(args.run, out)
        print(
            f"trained encoder saved to {out}; reuse it with "
            f'encoder = {{type = "vae", weights = "{out}"}}' + _fit_text(encoder.last_fit)
        )
        return 0
    trainer = Trainer(args.run, out, progress=not args.no_progress, resume=args.resume)
    main = trainer.world.is_main
    try:
        if args.dry_run:
            report = trainer.dry_run()
            if main:
                print(_dry_run_text(args.run, report))
            return 0
        if main and trainer.world.distributed:
            print(
                f"distributed: {trainer.world.world_size} ranks x {trainer.cfg.grad_accum} micro-batches x "
                f"{trainer.micro_batch} samples = batch_size {trainer.cfg.batch_size} per step; the LR needs "
                "no rescaling because the global batch does not change with the number of ranks"
            )
        pipe = trainer.fit(resume=args.resume)
    finally:
        trainer.world.leave()
    if main:
        params = sum(p.numel() for p in pipe.trainable.parameters())
        print(f"trained pipeline saved to {out} ({params:,} parameters)")
    return 0


def _fit_text(fit: dict) -> str:
    if "final_reconstruction" not in fit:
        return ""
    return (
        f" (final squared error {fit['final_reconstruction']:.4g} in standardised units, {fit['seconds']} s)"
    )


def _named(names: list[str]) -> str:
    return f" ({', '.join(names)})" if names else ""


def _dry_run_text(run: str, r: dict) -> str:
    return (
        f"{run} is valid; nothing was written.\n"
        f"  data:                {r['samples']:,} samples of shape {tuple(r['sample_shape'])} (C, *spatial): "
        f"{r['sample_shape'][0]} channel(s){_named(r['channel_names'])}, {len(r['sample_shape']) - 1}-D\n"
        f"  parameters:          {r['parameters']:,}\n"
        f"  batch per step:      {r['world_size']} rank(s) x {r['grad_accum']} micro-batch(es) x "
        f"{r['micro_batch']}\n"
        f"  memory per step:     ~{r['estimated_mb']:.0f} MiB ({r['state_mb']:.0f} MiB weights, gradients, "
        f"AdamW and EMA; {r['activation_mb']:.0f} MiB activations per micro-batch)\n"
        f"  learning rate:       warm-up over {r['warmup_steps']} steps to {r['lr']:g}, cosine decay to "
        f"{r['final_lr']:g} at step {r['steps']}\n"
        f"  seconds per step:    {r['seconds_per_step']:.3f} on {r['device']} with {r['threads']} thread(s)\n"
        f"  estimated run time:  {r['estimated_minutes']:.1f} min"
        + (
            f"\n  warning: the machine's load ({r['load']:.1f}) exceeds its {r['cores']} cores: other jobs "
            "share the CPU, so these timings are slower than the run alone; on a shared machine try "
            "--threads 1"
            if r["load"] > r["cores"]
            else ""
        )
    )


def _sample(args: argparse.Namespace) -> int:
    _use_threads(args)
    import numpy as np

    from sciddpm import persistence
    from sciddpm.pipeline.pipeline import Pipeline

    out = Path(args.out)
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    given = [
        flag
        for flag, value in (
            ("--condition", args.condition),
            ("--caption", args.caption),
            ("--data-index", args.data_index),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise ValueError(f"give one of --condition, --caption and --data-index, not {' and '.join(given)}")
    native = out.suffix not in {".npy", ".png"}
    signer = _c2pa_signer(args, out)  # before minutes of sampling, not after
    source = _run_source(args.pipeline, out) if native or args.data_index is not None else None
    if source is None and out.suffix == ".png":
        source = _figure_source(args.pipeline)
    pipe = Pipeline.load(args.pipeline, device=args.device or _auto_device())
    condition = _parse_condition(args.condition, args.n)
    if args.caption is not None:  # text for a caption conditioner such as 'clip', cycled over the samples
        captions = args.caption
        condition = (
            captions[0] if len(captions) == 1 else [captions[i % len(captions)] for i in range(args.n)]
        )
    if args.data_index is not None:
        assert source is not None
        if not 0 <= args.data_index < len(source):
            raise ValueError(
                f"--data-index {args.data_index} is outside the run's {len(source)} data samples"
            )
        condition = source[args.data_index].condition
    if args.guidance != 1.0 and condition is None:
        raise ValueError(
            "--guidance needs --condition or --caption: guidance pushes samples towards a condition"
        )
    interval = _parse_interval(args.guidance_interval)
    sampler = args.scheduler or "trained"
    if args.scheduler == "fitted":  # record the fitted times themselves: the library may change
        sampler = pipe.schedules.resolve("fitted", args.steps, None, condition, args.guidance)[0]
    options = {
        "steps": args.steps,
        "scheduler": args.scheduler,
        "guidance_scale": args.guidance,
        "guidance_interval": interval,
        "seed": args.seed,
        "progress": not args.no_progress,
    }
    from sciddpm.provenance import record, sidecar_path

    provenance = record(
        args.pipeline,
        sampler=sampler,
        steps=args.steps,
        guidance=args.guidance,
        guidance_interval=list(interval) if interval else None,
        seed=args.seed,
        condition=args.condition,
        caption=args.caption,
        data_index=args.data_index,
    )
    if native:
        assert source is not None
        info = {
            "model": str(args.pipeline),
            "seed": args.seed,
            "steps": args.steps,
            "scheduler": sampler if isinstance(sampler, str) else json.dumps(sampler),
            "guidance": args.guidance,
            "weights_sha256": provenance["weights_sha256"],
            "synthetic": True,
        }
        writer = source.native_writer(str(out), args.n, index=args.data_index, info=info)
        if writer is None:
            raise ValueError(
                f"--out {str(out)!r}: the run's data source ({type(source).__name__}) writes no "
                f"{out.suffix or 'extension-less'} output; "
                "use a .npy file (the array) or a .png file (a grid)"
            )
        drawn = pipe.sample_into(writer, args.n, condition, **options)
        kept = args.n - len(drawn)
        print(f"wrote {len(drawn)} samples to {out}" + (f" ({kept} already there, kept)" if kept else ""))
        return 0
    samples = pipe.sample(args.n, condition, **options)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":

        def write(path: str) -> None:
            with open(path, "wb") as fh:  # a file object: np.save would add ".npy" to a temporary name
                np.save(fh, samples.numpy())

        persistence.write_json(sidecar_path(out), {**provenance, "shape": list(samples.shape)})
        persistence.write_atomic(out, write)
    else:
        from sciddpm.plot import save_grid

        names = getattr(source, "channel_names", None)
        units = getattr(source, "channel_units", None)
        rgb = bool(getattr(source, "rgb", False))

        def grid(path: str) -> None:
            save_grid(samples, path, channel_names=names, units=units, rgb=rgb, provenance=provenance)
            if signer is not None:  # signed before it takes the name: never an unsigned out.png
                from sciddpm.credentials import sign_png

                sign_png(path, provenance, signer)

        persistence.write_atomic(out, grid)
    print(f"wrote {args.n} samples of shape {tuple(samples.shape[1:])} to {out}")
    return 0


def _c2pa_signer(args: argparse.Namespace, out: Path) -> Any:
    """The checked C2PA signer of ``--c2pa-key``/``--c2pa-cert``, or None when neither is given."""
    if args.c2pa_key is None and args.c2pa_cert is None:
        if args.c2pa_alg is not None:
            raise ValueError("--c2pa-alg goes with --c2pa-key and --c2pa-cert (PEM files)")
        return None
    if args.c2pa_key is None or args.c2pa_cert is None:
        raise ValueError("C2PA signing needs both --c2pa-key and --c2pa-cert (PEM files)")
    if out.suffix != ".png":
        raise ValueError(
            f"--out {str(out)!r}: C2PA credentials go into PNG output; .npy and native formats carry "
            "their provenance record in a side-car or their own metadata"
        )
    from sciddpm.credentials import C2paSigner

    signer = C2paSigner(args.c2pa_key, args.c2pa_cert, args.c2pa_alg or "es256")
    signer.check()
    return signer


def _figure_source(pipeline: str) -> Any:
    """The run's data source for a figure's channel names and units, or None (a figure without them)."""
    from sciddpm.config import load_saved_run
    from sciddpm.registry import get_registry

    run_file = Path(pipeline) / "run.toml"
    if not run_file.is_file():
        return None
    run = load_saved_run(run_file)
    if run.data is None:
        return None
    try:
        return get_registry().build("data", run.data)
    except Exception as exc:  # the figure is still worth drawing without the names
        print(
            f"sciddpm: note: channels drawn unnamed; the run's data source did not open ({exc})",
            file=sys.stderr,
        )
        return None


def _run_source(pipeline: str, out: Path) -> Any:
    """The data source of the run that trained ``pipeline``, from its ``run.toml``."""
    from sciddpm.config import load_saved_run
    from sciddpm.registry import get_registry

    run_file = Path(pipeline) / "run.toml"
    if not run_file.is_file():
        raise ValueError(
            f"--out {str(out)!r} / --data-index need the run's data section, but {run_file} is missing "
            "(a pipeline saved from Python): use .npy/.png, or the source's native_writer from Python"
        )
    run = load_saved_run(run_file)
    if run.data is None:
        raise ValueError(f"{run_file} has no [data] section to write native output or take conditions from")
    return get_registry().build("data", run.data)


def _parse_condition(text: str | None, n: int) -> Any:
    """``3`` → one condition for all; ``0,1,2`` → cycled over the n samples."""
    if text is None:
        return None
    try:
        values = [json.loads(v) for v in text.split(",")]
    except json.JSONDecodeError:
        raise ValueError(
            f"--condition {text!r}: give numbers, e.g. --condition 3 or --condition 0,1,2"
        ) from None
    return values[0] if len(values) == 1 else [values[i % len(values)] for i in range(n)]


def _parse_interval(text: str | None) -> tuple[float, float] | None:
    """``0.3,3`` → ``(0.3, 3.0)``; the pipeline checks the values."""
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(
            f"--guidance-interval {text!r}: give two noise levels LO,HI (sigma / alpha), e.g. 0.3,3"
        ) from None
    return lo, hi


def _auto_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


#: Entry-point group of plugin demos: ``name = "module:function"``, the function called as
#: ``run_demo(out, steps=, seed=, progress=)`` and returning a JSON-able report.
DEMO_GROUP = "sciddpm.demos"


def _plugin_demos() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=DEMO_GROUP)}


def _demo(args: argparse.Namespace) -> int:
    _use_threads(args)
    if args.name != "digits":
        demos = _plugin_demos()
        if args.name not in demos:
            raise ValueError(
                f"no demo {args.name!r}; available: {', '.join(['digits', *sorted(demos)])} "
                "(plugins add demos, e.g. pip install sciddpm-climate for 'climate')"
            )
        out = args.out or f"demo_{args.name}"
        report = demos[args.name].load()(out, steps=args.steps, seed=args.seed, progress=not args.no_progress)
        print(report.get("summary") or json.dumps(report, indent=2))
        return 0
    from sciddpm.cli.demo import run_demo

    args.out = args.out or "demo_out"
    report = run_demo(args.out, steps=args.steps, seed=args.seed, progress=not args.no_progress)
    print(
        f"classifier accuracy of generated digits: {report['classifier_accuracy']:.3f} "
        f"(train {report['train_seconds']:.0f} s, sample {report['sample_seconds']:.0f} s); "
        f"see {Path(args.out) / 'samples.png'} and {Path(args.out) / 'report.json'}"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    _use_threads(args)
    from sciddpm.pipeline.evaluation import evaluate_run, headline

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    out = Path(args.out) if args.out else Path(args.run) / "evaluation"
    report = evaluate_run(
        args.run,
        out,
        reference=args.reference,
        samples=args.samples,
        n=args.n,
        max_reference=args.max_reference,
        metrics=metrics,
        steps=args.steps,
        scheduler=args.scheduler,
        seed=args.seed,
        bootstrap=args.bootstrap,
        progress=not args.no_progress,
        agreement=args.agreement,
        members=args.members,
        conditions=args.conditions,
    )
    print(
        f"{report['generated']} samples vs {report['reference']} reference samples "
        f"({report['provenance']['reference']})"
    )
    print("\n".join("  " + line for line in headline(report)))
    print(f"report, figures: {out}; the model card's evaluation section is updated")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``sciddpm`` command line's parser, every subcommand with its options (the docs' CLI reference)."""
    parser = argparse.ArgumentParser(prog="sciddpm", description="Diffusion models for scientific data.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    from sciddpm import __version__

    parser.add_argument("--version", action="version", version=f"sciddpm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("plugins", help="list installed components and plugins that failed to load")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument(
        "--check",
        nargs="?",
        const="",
        default=None,
        metavar="PLUGIN",
        help="run the conformance kit (sciddpm.testing) on every installed component, or on PLUGIN's "
        "('sciddpm' for the built-ins); exit status 1 when a check fails",
    )
    p.set_defaults(func=plugin_commands.plugins_command)

    p = sub.add_parser("evaluate", help="score a trained pipeline's samples against data; report and figures")
    p.add_argument("run", help="directory written by 'sciddpm train' (or Pipeline.save with --reference)")
    p.add_argument(
        "--reference", default=None, help=".npy (N, C, *spatial) to compare with (default: the run's data)"
    )
    p.add_argument(
        "--samples", default=None, help=".npy of samples already drawn (default: draw --n of them)"
    )
    p.add_argument("--n", type=_positive_int, default=256, help="samples to draw (default 256)")
    p.add_argument(
        "--max-reference", type=_positive_int, default=2000, help="reference samples read (default 2000)"
    )
    p.add_argument(
        "--metrics", default=None, help="comma-separated metric names (default: every general one)"
    )
    p.add_argument("--steps", type=_positive_int, default=50, help="sampling steps (default 50)")
    p.add_argument("--scheduler", default=None, help="sampler (default: the trained one)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples")
    p.add_argument(
        "--members",
        type=int,
        default=8,
        help="members per ensemble for domain metrics (0: none; default 8)",
    )
    p.add_argument(
        "--conditions", type=_positive_int, default=8, help="data samples to draw ensembles for (default 8)"
    )
    p.add_argument(
        "--bootstrap", type=int, default=50, help="bootstrap resamples for the intervals (default 50)"
    )
    p.add_argument("--out", default=None, help="report folder (default RUN/evaluation)")
    p.add_argument(
        "--agreement",
        action="store_true",
        help="conditional models: fit a classifier of the condition on the run's data (scikit-learn) "
        "and report how often samples show what they were asked for",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _threads_flag(p)
    p.set_defaults(func=_evaluate)

    bridge_commands.add_parser(sub)

    p = sub.add_parser("new-plugin", help="write a new plugin package with an example component per kind")
    p.add_argument(
        "name", help="the plugin's name, e.g. 'mylab': package sciddpm-mylab, components mylab/..."
    )
    p.add_argument(
        "--kinds",
        default="data",
        help="comma-separated kinds to give an example of: data, encoder, conditioner, denoiser, metric "
        "(default: data)",
    )
    p.add_argument("--out", default=".", help="folder to write sciddpm-NAME into (default: here)")
    p.set_defaults(func=plugin_commands.new_plugin_command)

    p = sub.add_parser("train", help="train a pipeline from a run file (TOML/JSON/YAML)")
    p.add_argument("run", help="run file with [data], [pipeline] and [train] sections")
    p.add_argument(
        "--out",
        default=None,
        help="run directory: checkpoints, logs and the trained pipeline (not for --dry-run)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument(
        "--dry-run", action="store_true", help="validate, time a few steps and estimate memory; write nothing"
    )
    p.add_argument(
        "--stage",
        choices=("all", "encoder"),
        default="all",
        help="'encoder': train only the autoencoder (pipeline.encoder, e.g. a vae) and save it in --out",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _threads_flag(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("sample", help="draw samples from a saved pipeline")
    p.add_argument("pipeline", help="directory written by 'sciddpm train' or Pipeline.save")
    p.add_argument("--n", type=int, default=16, help="number of samples (default 16)")
    p.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
    p.add_argument(
        "--scheduler",
        default=None,
        help=(
            "sampler, e.g. ddim or ddpm, or 'fitted': the pipeline's fitted schedule for --steps "
            "(default: the trained one)"
        ),
    )
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (default 1)")
    p.add_argument(
        "--guidance-interval",
        default=None,
        metavar="LO,HI",
        help="guide only where the noise level sigma/alpha is in [LO, HI] (Kynkäänniemi et al. 2024)",
    )
    p.add_argument("--condition", default=None, help="class label(s) or values: '3' or '0,1,2' (cycled)")
    p.add_argument(
        "--caption",
        action="append",
        default=None,
        metavar="TEXT",
        help="a caption for a text conditioner ('clip'); repeat it for several, cycled over the samples",
    )
    p.add_argument(
        "--data-index",
        type=int,
        default=None,
        metavar="I",
        help="condition on data sample I of the run's source (e.g. its static fields, time, coarse "
        "field); native output is placed where that sample is",
    )
    p.add_argument("--seed", type=int, default=0, help="seed; sample i depends only on it and i")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--out",
        required=True,
        help=".npy (array (N, C, *spatial), physical units), .png (grid) or a format the run's data "
        "source writes (climate/xarray: .zarr, written sample by sample and resumed when rerun)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--c2pa-key", default=None, metavar="PEM", help="sign the PNG's C2PA manifest with this key"
    )
    p.add_argument(
        "--c2pa-cert", default=None, metavar="PEM", help="the key's certificate chain, signer first"
    )
    p.add_argument("--c2pa-alg", default=None, help="the key's C2PA signature algorithm (default es256)")
    _threads_flag(p)
    p.set_defaults(func=_sample)

    p = sub.add_parser(
        "demo", help="train and score a small model: 'digits' (default) or a plugin's demo ('climate')"
    )
    p.add_argument(
        "name",
        nargs="?",
        default="digits",
        help="'digits': class-conditional digits with guidance; plugins add more ('climate')",
    )
    p.add_argument("--out", default=None, help="output directory (default demo_out, or demo_NAME)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's recipe)")
    p.add_argument("--seed", type=int, default=0, help="seed of the whole demo")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _threads_flag(p)
    p.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Errors print one line (``sciddpm: error: ...``) and return 1; ``--debug`` raises them instead.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("sciddpm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0
    except Exception as exc:
        if args.debug:
            raise
        print(f"sciddpm: error: {exc}", file=sys.stderr)
        return 1
