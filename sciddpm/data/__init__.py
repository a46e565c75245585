"""The built-in data sources and batching.

- :mod:`~sciddpm.data.arrays`: ``array``, a numpy array or ``.npy`` / ``.npz`` file;
- :mod:`~sciddpm.data.digits`: ``digits``, scikit-learn's bundled handwritten digits;
- :mod:`~sciddpm.data.captions`: ``digits_captions``, the digits with captions (for CLIP);
- :mod:`~sciddpm.data.images`: ``skimage``, patches of a scikit-image bundled image;
- :mod:`~sciddpm.data.batching`: ``collate`` and ``spread_indices``;
- :mod:`~sciddpm.data.checks`: the validation and content hashes sources share.

Every source is map-style (``len``, ``source[i]`` -> :class:`~sciddpm.interfaces.Sample`) and keeps
values in physical units: nothing is rescaled or clipped.
"""

from sciddpm.data.arrays import ArraySource, ArraySourceConfig
from sciddpm.data.batching import collate, spread_indices
from sciddpm.data.captions import CaptionedDigits, CaptionedDigitsConfig
from sciddpm.data.digits import DigitsSource, DigitsSourceConfig, digits_arrays
from sciddpm.data.images import SKIMAGE_IMAGES, SkimagePatches, SkimagePatchesConfig

__all__ = [
    "SKIMAGE_IMAGES",
    "ArraySource",
    "ArraySourceConfig",
    "CaptionedDigits",
    "CaptionedDigitsConfig",
    "DigitsSource",
    "DigitsSourceConfig",
    "SkimagePatches",
    "SkimagePatchesConfig",
    "collate",
    "digits_arrays",
    "spread_indices",
]
