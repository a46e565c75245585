"""sciddpm-microscopy: fluorescence images and stacks (OME-TIFF, OME-Zarr) for sciddpm."""

__version__ = "0.1.0"
