"""
# Building blocks: CLIP, text-to-digits and what each U-Net level sees

A text-to-image diffusion model is three trained pieces: a text encoder that puts captions and
images in one embedding space (CLIP; Radford et al. 2021), a denoiser that attends to the caption
(a U-Net with cross-attention; Ronneberger et al. 2015, Rombach et al. 2022), and often an
autoencoder whose latents the denoiser works on (latent diffusion; that piece is in
*From GANs and VAEs to diffusion*). Below, one run trains the first two on the bundled digits
with captions such as "a handwritten three": sciddpm's `clip` conditioner first learns
contrastively for 400 steps, then freezes while a small U-Net learns to denoise with
cross-attention to its tokens; about two minutes on 2 CPU cores. The models are small and
briefly trained, so the figures show the ideas, not state-of-the-art quality
(docs/benchmarks.md measures longer runs).
"""

# %%
import tempfile

import matplotlib.pyplot as plt
import torch

from sciddpm import train
from sciddpm.components.metrics import DigitsClassifier
from sciddpm.data.captions import (
    DIGIT_WORDS,
    HELDOUT_TEMPLATES,
    CaptionedDigits,
    CaptionedDigitsConfig,
    caption,
    class_captions,
)
from sciddpm.nn.unet import Downsample

run = {
    "data": {"type": "digits_captions", "size": 16, "split": "train", "templates": "train"},
    "pipeline": {
        "encoder": {"type": "standardize"},
        "denoiser": {"type": "unet", "channels": [16, 32, 64], "blocks_per_level": 1, "mid_attention": True,
                     "prediction": "v"},
        "conditioner": {"type": "clip", "steps": 400},
        "scheduler": {"type": "ddim", "schedule": "cosine"},
    },
    "train": {"steps": 400, "batch_size": 64, "lr": 2e-3, "warmup_steps": 50, "ema_decay": 0.99,
              "cond_drop": 0.1, "checkpoint_every": 0, "log_every": 100},
}  # fmt: skip
pipe = train(run, f"{tempfile.mkdtemp()}/text_to_digits", progress=False)
clip = pipe.conditioner

# %%
# **CLIP, zero-shot.** CLIP was trained to pair each digit with its caption against the other
# captions in the batch (a symmetric cross-entropy over the similarity matrix). It was never
# trained as a classifier, yet it classifies: embed one caption per digit, and label each image
# with the closest caption. Below, held-out test digits against *held-out wordings* ("a picture
# of the digit 7" and others never seen in training), averaged over the wordings (prompt
# ensembling). The matrix is the mean cosine similarity between the test images of each digit
# and each digit's caption: the diagonal is what the contrastive loss pulls up.
test = CaptionedDigits(CaptionedDigitsConfig(size=16, split="test", templates="heldout"))
images, labels = torch.stack([s.x for s in test]), torch.as_tensor(test.labels)
predicted = clip.zero_shot(images, class_captions(HELDOUT_TEMPLATES))
accuracy = float((predicted == labels).float().mean())
print(f"CLIP zero-shot on {len(labels)} held-out digits, held-out wordings: {accuracy:.3f} (chance 0.1)")

similarity = clip.similarity(images, [caption(d, HELDOUT_TEMPLATES[0]) for d in range(10)])
by_digit = torch.stack([similarity[labels == d].mean(0) for d in range(10)])  # (image digit, caption)
fig, ax = plt.subplots(figsize=(4.6, 4))
shown = ax.imshow(by_digit.numpy(), cmap="viridis")
ax.set_xticks(range(10), DIGIT_WORDS, rotation=90, fontsize=8)
ax.set_yticks(range(10))
ax.set_xlabel(f"caption, e.g. '{caption(7, HELDOUT_TEMPLATES[0])}'")
ax.set_ylabel("test images of digit")
fig.colorbar(shown, ax=ax, label="mean cosine similarity")
ax.set_title(f"zero-shot accuracy {accuracy:.2f}")
fig.tight_layout()

# %%
# **Text to digits.** The U-Net never saw a digit label, only CLIP's token sequence for the
# caption (cross-attention in its middle block) and the pooled caption vector (added to its noise
# embedding). Classifier-free guidance (scale 2) pushes the samples towards the caption; a
# classifier trained on the real digits says how many came out as the digit that was asked for,
# with a training wording and a wording the U-Net never saw.
prompts = {"a handwritten {word}": "training wording", "a sketch of the number {word}": "held-out wording"}
rows, asked = [], []
for template in prompts:
    captions = [caption(d, template) for d in range(10) for _ in range(4)]
    rows.append(pipe.sample(len(captions), captions, steps=30, guidance_scale=2.0, seed=0))
    asked.append(torch.arange(10).repeat_interleave(4))
