"""Sample grids: one channel on one scale, several physical channels each on their own, RGB if declared."""

from __future__ import annotations

import matplotlib.figure
import pytest
import torch

from sciddpm.plot import save_grid


@pytest.fixture
def figures(monkeypatch):
    seen = []
    save = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(
        matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: (seen.append(fig), save(fig, *a, **k))
    )
    return seen


def _bars(fig) -> list[str]:
    return [ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"]


def test_channels_get_their_own_scale_name_and_unit(tmp_path, figures) -> None:
    x = torch.randn(2, 3, 6, 8) + torch.tensor([280.0, 0.0, 5.0]).view(1, 3, 1, 1)
    save_grid(x, tmp_path / "a.png", channel_names=["tas", "pr", "tos"], units=["K", None, "K"])
    assert _bars(figures[-1]) == ["tas [K]", "pr", "tos [K]"]
    save_grid(x, tmp_path / "b.png")  # unnamed channels: still one column and bar each
    assert _bars(figures[-1]) == ["channel 0", "channel 1", "channel 2"]
    save_grid(x, tmp_path / "c.png", rgb=True)  # a colour image the source declares RGB
    assert _bars(figures[-1]) == []
    save_grid(x[:, :1], tmp_path / "d.png", channel_names=["tas"], units=["K"])
    assert _bars(figures[-1]) == ["tas [K]"]


def test_bad_names_and_rgb_are_refused(tmp_path) -> None:
    x = torch.zeros(1, 2, 4, 4)
    with pytest.raises(ValueError, match="channel_names has 3 entries for 2 channels"):
        save_grid(x, tmp_path / "a.png", channel_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="rgb=True needs 3 channels, got 2"):
        save_grid(x, tmp_path / "a.png", rgb=True)
