"""
# From GANs and VAEs to diffusion

Before diffusion models, a variational autoencoder (VAE; Kingma & Welling 2014) was the simplest
generative model to train: an encoder maps an image to a small latent code, a decoder maps the
code back, and a KL term pulls the codes towards `N(0, I)` so that decoding random normal codes
gives new images. The weaker the KL term, the sharper the reconstructions, and the further the
codes drift from `N(0, I)`: random codes then decode to blur. A GAN (Goodfellow et al. 2014)
avoids blur by training its generator against a discriminator that tells real from generated,
but the two-player game is unstable and nothing makes the generator cover every mode of the data.

Latent diffusion (Rombach et al. 2022) keeps the VAE for what it does well, compressing, and lets
a diffusion model learn the distribution of its codes instead of assuming `N(0, I)`. Below, one
run trains both on the bundled digits (upsampled to 16 x 16): sciddpm's `vae` encoder (2 latent
channels at 8 x 8) and a class-conditional U-Net on its latents; about a minute on 2 CPU cores.
A small GAN written out in plain torch, trained on the same digits, stands beside them.
"""

# %%
import tempfile

import matplotlib.pyplot as plt
import numpy as np
import torch

from sciddpm import train
from sciddpm.registry import get_registry

run = {
    "data": {"type": "digits", "size": 16, "split": "train"},
    "pipeline": {
        "encoder": {"type": "vae", "channels": [16, 32], "latent_channels": 2, "beta": 1e-4, "steps": 300,
                    "batch_size": 32, "lr": 2e-3, "warmup_steps": 20, "seed": 0},
        "denoiser": {"type": "unet", "channels": [32, 64], "blocks_per_level": 1, "attention_levels": [],
                     "mid_attention": False, "prediction": "v"},
        "conditioner": {"type": "class_label", "dim": 32},
        "scheduler": {"type": "ddim", "schedule": "cosine"},
    },
    "train": {"steps": 400, "batch_size": 64, "lr": 2e-3, "warmup_steps": 40, "ema_decay": 0.99,
              "cond_drop": 0.1, "checkpoint_every": 0, "log_every": 100},
}  # fmt: skip
pipe = train(run, f"{tempfile.mkdtemp()}/latent_digits", progress=False)
vae = pipe.encoder
source = get_registry().build("data", run["data"])
x = torch.stack([source[i].x for i in range(len(source))])
labels = np.array([source[i].condition for i in range(len(source))])

# %%
# The autoencoder: originals (top) and their reconstructions through the 2 x 8 x 8 code.
with torch.no_grad():
    codes = vae.encode(x)
    reconstructions = vae.decode(codes)
fig, axes = plt.subplots(2, 10, figsize=(9, 2))
for col in range(10):
    for row, images in enumerate((x, reconstructions)):
        axes[row, col].imshow(images[col * 7, 0].numpy(), cmap="gray_r", vmin=0, vmax=16)
        axes[row, col].axis("off")
fig.suptitle(f"reconstructions: the latent is {tuple(codes.shape[1:])}, the data {tuple(x.shape[1:])}")
fig.tight_layout()

# %%
# The latent space: the codes' first two principal components, coloured by digit. Classes form
# regions, but nothing makes the codes as a whole a standard normal.
flat = codes.flatten(1).numpy()
flat = flat - flat.mean(0)
_, _, components = np.linalg.svd(flat, full_matrices=False)
projected = flat @ components[:2].T
fig, ax = plt.subplots(figsize=(5, 4))
points = ax.scatter(projected[:, 0], projected[:, 1], c=labels, cmap="tab10", s=5)
fig.colorbar(points, ax=ax, label="digit")
ax.set_title("VAE codes, first two principal components")
fig.tight_layout()