classifier = DigitsClassifier(size=16)
fig, axes = plt.subplots(2, 1, figsize=(9, 3))
for ax, samples, digits, (template, kind) in zip(axes, rows, asked, prompts.items(), strict=True):
    recognised = float((torch.as_tensor(classifier.predict(samples.numpy())) == digits).float().mean())
    strip = torch.cat(list(samples[::2, 0]), dim=1)  # two per digit, side by side
    ax.imshow(strip.numpy(), cmap="gray_r", vmin=0, vmax=16)
    ax.axis("off")
    ax.set_title(f"'{template}' ({kind}), zero to nine: {recognised:.0%} recognised as asked", fontsize=9)
    print(f"{kind}: {recognised:.0%} of 40 samples classified as the digit in the caption")
fig.tight_layout()

# %%
# **What each U-Net level sees.** The U-Net halves the resolution at each level (16 -> 8 -> 4
# pixels) and doubles the channels, then climbs back up, with skip connections carrying each
# level's features across. A feature at a deeper level depends on a larger region of the input.
# The top row shows, for the centre feature of each level, how strongly it responds to each input
# pixel: the magnitude of the gradient of its squared norm, for a noisy "3" at t = 0.3 (the
# *effective* receptive field, Luo et al. 2016). Strictly every feature depends on every pixel
# (GroupNorm pools statistics over the image, and the middle block's self-attention sees all of
# it), but the effective field grows with depth: the first level responds to a few pixels, the
# deepest levels to most of the digit, which is why the coarse levels decide shape and the fine
# ones stroke detail. The bottom row shows the four most varied feature maps of each level.
denoiser = pipe.ema["denoiser"]
levels = [step for step in denoiser.down if not any(isinstance(m, Downsample) for m in step)]
levels.append(denoiser.mid)
names = [f"level {i} ({w} channels)" for i, w in enumerate(run["pipeline"]["denoiser"]["channels"])]
names.append("middle block")
features: list[torch.Tensor] = []
hooks = [step.register_forward_hook(lambda module, args, out: features.append(out)) for step in levels]

three = torch.stack([s.x for s in test])[labels == 3][:1]  # (1, 1, 16, 16) in data units
x0 = pipe.encoder.encode(three)
t = torch.tensor([0.3], dtype=torch.float64)
alpha, sigma = (float(v) for v in pipe.scheduler.process.alpha_sigma(t))
print(f"t = 0.3: alpha {alpha:.2f}, sigma {sigma:.2f}")
eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
x_t = (alpha * x0 + sigma * eps).requires_grad_()
model = pipe.denoiser_fn("a handwritten three", grad=True)
model(x_t, t)
for h in hooks:
    h.remove()

fig, axes = plt.subplots(2, len(levels) + 1, figsize=(11, 4.6))
axes[0, 0].imshow(x_t.detach()[0, 0].numpy(), cmap="gray_r")
axes[0, 0].set_title(f"input: a 3, noise {sigma / alpha:.2f}", fontsize=9)
axes[1, 0].imshow(three[0, 0].numpy(), cmap="gray_r")
axes[1, 0].set_title("the clean 3", fontsize=9)
for col, (h, name) in enumerate(zip(features, names, strict=True), start=1):
    centre = h[0, :, h.shape[2] // 2, h.shape[3] // 2]
    (grad,) = torch.autograd.grad(centre.square().sum(), x_t, retain_graph=True)
    axes[0, col].imshow(grad[0, 0].abs().numpy(), cmap="magma")
    axes[0, col].set_title(f"{name}\n{h.shape[2]} x {h.shape[3]}: receptive field", fontsize=8)
    maps = h[0, h[0].flatten(1).std(1).argsort(descending=True)[:4]].detach()  # the 4 most varied
    maps = torch.nn.functional.pad(maps, (0, 1, 0, 1), value=float("nan"))  # a blank line between
    tiles = torch.cat([torch.cat(list(maps[:2]), 1), torch.cat(list(maps[2:]), 1)], 0)[:-1, :-1]
    axes[1, col].imshow(tiles.numpy(), cmap="coolwarm")
    axes[1, col].set_title("four feature maps", fontsize=8)
for ax in axes.flat:
    ax.axis("off")
fig.tight_layout()
