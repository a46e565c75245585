"""Text-to-digits: a diffusion model conditioned on captions through a CLIP trained on the digits.

1. ``sciddpm.train`` builds the pipeline; the ``clip`` conditioner's ``fit`` first trains CLIP
   contrastively on (digit, caption) pairs written with the *training* caption templates, then
   freezes it; the U-Net then trains with cross-attention to the caption tokens and FiLM on the
   pooled caption vector.
2. CLIP zero-shot accuracy is measured on *held-out* test digits with *held-out* caption
   templates (wordings never seen in training), averaging each class's template embeddings.
3. Samples for "a handwritten three" etc. (training and held-out wordings) are scored by a
   classifier trained on real digits: the fraction recognised as the digit that was asked for.

Run:  python examples/text_to_digits.py [--out runs/text_to_digits] [--threads 1]
(about 4-5 minutes on 2 shared CPU cores)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sciddpm import train
from sciddpm.components.metrics import DigitsClassifier
from sciddpm.config import load_run
from sciddpm.data.captions import (
    DIGIT_WORDS,
    HELDOUT_TEMPLATES,
    TRAIN_TEMPLATES,
    CaptionedDigits,
    CaptionedDigitsConfig,
    caption,
    class_captions,
)
from sciddpm.plot import save_grid

RUN = {
    "data": {"type": "digits_captions", "size": 16, "split": "train", "templates": "train"},
    "pipeline": {
        "encoder": {"type": "standardize"},
        "denoiser": {
            "type": "unet",
            "channels": [16, 32, 64],
            "blocks_per_level": 1,
            "mid_attention": True,  # cross-attention to the caption tokens at the 4x4 level
            "prediction": "v",
        },
        # A 2-layer, 64-wide CLIP with the byte tokenizer, trained for 1000 contrastive steps.
        "conditioner": {"type": "clip", "steps": 1000},
        "scheduler": {"type": "ddim", "schedule": "cosine"},
    },
    "train": {
        "steps": 800,
        "batch_size": 64,
        "lr": 2e-3,
        "warmup_steps": 100,
        "ema_decay": 0.995,
        "cond_drop": 0.1,
        "checkpoint_every": 0,
        "log_every": 100,
    },
}
PER_PROMPT = 5
SAMPLE_STEPS = 30
GUIDANCE = 2.0
#: One training and one held-out wording per digit for the samples.
PROMPT_TEMPLATES = {"train": "a handwritten {word}", "heldout": "a sketch of the number {word}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/text_to_digits")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--grid", default=None, help="also write the sample grid PNG here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)

    begin = time.perf_counter()
    pipe = train(load_run(RUN), out / "model")
    trained = time.perf_counter()
    clip = pipe.conditioner

    # CLIP zero-shot on held-out digits with held-out wordings (prompt ensemble, Radford et al. 2021).
    test = CaptionedDigits(CaptionedDigitsConfig(size=16, split="test", templates="heldout"))
    images, labels = torch.stack([s.x for s in test]), torch.as_tensor(test.labels)
    zero_shot = (clip.zero_shot(images, class_captions(HELDOUT_TEMPLATES)) == labels).float().mean().item()
    per_template = {
        t: (clip.zero_shot(images, [caption(d, t) for d in range(10)]) == labels).float().mean().item()
        for t in HELDOUT_TEMPLATES
    }
    seen_wording = (clip.zero_shot(images, class_captions(TRAIN_TEMPLATES)) == labels).float().mean().item()

    # Text-to-image: PER_PROMPT samples per digit and wording.
    prompts, digits, kinds = [], [], []
    for kind, template in PROMPT_TEMPLATES.items():
        for d in range(10):
            prompts += [caption(d, template)] * PER_PROMPT
            digits += [d] * PER_PROMPT
            kinds += [kind] * PER_PROMPT
    sample_begin = time.perf_counter()
    samples = pipe.sample(
        len(prompts), prompts, steps=SAMPLE_STEPS, guidance_scale=GUIDANCE, seed=0, batch_size=100
    )
    sampled = time.perf_counter()
    predicted = torch.as_tensor(DigitsClassifier(size=16).predict(samples.numpy()))
    correct = predicted == torch.as_tensor(digits)
    kinds_t = [k == "train" for k in kinds]
    by_kind = {
        "train": correct[torch.tensor(kinds_t)].float().mean().item(),
        "heldout": correct[~torch.tensor(kinds_t)].float().mean().item(),
    }

    report = {
        "clip_zero_shot_heldout_digits_heldout_templates": zero_shot,
        "clip_zero_shot_per_heldout_template": per_template,
        "clip_zero_shot_heldout_digits_train_templates": seen_wording,
        "clip_final_contrastive_loss": clip.losses[-1],
        "clip_fit_seconds": clip.fit_seconds,
        "text_to_digit_accuracy": correct.float().mean().item(),
        "text_to_digit_accuracy_by_wording": by_kind,
        "prompt_templates": PROMPT_TEMPLATES,
        "samples": len(prompts),
        "sample_steps": SAMPLE_STEPS,
        "guidance_scale": GUIDANCE,
        "train_seconds_clip_and_diffusion": trained - begin,
        "sample_seconds": sampled - sample_begin,
        "torch_threads": torch.get_num_threads(),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))

    # A grid: one row per digit, the training wording then the held-out wording.
    order = [
        kind * 10 * PER_PROMPT + d * PER_PROMPT + j
        for d in range(10)
        for kind in (0, 1)
        for j in range(PER_PROMPT)
    ]
    grid = samples[order]
    title = (
        f"'a handwritten {{word}}' | 'a sketch of the number {{word}}' -- classified as asked: "
        f"{report['text_to_digit_accuracy']:.2f}"
    )
    for path in [out / "samples.png", *([Path(args.grid)] if args.grid else [])]:
        save_grid(grid, path, nrow=2 * PER_PROMPT, row_labels=list(DIGIT_WORDS), title=title)


if __name__ == "__main__":
    main()
