"""Conformance checks of the Denoiser contract (see :class:`sciddpm.interfaces.Denoiser`).

The network gets seeded random weights first (:func:`~sciddpm.testing.modules.perturb`), so that
a zero-initialised output layer does not make every comparison of outputs vacuous.
"""

from __future__ import annotations

from typing import Any

import torch

from sciddpm.interfaces import PREDICTION_TYPES, Conditioning, Denoiser
from sciddpm.testing.modules import ODD_SIZES, module_of, perturb, reload, same
from sciddpm.testing.runner import CheckFailed, Subject, checks

__all__ = ["DENOISER_CHECKS"]

_PARTS = (("concat", "concat_channels"), ("vector", "vector_dim"), ("tokens", "token_dim"))


def _denoiser(subject: Subject, fresh: bool = True) -> Denoiser:
    net = module_of(subject.build() if fresh else subject.instance(), Denoiser)
    return perturb(net) if fresh else net


def _inputs(
    net: Denoiser, spatial: tuple[int, ...] | None = None, n: int = 3, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor, Conditioning]:
    """``x_in (n, in_channels, *spatial)``, noise inputs ``(n,)`` and every declared conditioning part."""
    g = torch.Generator().manual_seed(seed)
    spatial = spatial or ODD_SIZES[net.spatial_dims][0]
    x = torch.randn(n, net.in_channels, *spatial, generator=g)
    noise = torch.linspace(-1.0, 2.5, n)
    cond = Conditioning(
        concat=torch.randn(n, net.concat_channels, *spatial, generator=g) if net.concat_channels else None,
        vector=torch.randn(n, net.vector_dim, generator=g) if net.vector_dim else None,
        tokens=torch.randn(n, 5, net.token_dim, generator=g) if net.token_dim else None,
    )
    return x, noise, cond


def check_builds(subject: Subject) -> None:
    """The factory builds a Denoiser module declaring prediction type, spatial dims, channels and parts."""
    net = _denoiser(subject, fresh=False)
    if net.prediction_type not in PREDICTION_TYPES:
        raise CheckFailed(f"prediction_type is {net.prediction_type!r}; expected one of {PREDICTION_TYPES}")
    if net.spatial_dims not in (1, 2, 3):
        raise CheckFailed(f"spatial_dims is {net.spatial_dims!r}; expected 1, 2 or 3")
    for name in ("in_channels", "out_channels", "concat_channels", "vector_dim", "token_dim"):
        value = getattr(net, name, None)
        if not isinstance(value, int) or value < (
            1 if name.endswith("channels") and "concat" not in name else 0
        ):
            raise CheckFailed(f"{name} is {value!r}; declare it as a whole number")


def check_output_shape(subject: Subject) -> None:
    """The output is ``(B, out_channels, *spatial)`` for odd spatial sizes of the declared dimensionality."""
    net = _denoiser(subject).eval()
    with torch.no_grad():
        for spatial in ODD_SIZES[net.spatial_dims]:
            x, noise, cond = _inputs(net, spatial)
            out = net(x, noise, cond)
            expected = (len(x), net.out_channels, *spatial)
            if tuple(out.shape) != expected:
                raise CheckFailed(
                    f"input {tuple(x.shape)} gave output {tuple(out.shape)}; expected {expected}"
                )
            if not torch.isfinite(out).all():
                raise CheckFailed(f"input {tuple(x.shape)} gave NaN/inf outputs")


