"""sciddpm-climate: gridded climate and weather fields on xarray/zarr for sciddpm."""

__version__ = "0.1.0"
