"""
# Guidance, memorisation, and labelling what is synthetic

Three things a researcher asks of a conditional model, on the bundled digits with the everyday API:

1. **Classifier-free guidance** (Ho & Salimans 2022): the network is trained with the class
   dropped 10 % of the time, so it knows both `p(x | class)` and `p(x)`; sampling combines the two
   predictions as `uncond + s (cond - uncond)`. sciddpm's `guidance_scale` is this `s`: 1 is no
   guidance, and the paper's weight `w` is `s - 1`. Larger scales give more typical, less varied
   samples.
2. **Memorisation**: a model trained on a handful of images can return them (Carlini et al. 2023
   extracted training images from diffusion models). sciddpm flags a sample whose nearest training
   image is closer than a third of the distance to the second nearest (the ratio test of Yoon et
   al. 2023), in a feature space (here the pooled 4 x 4 features of the evaluation tools).
3. **Labelling what is synthetic**: generated fields look like measurements, so every file sciddpm
   writes from a model says it is synthetic and which model made it, and the model's folder holds
   a model card saying what it was trained on and what it is not for.

A short run (about a minute and a half on 2 CPU cores); the demo trains the same recipe for 800
steps.
"""

# %%
# Train a class-conditional model of 8 x 8 digits for 300 steps.
import tempfile

import matplotlib.pyplot as plt
import torch

from sciddpm import train
from sciddpm.evaluation import memorization, pooled_features

run = {
    "data": {"type": "digits", "size": 8, "split": "train"},
    "pipeline": {
        "encoder": {"type": "standardize"},
        "denoiser": {"type": "unet", "channels": [32, 64], "blocks_per_level": 1, "attention_levels": [],
                     "mid_attention": False, "prediction": "v"},
        "conditioner": {"type": "class_label", "dim": 32},
        "scheduler": {"type": "ddim", "schedule": "cosine"},
    },
    "train": {"steps": 300, "batch_size": 64, "lr": 2e-3, "warmup_steps": 30, "ema_decay": 0.99,
              "cond_drop": 0.1, "checkpoint_every": 0, "log_every": 100},
}  # fmt: skip
folder = tempfile.mkdtemp()
pipe = train(run, f"{folder}/digits", progress=False)

# %%
# The same noise, three guidance scales: each row asks for the digits 0-9. The last row guides
# only at middle noise levels (sigma / alpha between 0.3 and 5): Kynkäänniemi et al. (2024) found
# that guidance at high noise mostly costs diversity and at low noise does little, and that an
# interval keeps its benefit (`guidance_interval`, `sciddpm sample --guidance-interval`).
labels = list(range(10))
settings = [(1.0, None), (2.0, None), (4.0, None), (4.0, (0.3, 5.0))]
fig, axes = plt.subplots(4, 10, figsize=(9, 4))
for row, (scale, interval) in enumerate(settings):
    x = pipe.sample(10, labels, steps=30, guidance_scale=scale, guidance_interval=interval, seed=1)
    for col in range(10):
        axes[row, col].imshow(x[col, 0].numpy(), cmap="gray_r", vmin=0, vmax=16)  # the data's 0-16
        axes[row, col].axis("off")
    label = f"scale {scale:g}" + (f", sigma in {interval}" if interval else "")
    axes[row, 0].set_title(label, fontsize=8, loc="left")
fig.suptitle("classifier-free guidance: the same noise at scales 1, 2 and 4, and 4 in an interval")
fig.tight_layout()

# %%
# Memorisation: the model above against one overfitted on 20 threes (a plain array source).
from sciddpm.data import ArraySource  # noqa: E402
from sciddpm.registry import get_registry  # noqa: E402

digits = get_registry().build("data", run["data"])
threes = get_registry().build("data", {**run["data"], "classes": [3]})
few = torch.stack([threes[i].x for i in range(20)])
unconditional = {**run["pipeline"], "conditioner": {"type": "none"}}
overfit = train(
    {"pipeline": unconditional, "train": {**run["train"], "steps": 600, "cond_drop": 0.0}},
    f"{folder}/few", source=ArraySource.from_array(few.numpy()), progress=False,
)  # fmt: skip
everything = torch.stack([digits[i].x for i in range(len(digits))])
features = pooled_features(everything, cells=4)
# The ratio depends on the training set, so the trained model's threes are also measured against
# the same 20 threes: a baseline for the overfitted model's row.
for name, model, training, condition in (
    (f"trained on {len(digits)} digits, vs its data", pipe, everything, [3] * 64),
    ("trained on all digits, vs the 20 threes", pipe, few, [3] * 64),
    ("overfitted on the 20 threes, vs them", overfit, few, None),
):
    samples = model.sample(64, condition, steps=30, seed=2)
    report = memorization(features(samples), features(training)).summary()
    print(f"{name}: {report['fraction_flagged']:.0%} of 64 samples flagged as copies "
          f"(median ratio {report['median_ratio']:.2f})")  # fmt: skip

# %%
# Labelling synthetic output. `sciddpm sample` (here called in-process) writes the record into
# every file it makes: a `.npy` gets a side-car JSON, a PNG text chunks (a readable line and the
# JSON), native formats their own attributes. The record says the content is synthetic in the
# IPTC vocabulary C2PA uses (`trainedAlgorithmicMedia`), names the model folder and a hash of its
# weights (the first 16 hex digits of a sha256 over its weight files' digests), and the sampler,
# steps, seed and condition, so a figure can be traced to the exact model that made it. With the
# `provenance` extra the PNG is also signed (C2PA; see the evaluation page).
from pathlib import Path  # noqa: E402

from PIL import Image  # noqa: E402

from sciddpm.cli import main  # noqa: E402
from sciddpm.provenance import read_sidecar  # noqa: E402

sample_args = ["--steps", "20", "--seed", "0", "--no-progress"]
status = main(["sample", f"{folder}/digits", "--n", "4", "--condition", "3",
               "--out", f"{folder}/threes.npy", *sample_args])  # fmt: skip
assert status == 0, "sciddpm sample failed (its message is above)"
record = read_sidecar(f"{folder}/threes.npy")
for key in ("synthetic", "digital_source_type", "weights_sha256", "sampler", "steps", "seed", "condition"):
    print(f"{key:>20}: {record.get(key)}")
status = main(["sample", f"{folder}/digits", "--n", "10", "--condition", "0,1,2,3,4,5,6,7,8,9",
               "--out", f"{folder}/grid.png", *sample_args])  # fmt: skip
assert status == 0, "sciddpm sample failed (its message is above)"
print("PNG Description:", Image.open(f"{folder}/grid.png").text["Description"])

# %%
# The model card: `README.md` in the model's folder, written when training ends (and updated by
# `sciddpm evaluate` with the headline metrics). Its first lines:
card = (Path(folder) / "digits" / "README.md").read_text()
print("\n".join(card.splitlines()[:30]))
