"""The run-time object of ``preplan_anchor`` for ``attnkit.patch(model, analyses=[...])``:
it captures the prefill attention pattern of the chosen layers (the core's
:class:`~attnkit.Capture`) and :meth:`result` computes the metrics of the last prefill."""

from __future__ import annotations

from typing import Any

import torch

from attnkit.hookspecs import hookimpl
from attnkit.runtime.capture import Capture
from attnkit_preplan_anchor.params import PreplanAnchorParams

__all__ = ["PreplanAnchorCapture", "build", "pattern_sites"]


def pattern_sites(layers: list[int]) -> list[str]:
    """Prefill pattern sites of exactly these layers (only they pay for capture)."""
    return [f"blocks.{layer}.attn.hook_pattern@prefill" for layer in layers]


class PreplanAnchorCapture(Capture):
    """Capture of the prefill patterns, keeping only the layers the analysis uses.

    With ``params.layers`` empty the layers are the middle-third five, which need the model's
    layer count: without ``n_layers`` the object asks for every layer's prefill pattern and
    keeps those five when the first value arrives.
    """

    name = "preplan_anchor"

    def __init__(self, params: PreplanAnchorParams | None = None, n_layers: int | None = None) -> None:
        from attnkit_preplan_anchor.metrics import middle_layers

        self.params = params or PreplanAnchorParams()
        self.layers: list[int] | None = list(self.params.layers) or (
            middle_layers(n_layers) if n_layers is not None else None
        )
        sites = pattern_sites(self.layers) if self.layers else ["blocks.{l}.attn.hook_pattern@prefill"]
        super().__init__(sites)

    @hookimpl
    def attnkit_sites(self) -> list[str]:
        return self.patterns

    @hookimpl
    def attnkit_capture(self, site: str, layer: int | None, tensor: torch.Tensor, run: Any) -> None:
        if self.layers is None:
            from attnkit_preplan_anchor.metrics import middle_layers

            self.layers = middle_layers(int(run.n_layers))
        if layer is not None and layer not in self.layers:
            return
        super().attnkit_capture(site, layer, tensor, run)

    def stacked(self, batch: int = 0) -> torch.Tensor:
        """The last prefill's patterns of the kept layers, ``(L*H, T, T)`` float64."""
        if not self.values or not self.layers:
            raise RuntimeError("preplan_anchor captured no pattern yet (run a forward under attnkit.patch)")
        mats = [
            self.last(f"blocks.{layer}.attn.hook_pattern")[batch]
            for layer in self.layers
            if f"blocks.{layer}.attn.hook_pattern" in self
        ]
        return torch.cat(mats, 0).double()

    def result(self, response_start: int = 0) -> dict[str, Any]:
        """Metrics of the last prefill (every position a response token unless told)."""
        from attnkit_preplan_anchor.analysis import sequence_metrics

        if not self.values:
            return {}
        return sequence_metrics(self.stacked(), response_start, self.params).to_dict()


def build(params: PreplanAnchorParams | None = None) -> PreplanAnchorCapture:
    return PreplanAnchorCapture(params)