# %%
# A GAN on the same digits: two small fully connected networks and the non-saturating loss of
# Goodfellow et al. 2014 (Adam with beta1 = 0.5, as in DCGAN). Pixels are scaled to [-1, 1] for the
# generator's tanh. The two losses chase each other instead of falling, which is why a GAN's
# training curve says little about its samples.
torch.manual_seed(0)
real = x.flatten(1) / 8 - 1  # (N, 256) in [-1, 1]
latent_dim = 32
generator_net = torch.nn.Sequential(
    torch.nn.Linear(latent_dim, 256), torch.nn.LeakyReLU(0.2),
    torch.nn.Linear(256, 256), torch.nn.LeakyReLU(0.2),
    torch.nn.Linear(256, real.shape[1]), torch.nn.Tanh(),
)  # fmt: skip
discriminator = torch.nn.Sequential(
    torch.nn.Linear(real.shape[1], 256), torch.nn.LeakyReLU(0.2),
    torch.nn.Linear(256, 256), torch.nn.LeakyReLU(0.2),
    torch.nn.Linear(256, 1),
)  # fmt: skip
opt_g = torch.optim.Adam(generator_net.parameters(), lr=2e-4, betas=(0.5, 0.999))
opt_d = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
bce = torch.nn.functional.binary_cross_entropy_with_logits
gan_losses = []
for _ in range(3000):
    batch = real[torch.randint(len(real), (64,))]
    fake = generator_net(torch.randn(64, latent_dim))
    real_loss = bce(discriminator(batch), torch.ones(64, 1))
    d_loss = real_loss + bce(discriminator(fake.detach()), torch.zeros(64, 1))
    opt_d.zero_grad()
    d_loss.backward()
    opt_d.step()
    g_loss = bce(discriminator(fake), torch.ones(64, 1))  # non-saturating: make D call fakes real
    opt_g.zero_grad()
    g_loss.backward()
    opt_g.step()
    gan_losses.append((d_loss.item(), g_loss.item()))

fig, ax = plt.subplots(figsize=(6, 2.6))
ax.plot(np.array(gan_losses), lw=0.5)
ax.legend(["discriminator", "generator"], fontsize=8)
ax.set_xlabel("step")
ax.set_ylabel("loss")
ax.set_title("GAN training: two losses in a game, not a descent")
fig.tight_layout()


def gan_samples(n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` GAN samples ``(n, 1, 16, 16)`` in the data's units (0-16)."""
    with torch.no_grad():
        pixels = generator_net(torch.randn(n, latent_dim, generator=generator))
    return ((pixels + 1) * 8).reshape(n, *x.shape[1:])


# %%
# Generating: decode random N(0, I) codes (the VAE's own generative model), the GAN's samples, and
# samples of the diffusion model trained on the codes, decoded by the same decoder. The VAE's are
# blurred, the GAN's sharper-edged but speckled after fifteen seconds of training, the diffusion
# model's both sharp and smooth.
generator = torch.Generator().manual_seed(0)
with torch.no_grad():
    prior = vae.decode(torch.randn(10, *codes.shape[1:], generator=generator))
gan = gan_samples(10, generator)
diffusion = pipe.sample(10, list(range(10)), steps=30, seed=0)
fig, axes = plt.subplots(3, 10, figsize=(9, 3.3))
for col in range(10):
    for row, images in enumerate((prior, gan, diffusion)):
        axes[row, col].imshow(images[col, 0].numpy(), cmap="gray_r", vmin=0, vmax=16)
        axes[row, col].axis("off")
axes[0, 0].set_title("VAE: decoded N(0, I) codes", fontsize=8, loc="left")
axes[1, 0].set_title("GAN", fontsize=8, loc="left")
axes[2, 0].set_title("latent diffusion, digits 0-9", fontsize=8, loc="left")
fig.tight_layout()

# %%
# Which digits does each model draw? A logistic-regression classifier trained on the real digits
# labels 300 unconditional samples of each model (the diffusion model without a label: the null
# condition it learned from the 10 % of dropped labels). The data has about 10 % of each digit;
# a model that drops modes leaves some digits out, and the classifier's confidence says how
# digit-like the samples are.
from sklearn.linear_model import LogisticRegression  # noqa: E402

classifier = LogisticRegression(max_iter=2000).fit(x.flatten(1).numpy(), labels)
with torch.no_grad():
    drawn = {
        "VAE prior": vae.decode(torch.randn(300, *codes.shape[1:], generator=generator)),
        "GAN": gan_samples(300, generator),
    }  # fmt: skip
drawn["latent diffusion"] = pipe.sample(300, None, steps=20, seed=1)
print(f"{'model':<18}" + "".join(f"{d:>5}" for d in range(10)) + "  confidence")
print(f"{'data':<18}" + "".join(f"{np.mean(labels == d):5.0%}" for d in range(10)))
for name, images in drawn.items():
    probabilities = classifier.predict_proba(images.flatten(1).numpy())
    predicted = probabilities.argmax(1)
    shares = "".join(f"{np.mean(predicted == d):5.0%}" for d in range(10))
    print(f"{name:<18}{shares}  {probabilities.max(1).mean():.2f}")
