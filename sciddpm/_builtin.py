"""The built-in plugin: the core's own components, registered like any other.

Every factory and config is a lazy ``"module:attr"`` reference, so listing
them imports neither torch nor the component modules.
"""

from __future__ import annotations

from sciddpm.hooks import Component, hookimpl

_C = "sciddpm."


def _c(kind: str, name: str, ref: str, config: str, description: str, **kw: object) -> Component:
    return Component(kind, name, _C + ref, _C + config, description, **kw)  # type: ignore[arg-type]


@hookimpl
def sciddpm_components() -> list[Component]:
    return [
        _c("encoder", "identity", "encoders:Identity", "encoders:IdentityConfig", "Model space = data space"),
        _c(
            "encoder",
            "standardize",
            "encoders:Standardize",
            "encoders:StandardizeConfig",
            "Per-channel mean/std fitted on the data, inverted on decode",
        ),
        _c(
            "encoder",
            "vae",
            "vae:VAE",
            "vae:VAEConfig",
            "KL autoencoder for 1/2/3-D latent diffusion, trained in its own stage",
            capabilities=["trainable", "latent"],
        ),
        _c(
            "denoiser",
            "unet",
            "nn.unet:UNet",
            "nn.unet:UNetConfig",
            "U-Net for 1/2/3-D fields: GroupNorm res-blocks, FiLM, attention, any size",
        ),
        _c(
            "conditioner",
            "none",
            "conditioners:Unconditional",
            "conditioners:UnconditionalConfig",
            "No conditioning",
        ),
        _c(
            "conditioner",
            "class_label",
            "conditioners:ClassLabel",
            "conditioners:ClassLabelConfig",
            "Learned class embedding with a null class for guidance",
        ),
        _c(
            "conditioner",
            "clip",
            "clip:ClipConditioner",
            "clip:ClipConditionerConfig",
            "Captions through a frozen CLIP (trained on the data or pretrained): tokens + pooled vector",
            capabilities=["text"],
        ),
        _c(
            "scheduler",
            "ddpm",
            "schedulers:DDPM",
            "schedulers:DDPMConfig",
            "Ancestral sampling with the exact posterior variance (Ho et al. 2020)",
        ),
        _c(
            "scheduler",
            "ddim",
            "schedulers:DDIM",
            "schedulers:DDIMConfig",
            "Deterministic (eta=0) or stochastic DDIM (Song et al. 2021)",
        ),
        _c(
            "scheduler",
            "euler",
            "schedulers:Euler",
            "schedulers:EulerConfig",
            "Euler on the probability-flow ODE, any process (Karras et al. 2022)",
        ),
        _c(
            "scheduler",
            "euler_a",
            "schedulers:EulerAncestral",
            "schedulers:EulerAncestralConfig",
            "Ancestral Euler sampling (k-diffusion)",
        ),
        _c(
            "scheduler",
            "heun",
            "schedulers:Heun",
            "schedulers:HeunConfig",
            "Heun 2nd order with churn, 2 NFE per step (Karras et al. 2022, Alg. 2)",
        ),
        _c(
            "scheduler",
            "dpmpp_2m",
            "schedulers:DPMpp2M",
            "schedulers:DPMpp2MConfig",
            "DPM-Solver++(2M) multistep (Lu et al. 2022b)",
        ),
        _c(
            "scheduler",
            "dpmpp_3m",
            "schedulers:DPMpp3M",
            "schedulers:DPMpp3MConfig",
            "DPM-Solver++(3M) third-order multistep",
        ),
        _c(
            "scheduler",
            "dpmpp_2m_sde",
            "schedulers:DPMpp2MSDE",
            "schedulers:DPMpp2MSDEConfig",
            "SDE-DPM-Solver++(2M) (Lu et al. 2022b)",
        ),
        _c(
            "scheduler",
            "unipc",
            "schedulers:UniPC",
            "schedulers:UniPCConfig",
            "UniPC predictor-corrector, bh2 (Zhao et al. 2023)",
        ),
        _c(
            "data",
            "array",
            "data:ArraySource",
            "data:ArraySourceConfig",
            "In-memory numpy array or a .npy/.npz file",
        ),
        _c(
            "data",
            "digits",
            "data:DigitsSource",
            "data:DigitsSourceConfig",
            "scikit-learn's bundled 8x8 digits with labels, optionally upsampled",
        ),
        _c(
            "data",
            "digits_captions",
            "clip_data:CaptionedDigits",
            "clip_data:CaptionedDigitsConfig",
            "scikit-learn digits with captions from training or held-out templates",
        ),
        _c(
            "data",
            "skimage",
            "data:SkimagePatches",
            "data:SkimagePatchesConfig",
            "Random patches of a scikit-image bundled image (cell, immunohistochemistry, ...)",
        ),
        _c(
            "metric",
            "clip_score",
            "clip:CLIPScore",
            "clip:CLIPScoreConfig",
            "CLIP score of generated images against their captions (Hessel et al. 2021)",
        ),
    ]
