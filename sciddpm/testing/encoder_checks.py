"""Conformance checks of the Encoder contract (see :class:`sciddpm.interfaces.Encoder`).

Encoders are fitted on a small in-memory source of the kit's own (channels of very different
physical scales, odd sizes, every spatial dimensionality the encoder declares), or on the
DataSource a test gives as ``inputs``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from sciddpm.interfaces import DataSource, Encoder
from sciddpm.testing.modules import ODD_SIZES, example_batch, module_of, reload, same
from sciddpm.testing.runner import CheckFailed, NotApplicable, Subject, checks

__all__ = ["ENCODER_CHECKS"]


def _declared(encoder: Any) -> Encoder:
    return module_of(encoder, Encoder)  # type: ignore[no-any-return]


def _cases(subject: Subject) -> Iterator[tuple[Encoder, torch.Tensor]]:
    """Fresh fitted encoders, each with a batch ``(3, C, *spatial)`` it should take."""
    from sciddpm.data.arrays import ArraySource

    if isinstance(subject.inputs, DataSource):
        encoder = _declared(subject.build())
        with torch.enable_grad():  # a trainable encoder's fit optimises; the checks run under no_grad
            encoder.fit(subject.inputs)
        yield encoder, torch.stack([subject.inputs[i].x for i in range(min(3, len(subject.inputs)))])
        return
    first = _declared(subject.instance())
    dims = (1, 2, 3) if first.spatial_dims is None else (first.spatial_dims,)
    channels = getattr(getattr(first, "config", None), "in_channels", None) or 2
    for d in dims:
        data = example_batch(channels, ODD_SIZES[d][0], n=12)
        encoder = _declared(subject.build())
        with torch.enable_grad():
            encoder.fit(ArraySource.from_array(data))
        yield encoder, data[:3]


def check_builds(subject: Subject) -> None:
    """The factory builds an Encoder module declaring ``spatial_dims`` None or 1-3."""
    encoder = _declared(subject.instance())
    if encoder.spatial_dims not in (None, 1, 2, 3):
        raise CheckFailed(f"spatial_dims is {encoder.spatial_dims!r}; expected None, 1, 2 or 3")


def check_encode_shape(subject: Subject) -> None:
    """``encode(x)`` is ``(B, *latent_shape((C, *spatial)))`` for odd sizes in every declared
    dimensionality.
    """
    with torch.no_grad():
        for encoder, x in _cases(subject):
            expected = (len(x), *encoder.latent_shape(tuple(x.shape[1:])))
            z = encoder.encode(x)
            if tuple(z.shape) != expected:
                raise CheckFailed(
                    f"encode of a batch {tuple(x.shape)} gave {tuple(z.shape)}; latent_shape says {expected}"
                )


def check_decode_shape(subject: Subject) -> None:
    """``decode(encode(x))`` is ``(B, C, *spatial')`` with ``spatial' >= spatial`` on every axis."""
    with torch.no_grad():
        for encoder, x in _cases(subject):
            y = encoder.decode(encoder.encode(x))
            if (
                y.shape[:2] != x.shape[:2]
                or y.ndim != x.ndim
                or any(a < b for a, b in zip(y.shape[2:], x.shape[2:], strict=True))
            ):
                raise CheckFailed(f"decode(encode(x)) of {tuple(x.shape)} has shape {tuple(y.shape)}")


def check_round_trip(subject: Subject) -> None:
    """Without a training stage, ``decode(encode(x)) == x`` up to float rounding (physical units back)."""
    if _declared(subject.instance()).trainable:
        raise NotApplicable("a trainable encoder reconstructs only approximately")
    with torch.no_grad():
        for encoder, x in _cases(subject):
            y = encoder.decode(encoder.encode(x))[(..., *(slice(0, n) for n in x.shape[2:]))]
            for c in range(x.shape[1]):  # per channel: the channels' scales differ by 1e5
                same(y[:, c], x[:, c], f"decode(encode(x)) of channel {c}", rtol=1e-4)


def check_deterministic(subject: Subject) -> None:
    """The same input encodes to the same latents (no sampling in ``encode``)."""
    with torch.no_grad():
        for encoder, x in _cases(subject):
            if not torch.equal(encoder.encode(x), encoder.encode(x)):
                raise CheckFailed("encode(x) differs between two calls on the same x")


def check_fit_before_use(subject: Subject) -> None:
    """An encoder with a ``fit`` raises RuntimeError when used before it (never silently unfitted)."""
    encoder = _declared(subject.build())
    if type(encoder).fit is Encoder.fit:
        raise NotApplicable("the encoder has no fit (nothing to estimate)")
    channels = getattr(getattr(encoder, "config", None), "in_channels", None) or 2
    dims = encoder.spatial_dims or 2
    try:
        encoder.encode(example_batch(channels, ODD_SIZES[dims][0]))
    except RuntimeError:
        return
    except Exception as exc:
        raise CheckFailed(
            f"encode before fit raised {type(exc).__name__}: {exc}; expected RuntimeError"
        ) from None
    raise CheckFailed("encode before fit returned latents; it must raise RuntimeError")


def check_save_load(subject: Subject) -> None:
    """The fitted state survives save -> load into a fresh encoder (same latents, same decode)."""
    with torch.no_grad():
        for encoder, x in _cases(subject):
            fresh = reload(subject, encoder)
            same(fresh.encode(x), encoder.encode(x), "encode after save -> load")
            z = encoder.encode(x)
            same(fresh.decode(z), encoder.decode(z), "decode after save -> load")


def check_wrong_channels(subject: Subject) -> None:
    """A batch with a channel count the encoder was not fitted on raises ValueError (not another error)."""
    with torch.no_grad():
        for encoder, x in _cases(subject):
            wrong = torch.cat([x, x[:, :1]], dim=1)
            try:
                encoder.encode(wrong)
            except ValueError:
                continue
            except Exception as exc:
                raise CheckFailed(
                    f"encode of {tuple(wrong.shape)} after fitting on {x.shape[1]} channels raised "
                    f"{type(exc).__name__}: {exc}; expected ValueError naming the shape"
                ) from None
            raise NotApplicable("the encoder takes any channel count")


def check_wrong_dims(subject: Subject) -> None:
    """An encoder built for one spatial dimensionality raises ValueError for data of another."""
    encoder = _declared(subject.instance())
    if encoder.spatial_dims is None:
        raise NotApplicable("spatial_dims is None: the encoder takes 1-, 2- and 3-D data")
    for fitted, x in _cases(subject):
        other = 2 if encoder.spatial_dims != 2 else 3
        wrong = example_batch(x.shape[1], ODD_SIZES[other][0])
        try:
            with torch.no_grad():
                fitted.encode(wrong)
        except ValueError:
            return
        except Exception as exc:
            raise CheckFailed(
                f"encode of {other}-D data {tuple(wrong.shape)} raised {type(exc).__name__}: {exc}; expected "
                "ValueError naming the shape"
            ) from None
        raise CheckFailed(
            f"encode of {other}-D data {tuple(wrong.shape)} by a {encoder.spatial_dims}-D encoder was "
            "accepted; raise ValueError naming the shape"
        )


ENCODER_CHECKS = checks(
    "encoder",
    check_builds,
    check_encode_shape,
    check_decode_shape,
    check_round_trip,
    check_deterministic,
    check_fit_before_use,
    check_save_load,
    check_wrong_channels,
    check_wrong_dims,
)
