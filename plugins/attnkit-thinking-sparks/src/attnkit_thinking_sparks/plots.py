"""Layer x head heatmaps of importance and of its change (matplotlib, Agg backend, small PNGs)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from attnkit.figures import figure

__all__ = ["effect_heatmap", "importance_heatmaps"]


def _annotate(ax, values: torch.Tensor, fmt: str) -> None:  # type: ignore[no-untyped-def]
    n_layers, n_heads = values.shape
    if n_layers * n_heads > 64:
        return
    for ly in range(n_layers):
        for h in range(n_heads):
            ax.text(h, ly, format(float(values[ly, h]), fmt), ha="center", va="center", fontsize=7)


def importance_heatmaps(
    maps: Sequence[torch.Tensor],
    titles: Sequence[str],
    path: Path,
    *,
    suptitle: str,
    marks: Sequence[tuple[int, int]] = (),
) -> Path:
    """One heatmap per importance map ``(L, H)`` side by side, one shared colour scale; heads
    in ``marks`` get a box."""
    n = len(maps)
    n_layers, n_heads = maps[0].shape
    wide = n_heads > 12
    panel_w = 6.5 if wide else 1.0 + 0.45 * n_heads
    with figure(
        path,
        ncols=n,
        figsize=(panel_w * n + 1.2, 1.3 + (0.45 if n_layers <= 8 else 0.2) * n_layers),
        layout="constrained",
        squeeze=False,
    ) as (fig, axes):
        from matplotlib.patches import Rectangle

        vmax = max(float(torch.nan_to_num(m).max()) for m in maps) or 1.0
        for ax, m, title in zip(axes[0], maps, titles):
            im = ax.imshow(m.numpy(), cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("head")
            if ax is axes[0][0]:
                ax.set_ylabel("layer")
            ax.set_xticks(range(n_heads) if not wide else range(0, n_heads, 2))
            if not wide:
                ax.set_yticks(range(n_layers))
            _annotate(ax, m, ".2f")
            for ly, h in marks:
                ax.add_patch(Rectangle((h - 0.5, ly - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
        fig.colorbar(im, ax=list(axes[0]), shrink=0.9, label="share of |dL|")
        fig.suptitle(suptitle, fontsize=10)
    return path


def effect_heatmap(e: torch.Tensor, path: Path, *, title: str, marks: Sequence[tuple[int, int]] = ()) -> Path:
    """Heatmap of ``E = (I_post - I_pre) / (I_post + I_pre)`` on a diverging [-1, 1] scale."""
    n_layers, n_heads = e.shape
    with figure(path, figsize=(2.8 + 0.45 * n_heads, 1.4 + 0.45 * n_layers), layout="constrained") as (fig, ax):
        from matplotlib.patches import Rectangle

        im = ax.imshow(e.numpy(), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(n_heads))
        ax.set_yticks(range(n_layers))
        _annotate(ax, e, "+.2f")
        for ly, h in marks:
            ax.add_patch(Rectangle((h - 0.5, ly - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.5))
        fig.colorbar(im, ax=ax, label="E (post vs base)")
        ax.set_title(title, fontsize=9)
    return path
