"""Sample grids for a quick look (matplotlib, imported only when called).

Display scaling happens here and only here: the data are never rescaled.
"""

from __future__ import annotations

from collections.abc import Sequence
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
) -> Path:
    """Write a grid of samples ``(N, C, *spatial)`` to a PNG.

    2-D samples show as images (3 channels as RGB, otherwise channel 0, each
    grid on one shared colour scale with a colour bar); 1-D samples as line
    plots; 3-D samples as their middle slice along the first spatial axis.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    x = np.asarray(samples.detach().cpu() if hasattr(samples, "detach") else samples, dtype=np.float64)
    if x.ndim not in (3, 4, 5):
        raise ValueError(f"save_grid expects (N, C, *spatial) with 1-3 spatial dims, got shape {x.shape}")
    if x.ndim == 5:
        x = x[:, :, x.shape[2] // 2]
    n = x.shape[0]
    ncol = nrow or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / ncol))
    fig, axes = plt.subplots(rows, ncol, figsize=(1.2 * ncol + 1, 1.2 * rows + 0.4), squeeze=False)
    finite = x[np.isfinite(x)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
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
        elif x.shape[1] == 3:
            ax.imshow(np.clip((x[i].transpose(1, 2, 0) - lo) / max(hi - lo, 1e-12), 0, 1))
        else:
            image = ax.imshow(x[i, 0], cmap=cmap, vmin=lo, vmax=hi)
        if row_labels is not None and i % ncol == 0 and i // ncol < len(row_labels):
            ax.set_ylabel(row_labels[i // ncol], rotation=0, ha="right", va="center")
    if image is not None:
        fig.colorbar(image, ax=axes, fraction=0.02, pad=0.01)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight", format="png")
    plt.close(fig)
    return path
