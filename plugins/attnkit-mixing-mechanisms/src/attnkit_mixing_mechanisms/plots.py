"""The analysis' figures (matplotlib, Agg backend; small PNGs)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

from attnkit.figures import figure

__all__ = ["plot_accuracy", "plot_layer_sweep", "plot_lines"]

_STYLE = {
    "positional": ("tab:blue", "-", "o"),
    "lexical": ("tab:orange", "-", "s"),
    "reflexive": ("tab:green", "-", "^"),
    "no_effect": ("tab:gray", "--", "x"),
    "uniform": ("tab:purple", ":", "."),
    "other": ("tab:purple", ":", "."),
}


def plot_lines(
    path: Path, x: Sequence[float], lines: Mapping[str, Sequence[float]], *, title: str, xlabel: str, ylabel: str
) -> Path:
    """One line per mechanism (``lines``: name -> values over ``x``), y in [0, 1]."""
    with figure(path, figsize=(5.2, 3.4), dpi=100) as (_fig, ax):
        for name, ys in lines.items():
            color, ls, marker = _STYLE.get(name, ("black", "-", "o"))
            ax.plot(list(x), list(ys), ls=ls, marker=marker, color=color, label=name)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xticks(list(x))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(textwrap.fill(title, 62), fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return path


def plot_accuracy(
    path: Path, x: Sequence[int], acc: Sequence[float], top1: Sequence[float], chance: float, title: str
) -> Path:
    """Unedited binding accuracy per queried position, with chance."""
    with figure(path, figsize=(5.2, 3.4), dpi=100) as (_fig, ax):
        ax.plot(list(x), list(acc), marker="o", label="argmax over candidates")
        ax.plot(list(x), list(top1), marker="s", ls="--", label="full-vocabulary top-1")
        ax.axhline(chance, color="gray", ls=":", label=f"chance 1/n = {chance:.2f}")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xticks(list(x))
        ax.set_xlabel("position of the queried group")
        ax.set_ylabel("accuracy")
        ax.set_title(textwrap.fill(title, 62), fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return path


def plot_layer_sweep(path: Path, layers: Sequence[int], lines: Mapping[str, Sequence[float]], title: str) -> Path:
    """Share of patched answers per mechanism target, per patched layer."""
    return plot_lines(path, layers, lines, title=title, xlabel="patched layer", ylabel="share of patched answers")
