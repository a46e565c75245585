"""What the module checks share: seeded example data, random weights and a save -> load round trip.

The round trip goes through sciddpm's one persistence format (safetensors, checked name by name
and shape by shape), as a pipeline's save and load do, into a fresh instance of the same config.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from sciddpm import persistence
from sciddpm.testing.runner import CheckFailed, Subject

__all__ = ["ODD_SIZES", "example_batch", "module_of", "perturb", "reload", "same"]

#: Odd spatial sizes per dimensionality: the sizes a strided network most often gets wrong.
ODD_SIZES: dict[int, tuple[tuple[int, ...], ...]] = {
    1: ((13,), (17,)),
    2: ((9, 11), (7, 5)),
    3: ((5, 7, 9), (3, 5, 3)),
}


def example_batch(channels: int, spatial: tuple[int, ...], n: int = 3, seed: int = 0) -> torch.Tensor:
    """``(n, channels, *spatial)`` in physical units of very different scales per channel.

    Channel 0 looks like a temperature in kelvin (280 +- 15), channel 1 like a small positive
    concentration (~1e-3), the rest like unit-scale fields: a component that assumes data in
    [0, 1] or one scale for all channels shows it.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, *spatial, generator=g)
    scales = torch.ones(channels)
    offsets = torch.zeros(channels)
    scales[0], offsets[0] = 15.0, 280.0
    if channels > 1:
        x[:, 1] = x[:, 1].exp()
        scales[1] = 1e-3
    view = (1, channels) + (1,) * len(spatial)
    return x * scales.view(view) + offsets.view(view)


def module_of(component: Any, interface: type) -> Any:
    """``component`` when it implements ``interface`` and subclasses ``torch.nn.Module``, else CheckFailed.

    Encoders, denoisers and conditioners must be modules: their state is saved with the pipeline.
    """
    if not isinstance(component, interface) or not isinstance(component, torch.nn.Module):
        raise CheckFailed(
            f"built a {type(component).__name__}; it must subclass sciddpm.interfaces.{interface.__name__} "
            "and torch.nn.Module"
        )
    return component


@torch.no_grad()
def perturb(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Add seeded noise to every floating parameter, so zero-initialised layers pass signal on.

    A freshly built U-Net's last layer is zero (a common initialisation), which would make every
    output 0 and every output comparison vacuous. Returns ``module``.
    """
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        if p.is_floating_point():
            p.add_(scale * torch.randn(p.shape, generator=g).to(p))
    return module


def reload(subject: Subject, module: torch.nn.Module) -> Any:
    """A fresh ``subject.build()`` with ``module``'s state saved as safetensors and loaded back.

    Raises CheckFailed, naming the tensor, when the state cannot be saved (shared tensors) or
    does not load into a fresh instance of the same config.
    """
    state = module.state_dict()
    fresh = subject.build()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            persistence.save(
                tmp, "component.json", {"component": subject.label}, {"state.safetensors": state}
            )
        except Exception as exc:
            raise CheckFailed(f"the state dict cannot be saved as safetensors: {exc}") from None
        tensors = persistence.read_tensors(Path(tmp) / "state.safetensors", None)
    try:
        fresh.load_state_dict(tensors)
    except Exception as exc:
        raise CheckFailed(f"a saved state dict does not load into a fresh instance: {exc}") from None
    return fresh


def same(a: torch.Tensor, b: torch.Tensor, what: str, rtol: float = 1e-5) -> None:
    """Raise CheckFailed naming ``what`` unless ``a`` and ``b`` have one shape and agree to ``rtol``."""
    if a.shape != b.shape:
        raise CheckFailed(f"{what}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
    scale = float(b.abs().max()) if b.numel() else 0.0
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    if not diff <= rtol * max(scale, 1e-12) + 1e-7:
        raise CheckFailed(f"{what}: max difference {diff:.3g} (values up to {scale:.3g})")
