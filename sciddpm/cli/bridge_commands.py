"""``sciddpm import-diffusers``: a local diffusers pipeline folder as a saved sciddpm pipeline.

It writes the pipeline (``sciddpm sample`` and ``sciddpm evaluate`` then work on it) and a run
file, ``finetune.toml``, whose ``[pipeline]`` names the diffusers folders, so ``sciddpm train``
fine-tunes the pretrained model on a lab's data once its ``[data]`` section is filled in.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import tomli_w

__all__ = ["import_diffusers_command", "run_file_text"]


def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI such as 0,255, got {text!r}") from None
    return lo, hi


def run_file_text(config: dict[str, Any], source: str) -> str:
    """A TOML run file whose ``[pipeline]`` is ``config`` and whose ``[data]`` is left to fill in.

    ``config`` maps each part to a flat spec (strings, numbers, booleans, lists), written by
    ``tomli_w``; unset (None) fields are left out, as TOML has no null. Raises ValueError for a
    nested table.
    """
    lines = [
        f"# Fine-tune the diffusers pipeline in {source}: fill in [data], then",
        "#   sciddpm train finetune.toml --out RUN",
        "# (relative paths in [data] are read from the folder you run that in)",
        "",
        "[data]",
        '# type = "array"          # your data, shaped like the pipeline\'s data_shape',
        '# path = "images.npy"     # (N, C, H, W) in the physical units of data_range',
    ]
    if config.get("conditioner", {}).get("type") == "class_label":
        lines += [
            '# path = "images.npz"     # class-conditional: an .npz holding the images and their labels',
            '# key = "x"',
            '# labels_key = "labels"',
        ]
    lines.append("")
    pipeline = {}
    for part, spec in config.items():
        if any(isinstance(v, dict) for v in spec.values()):
            raise ValueError(f"pipeline.{part} has a table inside; a run file needs flat values here")
        pipeline[part] = {k: v for k, v in spec.items() if v is not None}  # TOML has no null
    lines.append(tomli_w.dumps({"pipeline": pipeline}))
    lines += ["[train]", "steps = 1000", "lr = 1e-5  # small: start from the pretrained weights", ""]
    return "\n".join(lines)


def import_diffusers_command(args: argparse.Namespace) -> int:
    """Save the pipeline of ``args.path`` in ``args.out`` with ``finetune.toml`` beside it.

    Everything is read and checked before anything is written. Raises ValueError for an ``--out``
    that already holds a pipeline and as ``Pipeline.from_diffusers``.
    """
    from sciddpm.bridge import pipeline_config
    from sciddpm.pipeline import Pipeline

    out = Path(args.out)
    if (out / "pipeline.json").exists():
        raise ValueError(f"{str(out)!r} already holds a pipeline; choose another --out")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = Pipeline.from_diffusers(args.path, data_range=args.data_range)
        try:  # a run file names the folders, so its denoiser is the diffusers_unet wrapper
            run_text, why = run_file_text(pipeline_config(args.path, args.data_range)[0], args.path), ""
        except ValueError as exc:
            run_text, why = None, str(exc)
    for message in dict.fromkeys(str(w.message) for w in caught):  # each once, one line
        print(f"sciddpm: warning: {message}", file=sys.stderr)
    pipe.save(out)
    kinds = ", ".join(
        f"{part} {getattr(pipe.config, part).type}"
        for part in ("encoder", "denoiser", "conditioner", "scheduler")
    )
    print(f"imported {args.path}: data shape {pipe.data_shape}; {kinds}")
    print(f"saved pipeline: {out}  (sciddpm sample {out} --n 16 --out samples.png)")
    if run_text is None:
        print(f"no fine-tuning run file: {why}")
    else:
        (out / "finetune.toml").write_text(run_text, encoding="utf-8")
        print(f"fine-tuning run file: {out / 'finetune.toml'}")
    return 0


def add_parser(sub: Any) -> None:
    """Register ``import-diffusers`` on the command line's subparsers."""
    p = sub.add_parser(
        "import-diffusers", help="save a local diffusers pipeline folder as a sciddpm pipeline"
    )
    p.add_argument("path", help="folder written by diffusers' save_pretrained (model_index.json)")
    p.add_argument("--out", required=True, help="directory for the sciddpm pipeline and finetune.toml")
    p.add_argument(
        "--data-range",
        type=_range,
        default=None,
        metavar="LO,HI",
        help="physical values the model sees as -1 and 1 (default: what a sciddpm export recorded, else "
        "0,1; 8-bit images: 0,255; a negative LO needs the = form: --data-range=-1,1)",
    )
    p.set_defaults(func=import_diffusers_command)
