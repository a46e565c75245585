"""The built-in plugin: the core's own components, registered like any other.

Every factory and config is a lazy ``"module:attr"`` reference, so listing
them imports neither torch nor the component modules.
"""

from __future__ import annotations

from sciddpm.hooks import Component, hookimpl

_C = "sciddpm."


def _c(kind: str, name: str, ref: str, config: str, description: str, **kw: object) -> Component:
    return Component(kind, name, _C + ref, _C + config, description, **kw)  # type: ignore[arg-type]


#: (name, class, config, description) of the metrics in :mod:`sciddpm.components.sample_metrics`.
_SAMPLE_METRICS = (
    ("wasserstein", "WassersteinMetric", "NoOptions", "Per-channel W1 of the values over the reference std"),
    ("sliced_wasserstein", "SlicedWassersteinMetric", "SlicedConfig", "Sliced W1 of whole samples"),
    ("spectrum", "SpectrumMetric", "NoOptions", "Log-ratio distance of radially averaged power spectra"),
    ("frechet", "FrechetMetric", "FeatureMetricConfig", "Fréchet distance of pooled features"),
    ("kid", "KernelMetric", "FeatureMetricConfig", "Kernel (KID) distance of pooled features"),
    ("prdc", "PRDCMetric", "PRDCConfig", "Precision, recall, density, coverage (Naeem et al. 2020)"),
)


@hookimpl
def sciddpm_components() -> list[Component]:
    """The core's components as registration records (lazy references: listing imports none of them)."""
    return [
        _c(
            "encoder",
            "identity",
            "components.encoders:Identity",
            "components.encoders:IdentityConfig",
            "Model space = data space",
        ),
        _c(
            "encoder",
            "range",
            "components.encoders:Range",
            "components.encoders:RangeConfig",
            "A fixed range [lo, hi] mapped to [-1, 1], as DDPM/diffusers image models expect",
        ),
        _c(
            "encoder",
            "standardize",
            "components.encoders:Standardize",
            "components.encoders:StandardizeConfig",
            "Per-channel mean/std fitted on the data, inverted on decode",
        ),
        _c(
            "encoder",
            "vae",
            "components.vae:VAE",
            "components.vae:VAEConfig",
            "KL autoencoder for 1/2/3-D latent diffusion, trained in its own stage",
            capabilities=["trainable", "latent"],
            check_params={
                "channels": [8, 8],
                "groups": 4,
                "latent_channels": 2,
                "steps": 2,
                "batch_size": 4,
                "scale_samples": 8,
            },
        ),
        _c(
            "denoiser",
            "unet",
            "nn.unet:UNet",
            "nn.unet:UNetConfig",
            "U-Net for 1/2/3-D fields: GroupNorm res-blocks, FiLM, attention, any size",
            check_params={"channels": [8, 16], "groups": 4, "heads": 1, "blocks_per_level": 1},
        ),
        _c(
            "denoiser",
            "diffusers_unet",
            "components.diffusers_unet:DiffusersUNet",
            "components.diffusers_unet:DiffusersUNetConfig",
            "A pretrained diffusers UNet2DModel / UNet2DConditionModel folder, called as diffusers does",
            check_params=None,  # needs a diffusers folder (and the diffusers package)
        ),
        _c(
            "conditioner",
            "none",
            "components.conditioners:Unconditional",
            "components.conditioners:UnconditionalConfig",
            "No conditioning",
        ),
        _c(
            "conditioner",
            "class_label",
            "components.conditioners:ClassLabel",
            "components.conditioners:ClassLabelConfig",
            "Learned class embedding with a null class for guidance",
        ),
        _c(
            "conditioner",
            "clip",
            "components.clip:ClipConditioner",
            "components.clip:ClipConditionerConfig",
            "Captions through a frozen CLIP (trained on the data or pretrained): tokens + pooled vector",
            capabilities=["text"],
        ),
        _c(
            "scheduler",
            "ddpm",
            "diffusion.schedulers:DDPM",
            "diffusion.scheduler_configs:DDPMConfig",
            "Ancestral sampling with the exact posterior variance (Ho et al. 2020)",
        ),
        _c(
            "scheduler",
            "ddim",
            "diffusion.schedulers:DDIM",
            "diffusion.scheduler_configs:DDIMConfig",
            "Deterministic (eta=0) or stochastic DDIM (Song et al. 2021)",
        ),
        _c(
            "scheduler",
            "euler",
            "diffusion.schedulers:Euler",
            "diffusion.scheduler_configs:EulerConfig",
            "Euler on the probability-flow ODE, any process (Karras et al. 2022)",
        ),
        _c(
            "scheduler",
            "euler_a",
            "diffusion.schedulers:EulerAncestral",
            "diffusion.scheduler_configs:EulerAncestralConfig",
            "Ancestral Euler sampling (k-diffusion)",
        ),
        _c(
            "scheduler",
            "heun",
            "diffusion.schedulers:Heun",
            "diffusion.scheduler_configs:HeunConfig",
            "Heun 2nd order with churn, 2 NFE per step (Karras et al. 2022, Alg. 2)",
        ),
        _c(
            "scheduler",
            "dpmpp_2m",
            "diffusion.schedulers:DPMpp2M",
            "diffusion.scheduler_configs:DPMpp2MConfig",
            "DPM-Solver++(2M) multistep (Lu et al. 2022b)",
        ),
        _c(
            "scheduler",
            "dpmpp_3m",
            "diffusion.schedulers:DPMpp3M",
            "diffusion.scheduler_configs:DPMpp3MConfig",
            "DPM-Solver++(3M) third-order multistep",
        ),
        _c(
            "scheduler",
            "dpmpp_2m_sde",
            "diffusion.schedulers:DPMpp2MSDE",
            "diffusion.scheduler_configs:DPMpp2MSDEConfig",
            "SDE-DPM-Solver++(2M) (Lu et al. 2022b)",
        ),
        _c(
            "scheduler",
            "unipc",
            "diffusion.schedulers:UniPC",
            "diffusion.scheduler_configs:UniPCConfig",
            "UniPC predictor-corrector, bh2 (Zhao et al. 2023)",
        ),
        _c(
            "data",
            "array",
            "data.arrays:ArraySource",
            "data.arrays:ArraySourceConfig",
            "In-memory numpy array or a .npy/.npz file",
        ),
        _c(
            "data",
            "digits",
            "data.digits:DigitsSource",
            "data.digits:DigitsSourceConfig",
            "scikit-learn's bundled 8x8 digits with labels, optionally upsampled",
        ),
        _c(
            "data",
            "digits_captions",
            "data.captions:CaptionedDigits",
            "data.captions:CaptionedDigitsConfig",
            "scikit-learn digits with captions from training or held-out templates",
        ),
        _c(
            "data",
            "skimage",
            "data.images:SkimagePatches",
            "data.images:SkimagePatchesConfig",
            "Random patches of a scikit-image bundled image (cell, immunohistochemistry, ...)",
            check_params={"count": 8, "patch": 16},
        ),
        *(
            _c(
                "metric",
                name,
                f"components.sample_metrics:{cls}",
                f"components.sample_metrics:{config}",
                text,
            )
            for name, cls, config, text in _SAMPLE_METRICS
        ),
        _c(
            "metric",
            "clip_score",
            "components.metrics:CLIPScore",
            "components.metrics:CLIPScoreConfig",
            "CLIP score of generated images against their captions (Hessel et al. 2021)",
        ),
    ]
