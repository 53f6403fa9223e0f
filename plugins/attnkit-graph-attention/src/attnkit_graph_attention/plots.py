"""The analysis' figures (matplotlib, Agg backend, small PNGs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from attnkit.figures import figure

__all__ = ["bars", "layer_lines"]


#: fixed margins: tight_layout measures every tick label, seconds per figure on a loaded machine
_MARGINS = {"left": 0.11, "right": 0.98, "bottom": 0.14, "top": 0.9}


def layer_lines(
    path: Path,
    series: Mapping[str, Sequence[float]],
    title: str,
    ylabel: str,
    *,
    log: bool = False,
    hline: float | None = None,
) -> Path:
    """One line per series over the layers."""
    with figure(path, figsize=(7, 3.6), layout=_MARGINS) as (_fig, ax):
        for name, ys in series.items():
            ax.plot(np.arange(len(ys)), np.asarray(ys, dtype=float), marker=".", label=name)
        if hline is not None:
            ax.axhline(hline, color="grey", lw=0.8, ls="--")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    return path


def bars(
    path: Path, groups: Sequence[str], series: Mapping[str, Sequence[float]], title: str, chance: Sequence[float]
) -> Path:
    """Grouped bars (one group per question kind, one bar per condition), chance marked per group."""
    with figure(path, figsize=(7, 3.6), layout=_MARGINS) as (_fig, ax):
        width = 0.8 / max(len(series), 1)
        x = np.arange(len(groups))
        for i, (name, ys) in enumerate(series.items()):
            ax.bar(x + i * width - 0.4 + width / 2, np.asarray(ys, dtype=float), width, label=name)
        for xi, c in zip(x, chance):
            ax.hlines(c, xi - 0.45, xi + 0.45, color="black", lw=1, ls=":")
        ax.set_xticks(x, groups)
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    return path