def check_conditioning_parts(subject: Subject) -> None:
    """Each declared part changes the output; a missing or undeclared part raises ValueError."""
    net = _denoiser(subject).eval()
    x, noise, cond = _inputs(net)
    with torch.no_grad():
        base = net(x, noise, cond)
        for part, width_name in _PARTS:
            given = getattr(cond, part)
            if given is not None:
                changed = net(x, noise, _replace(cond, part, given + 1.0))
                if torch.equal(changed, base):
                    raise CheckFailed(
                        f"changing cond.{part} leaves the output unchanged ({width_name} is set)"
                    )
                _expect_value_error(net, x, noise, _replace(cond, part, None), f"cond.{part} missing")
            else:
                extra = torch.randn(len(x), 4) if part == "vector" else torch.randn(len(x), 5, 4)
                if part == "concat":
                    extra = torch.randn(len(x), 1, *x.shape[2:])
                _expect_value_error(net, x, noise, _replace(cond, part, extra), f"an undeclared cond.{part}")
        if torch.equal(net(x, noise + 0.5, cond), base):
            raise CheckFailed("changing the noise input leaves the output unchanged")


def _replace(cond: Conditioning, part: str, value: torch.Tensor | None) -> Conditioning:
    parts: dict[str, Any] = {"concat": cond.concat, "vector": cond.vector, "tokens": cond.tokens}
    parts[part] = value
    return Conditioning(**parts)


def _expect_value_error(
    net: Denoiser, x: torch.Tensor, noise: torch.Tensor, cond: Conditioning, what: str
) -> None:
    try:
        net(x, noise, cond)
    except ValueError:
        return
    except Exception as exc:
        raise CheckFailed(
            f"{what} raised {type(exc).__name__}: {exc}; expected ValueError naming it"
        ) from None
    raise CheckFailed(f"{what} was accepted silently; expected ValueError naming the part")


def check_eval_deterministic(subject: Subject) -> None:
    """In eval mode the same inputs give the same output."""
    net = _denoiser(subject).eval()
    x, noise, cond = _inputs(net)
    with torch.no_grad():
        if not torch.equal(net(x, noise, cond), net(x, noise, cond)):
            raise CheckFailed("two eval-mode calls on the same inputs differ")


def check_batch_independent(subject: Subject) -> None:
    """In eval mode a sample's output does not depend on the rest of the batch (no batch statistics)."""
    net = _denoiser(subject).eval()
    x, noise, cond = _inputs(net)
    with torch.no_grad():
        batch = net(x, noise, cond)
        for i in range(len(x)):
            alone = net(x[i : i + 1], noise[i : i + 1], cond.select(slice(i, i + 1)))
            same(alone[0], batch[i], f"sample {i} alone vs in a batch of {len(x)}", rtol=1e-4)


def check_every_parameter_gets_gradient(subject: Subject) -> None:
    """A training loss reaches every parameter (no unused parameters, which break DDP and waste memory)."""
    net = _denoiser(subject).train()
    x, noise, cond = _inputs(net)
    net(x, noise, cond).square().mean().backward()
    missing = [name for name, p in net.named_parameters() if p.requires_grad and p.grad is None]
    if missing:
        raise CheckFailed(f"{len(missing)} parameter(s) get no gradient: {', '.join(missing[:5])}")


def check_save_load(subject: Subject) -> None:
    """The state dict saved and loaded into a fresh denoiser of the same config gives the same output."""
    net = _denoiser(subject).eval()
    fresh = reload(subject, net).eval()
    x, noise, cond = _inputs(net)
    with torch.no_grad():
        same(fresh(x, noise, cond), net(x, noise, cond), "output after save -> load")


def check_wrong_dims(subject: Subject) -> None:
    """An input with another number of spatial dims raises ValueError naming the shape."""
    net = _denoiser(subject)
    other = 2 if net.spatial_dims != 2 else 3
    wrong, noise, cond = _inputs(net, ODD_SIZES[other][0])
    _expect_value_error(net, wrong, noise, cond, f"a {other}-D input to a {net.spatial_dims}-D denoiser")


DENOISER_CHECKS = checks(
    "denoiser",
    check_builds,
    check_output_shape,
    check_conditioning_parts,
    check_eval_deterministic,
    check_batch_independent,
    check_every_parameter_gets_gradient,
    check_save_load,
    check_wrong_dims,
)
