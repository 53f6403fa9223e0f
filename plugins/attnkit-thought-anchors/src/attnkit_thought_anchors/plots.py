"""The report's figures: a receiver head's sentence x sentence attention, the per-head
kurtosis map, and the KL effect per later sentence of suppressing the anchor against a random
span (with the full suppression matrix when it was computed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["plot_all"]


def _per_sentence(kl: torch.Tensor, spans: list[tuple[int, int]], after: int) -> list[float]:
    """Mean KL of each sentence's token distributions (rows s-1 .. e-2), NaN for sentences
    that do not lie wholly after token ``after``."""
    out = []
    for s, e in spans:
        out.append(float(kl[s - 1 : e - 1].mean()) if s >= after else float("nan"))
    return out


def plot_all(out_dir: Path, trace: Any, mean_k: torch.Tensor, heads: list[tuple[int, int]], full: bool) -> list[Path]:
    """Write the PNGs for the first trace and the kurtosis map; return their paths."""
    from attnkit.figures import figure

    figs: list[Path] = []
    n = len(trace.sentences)
    anchor = int(trace.extra["anchor"])
    # 1. sentence x sentence attention of the top receiver head, with the receiver scores
    layer, head = heads[0]
    m = trace.matrices[layer, head].clone()
    m[torch.triu(torch.ones(n, n, dtype=torch.bool), 1)] = float("nan")
    p = out_dir / "receiver_head_sentence_matrix.png"
    with figure(p, ncols=2, figsize=(10, 4.2), dpi=80, width_ratios=[1.2, 1]) as (fig, (ax0, ax1)):
        im = ax0.imshow(m.clamp_min(1e-5).log10().numpy(), cmap="viridis")
        ax0.axvline(anchor, color="r", lw=0.8, ls="--")
        ax0.set_title(f"sentence attention, receiver head L{layer}H{head} (log10)", fontsize=9)
        ax0.set_xlabel("attended sentence j")
        ax0.set_ylabel("attending sentence i")
        fig.colorbar(im, ax=ax0, fraction=0.046)
        rec = trace.extra["receiver_scores"].numpy()
        colors = ["tab:red" if j == anchor else "tab:blue" for j in range(n)]
        ax1.bar(range(n), rec, color=colors)
        ax1.set_xlabel("sentence j")
        ax1.set_ylabel("receiver score (mean vertical score)")
        ax1.set_title("receiver-head attention each sentence gets (red: anchor)", fontsize=9)
    figs.append(p)
    # 2. kurtosis per head
    p = out_dir / "head_kurtosis.png"
    with figure(p, figsize=(5, 6), dpi=80) as (fig, ax):
        im = ax.imshow(mean_k.numpy(), aspect="auto", cmap="magma")
        ax.scatter(
            [h for _, h in heads], [layer for layer, _ in heads], marker="x", c="cyan", s=18, label="receiver heads"
        )
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title("kurtosis of vertical scores (mean over traces)", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
        fig.colorbar(im, ax=ax, fraction=0.046)
    figs.append(p)
    # 3. KL per later sentence: anchor vs the first control span
    spans = trace.spans
    ctrl = trace.extra["controls"]
    ncols = 2 if full else 1
    p = out_dir / "kl_per_sentence.png"
    with figure(p, ncols=ncols, figsize=(5.5 * ncols, 4), dpi=80) as (fig, axes):
        ax = axes[0] if full else axes
        ea = spans[anchor][1]
        ax.semilogy(
            range(n),
            _per_sentence(trace.extra["kl_anchor"], spans, ea),
            "o-",
            c="tab:red",
            label=f"anchor (sentence {anchor}) suppressed",
        )
        if ctrl:
            ce = ctrl[0][1]
            ax.semilogy(
                range(n),
                _per_sentence(trace.extra["kl_controls"][0], spans, ce),
                "s--",
                c="0.4",
                label="random span, same length",
            )
        ax.axvline(anchor, color="tab:red", lw=0.6, ls=":")
        ax.set_xlabel("later sentence j")
        ax.set_ylabel("mean KL of sentence j's tokens (nats)")
        ax.set_title("KL to the unedited run per later sentence", fontsize=9)
        ax.legend(fontsize=7)
        if full:
            ax2 = axes[1]
            im = ax2.imshow(trace.extra["log_kl_matrix"].numpy(), cmap="inferno")
            ax2.set_xlabel("suppressed sentence i")
            ax2.set_ylabel("affected sentence j")
            ax2.set_title("suppression matrix: mean log(KL + 1e-9)", fontsize=9)
            fig.colorbar(im, ax=ax2, fraction=0.046)
    figs.append(p)
    return figs
