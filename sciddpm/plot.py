"""Sample grids for a quick look (matplotlib, imported only when called).

Display scaling happens here and only here: the data are never rescaled. A field of several
physical channels (temperature, precipitation, a fluorescence marker) is drawn one panel per
channel with its own colour bar in its own units; only data the source declares RGB is drawn as
a colour composite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["save_grid"]


def save_grid(
    samples: Any,
    path: str | Path,
    *,
    nrow: int | None = None,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    cmap: str = "gray",
    channel_names: Sequence[str] | None = None,
    units: Sequence[str | None] | None = None,
    rgb: bool = False,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write samples ``(N, C, *spatial)`` (physical units) to a PNG; returns ``path``.

    One channel: a grid of ``nrow`` samples per row on one shared colour scale with a colour bar.
    Several channels: a row per sample and a column per channel, each channel on its own colour
    scale with a colour bar labelled with its name and unit (``channel_names``, ``units``: one
    per channel). ``rgb`` (three channels the source declares red, green, blue) draws colour
    composites instead, scaled to the samples' range. 1-D samples are line plots (one line per
    channel), 3-D samples their middle slice along the first spatial axis. Raises ValueError for
    another rank or for names/units that do not match the channels. ``provenance`` (a
    :func:`sciddpm.provenance.record`) is written into the PNG's text chunks.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    x = np.asarray(samples.detach().cpu() if hasattr(samples, "detach") else samples, dtype=np.float64)
    if x.ndim not in (3, 4, 5):
        raise ValueError(f"save_grid expects (N, C, *spatial) with 1-3 spatial dims, got shape {x.shape}")
    channels = x.shape[1]
    for name, values in (("channel_names", channel_names), ("units", units)):
        if values is not None and len(values) != channels:
            raise ValueError(f"{name} has {len(values)} entries for {channels} channels")
    if rgb and channels != 3:
        raise ValueError(f"rgb=True needs 3 channels, got {channels}")
    if x.ndim == 5:
        x = x[:, :, x.shape[2] // 2]
    if x.ndim == 4 and channels > 1 and not rgb:
        fig = _per_channel(plt, x, cmap, channel_names, units, row_labels)
    else:
        fig = _grid(plt, x, nrow, row_labels, cmap, rgb, _label(channel_names, units, 0))
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from sciddpm.provenance import png_text

    metadata = png_text(provenance) if provenance is not None else None
    fig.savefig(path, dpi=100, bbox_inches="tight", format="png", metadata=metadata)
    plt.close(fig)
    return path


def _label(names: Sequence[str] | None, units: Sequence[str | None] | None, c: int) -> str | None:
    name = names[c] if names is not None else None
    unit = units[c] if units is not None else None
    if name is None and unit is None:
        return None
    return f"{name or f'channel {c}'}" + (f" [{unit}]" if unit else "")


def _range(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)


def _grid(
    plt: Any, x: np.ndarray, nrow: int | None, row_labels: Any, cmap: str, rgb: bool, label: str | None
) -> Any:
    """``nrow`` samples per row on one colour scale: images, RGB composites or line plots."""
    n = x.shape[0]
    ncol = nrow or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / ncol))
    fig, axes = plt.subplots(rows, ncol, figsize=(1.2 * ncol + 1, 1.2 * rows + 0.4), squeeze=False)
    lo, hi = _range(x)
    image = None
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        if x.ndim == 3:
            for channel in x[i]:
                ax.plot(channel, lw=0.8)
            ax.set_ylim(lo, hi)
        elif rgb:
            ax.imshow(np.clip((x[i].transpose(1, 2, 0) - lo) / max(hi - lo, 1e-12), 0, 1))
        else:
            image = ax.imshow(x[i, 0], cmap=cmap, vmin=lo, vmax=hi)
        if row_labels is not None and i % ncol == 0 and i // ncol < len(row_labels):
            ax.set_ylabel(row_labels[i // ncol], rotation=0, ha="right", va="center")
    if image is not None:
        bar = fig.colorbar(image, ax=axes, fraction=0.02, pad=0.01)
        if label:
            bar.set_label(label)
    return fig


def _per_channel(
    plt: Any, x: np.ndarray, cmap: str, names: Any, units: Any, row_labels: Sequence[str] | None
) -> Any:
    """A row per sample, a column per channel, each channel on its own scale with a labelled bar."""
    n, channels = x.shape[:2]
    cmap = "viridis" if cmap == "gray" else cmap  # grey suits digits; physical fields read better in colour
    fig, axes = plt.subplots(
        n, channels, figsize=(2.6 * channels + 0.5, 1.6 * n + 0.6), squeeze=False, layout="constrained"
    )
    for c in range(channels):
        lo, hi = _range(x[:, c])
        for i in range(n):
            ax = axes[i, c]
            image = ax.imshow(x[i, c], cmap=cmap, vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0 and row_labels is not None and i < len(row_labels):
                ax.set_ylabel(row_labels[i], rotation=0, ha="right", va="center")
        bar = fig.colorbar(image, ax=axes[:, c], shrink=0.8)
        bar.set_label(_label(names, units, c) or f"channel {c}")
        axes[0, c].set_title(names[c] if names is not None else f"channel {c}", fontsize=9)
    return fig
