"""The figures of an evaluation report: samples beside data, spectra, histograms, closest pairs.

matplotlib is imported when a figure is drawn. Every figure is written atomically, so an
interrupted run never leaves half a PNG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sciddpm.evaluation.features import check_pair
from sciddpm.evaluation.spectra import radial_power_spectrum

__all__ = ["save_figures"]


def save_figures(
    out: str | Path,
    generated: Any,
    reference: Any,
    report: Mapping[str, Any],
    training: Any = None,
    channel_names: Sequence[str] | None = None,
    units: Sequence[str | None] | None = None,
) -> list[Path]:
    """Write ``samples.png``, ``reference.png``, ``spectra.png``, ``histograms.png`` and, with a
    memorisation report and ``training``, ``closest_pairs.png`` into ``out``; returns the paths.

    ``generated`` and ``reference`` are ``(N, C, *spatial)`` in physical units; ``channel_names``
    and ``units`` label the channels. Raises ValueError for samples of different shapes.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from sciddpm.persistence import write_atomic
    from sciddpm.plot import save_grid

    g, r = check_pair(generated, reference)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    channels = g.shape[1]
    names = list(channel_names or [f"channel {c}" for c in range(channels)])
    unit = [f" [{u}]" if u else "" for u in (units or [None] * channels)]
    paths = []
    for name, data in (("samples.png", g), ("reference.png", r)):
        paths.append(
            write_atomic(
                out / name,
                lambda p, d=data: save_grid(d[:16].float(), p, channel_names=channel_names, units=units),
            )
        )

    def figure(name: str, draw: Any, panels: int) -> None:
        fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.2), squeeze=False)
        draw(axes[0])
        fig.tight_layout()
        paths.append(write_atomic(out / name, lambda p: fig.savefig(p, format="png", dpi=110)))
        plt.close(fig)

    def spectra(axes: Any) -> None:
        k, pg = radial_power_spectrum(g)
        _, pr = radial_power_spectrum(r)
        for c, ax in enumerate(axes):
            ax.loglog(k[1:], pr[c, 1:], label="reference", color="k")
            ax.loglog(k[1:], pg[c, 1:], label="generated", color="tab:red", linestyle="--")
            ax.set(title=names[c], xlabel="wavenumber (cycles / pixel)", ylabel="power")
        axes[0].legend()

    def histograms(axes: Any) -> None:
        for c, ax in enumerate(axes):
            a, b = g[:, c].numpy().ravel(), r[:, c].numpy().ravel()
            b = b[np.isfinite(b)]
            edges = np.linspace(*np.percentile(np.concatenate([a, b]), [0.1, 99.9]), 60)
            ax.hist(b, edges, density=True, histtype="step", color="k", label="reference")
            ax.hist(a, edges, density=True, histtype="step", color="tab:red", label="generated")
            ax.set(title=names[c], xlabel=f"value{unit[c]}", ylabel="density")
        axes[0].legend()

    figure("spectra.png", spectra, channels)
    figure("histograms.png", histograms, channels)
    pairs = (report.get("memorization") or {}).get("closest_pairs")
    if pairs and training is not None:
        t = check_pair(generated, training)[1]

        def closest(axes: Any) -> None:
            for ax, pair in zip(axes, pairs, strict=False):
                left, right = g[pair["generated"], 0], t[pair["training"], 0]
                image = np.concatenate([left.numpy(), right.numpy()], axis=-1)
                ax.imshow(image if image.ndim == 2 else image[image.shape[0] // 2], cmap="gray")
                ax.set(title=f"ratio {pair['ratio']:.2f}", xticks=[], yticks=[])
                ax.set_xlabel(f"generated {pair['generated']} | training {pair['training']}")

        if g.ndim >= 4:  # images: generated beside its nearest training sample
            figure("closest_pairs.png", closest, len(pairs))
    return paths
