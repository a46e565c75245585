"""The networks, each readable top to bottom in one file.

- :mod:`~sciddpm.nn.unet`: the ``unet`` denoiser for 1/2/3-D fields (registered directly);
- :mod:`~sciddpm.nn.vae`: the KL autoencoder network behind the ``vae`` encoder;
- :mod:`~sciddpm.nn.clip`: CLIP's text and image towers in transformers' layout.
"""
