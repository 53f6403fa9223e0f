"""The run-time object of ``graph_attention`` for ``attnkit.patch(model, analyses=[...])``: it
keeps the head-averaged prefill attention pattern of every layer (only the
``blocks.{l}.attn.hook_pattern@prefill`` sites are computed), and :meth:`result` reports the
per-layer mean column average (see :func:`attnkit_graph_attention.metrics.column_average`);
the graph metrics take :meth:`stacked` together with the graph's token layout.
"""

from __future__ import annotations

from typing import Any

import torch

from attnkit.hookspecs import hookimpl
from attnkit_graph_attention.params import GraphAttentionParams

__all__ = ["SITE", "HeadMeanPatterns", "build"]

SITE = "blocks.{l}.attn.hook_pattern@prefill"


class HeadMeanPatterns:
    """Head-averaged prefill patterns, ``(B, T, T)`` float64 per layer, of the last prefill."""

    name = "graph_attention"

    def __init__(self, params: GraphAttentionParams | None = None) -> None:
        self.params = params or GraphAttentionParams()
        self.layers: dict[int, torch.Tensor] = {}

    @hookimpl
    def attnkit_sites(self) -> list[str]:
        return [SITE]

    @hookimpl
    def attnkit_capture(self, site: str, layer: int | None, tensor: torch.Tensor, run: Any) -> None:
        if layer is None or run.phase != "prefill":
            return
        # Averaging over heads at once keeps one (T, T) per layer instead of (Hq, T, T).
        self.layers[layer] = tensor.detach().to("cpu", torch.float64).mean(1)

    def stacked(self, batch: int = 0) -> torch.Tensor:
        """``(L, T, T)`` float64 head-averaged patterns of sequence ``batch``, layer 0 first."""
        if not self.layers:
            raise RuntimeError("graph_attention captured no pattern yet (run a forward under attnkit.patch)")
        return torch.stack([self.layers[i][batch] for i in sorted(self.layers)])

    def result(self) -> dict[str, Any]:
        """Per-layer mean over keys of the column average of sequence 0 (empty before a run)."""
        if not self.layers:
            return {}
        from attnkit_graph_attention.metrics import column_average

        return {"mean column average": column_average(self.stacked()).mean(-1).tolist()}


def build(params: GraphAttentionParams | None = None) -> HeadMeanPatterns:
    return HeadMeanPatterns(params)
