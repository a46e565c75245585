"""The built-in components, registered through the same hook as any plugin's (:mod:`sciddpm.builtin`).

- :mod:`~sciddpm.components.encoders`: ``identity`` and ``standardize`` (fitted per-channel);
- :mod:`~sciddpm.components.vae`: ``vae``, the KL autoencoder for latent diffusion, with its stage;
- :mod:`~sciddpm.components.conditioners`: ``none`` and ``class_label``;
- :mod:`~sciddpm.components.clip`: the ``clip`` conditioner and the ``clip_score`` metric;
- :mod:`~sciddpm.components.text`: tokenizers for the text tower;
- :mod:`~sciddpm.components.metrics`: the digits classifier that scores the demo.

The networks themselves (U-Net denoiser, autoencoder, CLIP towers) are in :mod:`sciddpm.nn`.
"""
