"""Run-time objects of ``act`` for ``attnkit.patch(model, analyses=[...])``.

* :class:`AttentionCalibration` edits ``blocks.{l}.attn.hook_pattern`` of the chosen heads at
  prefill: per sequence and head it finds the sinks (data-dependent, so the core's
  fixed-span :class:`~attnkit.runtime.PatternRedistribute` cannot express it) and
  calibrates them (:func:`attnkit_act.sinks.calibrate`).
* :class:`SinkScan` only observes: per layer and head, how many hidden sinks each sequence
  has under both rules, and how often the first token is *not* above the threshold (the
  case where the released ``indices[1:]`` spares a hidden sink instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from attnkit.hookspecs import hookimpl
from attnkit_act.params import ActParams, parse_heads
from attnkit_act.sinks import calibrate, detect_sinks, first_real_key, real_keys, sink_candidates

__all__ = ["AttentionCalibration", "ScanResult", "SinkScan", "build"]


def _site(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern@prefill"


class AttentionCalibration:
    """Calibrate the attention sinks of chosen heads (ACT) at prefill.

    :param heads: ``{layer: [head, ...]}`` or ``"3:0,5;7:2"``.
    :param params: sink rule, threshold, ``beta`` and spared sink (:class:`ActParams`).
    """

    name = "act"

    def __init__(self, heads: Any, params: ActParams | None = None) -> None:
        self.params = params or ActParams()
        self.heads = parse_heads(heads)
        #: per layer: summed number of calibrated sinks per edited head, and edited rows
        self.sinks_seen: dict[int, int] = {}
        self.sequences: int = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(heads={self.heads}, beta={self.params.beta}, rule={self.params.rule!r})"

    @hookimpl
    def attnkit_sites(self) -> list[str]:
        return [_site(layer) for layer in self.heads]

    @hookimpl
    def attnkit_edit(self, site: str, layer: int | None, tensor: torch.Tensor) -> torch.Tensor | None:
        if layer is None or layer not in self.heads or not site.endswith("hook_pattern"):
            return None
        heads = list(self.heads[layer])
        if max(heads) >= tensor.shape[1]:
            raise ValueError(
                f"heads {[h for h in heads if h >= tensor.shape[1]]} do not exist in block {layer}, "
                f"which has {tensor.shape[1]} query heads"
            )
        p = self.params
        first = first_real_key(tensor)  # from every head: padding is the same for all
        sel = tensor[:, heads]
        sinks = detect_sinks(
            sel, rule=p.rule, thres=p.thres, alpha=p.alpha, spare=p.spare, min_queries=p.min_queries, first=first
        )
        out = tensor.clone()
        out[:, heads] = calibrate(sel, sinks, p.beta)
        self.sinks_seen[layer] = self.sinks_seen.get(layer, 0) + int(sinks.sum())
        if layer == min(self.heads):
            self.sequences += int(tensor.shape[0])
        return out

    def result(self) -> dict[str, Any]:
        """Calibrated sinks per layer (summed over sequences and edited heads)."""
        return {"sequences": self.sequences, "sinks": {str(k): v for k, v in sorted(self.sinks_seen.items())}}


@dataclass(frozen=True)
class ScanResult:
    """What :class:`SinkScan` found, per layer and head (``(L, H)`` float64 tensors).

    :ivar hidden_abs: mean number of hidden sinks per sequence (absolute rule, first token
        spared).
    :ivar hidden_rel: the same under the relative ``alpha / N`` rule.
    :ivar first_is_sink: share of sequences whose first token is above the absolute threshold.
    :ivar escaped: share of sequences where the released ``indices[1:]`` spares a hidden sink
        (the first token is not above the threshold but some later token is).
    :ivar sequences: sequences scanned per layer.
    """

    hidden_abs: torch.Tensor
    hidden_rel: torch.Tensor
    first_is_sink: torch.Tensor
    escaped: torch.Tensor
    sequences: torch.Tensor

    def to_dict(self) -> dict[str, Any]:
        def grid(x: torch.Tensor) -> list[list[float]]:
            return [[round(float(v), 6) for v in row] for row in x]

        return {
            "hidden_abs": grid(self.hidden_abs),
            "hidden_rel": grid(self.hidden_rel),
            "first_is_sink": grid(self.first_is_sink),
            "escaped": grid(self.escaped),
            "sequences": [int(v) for v in self.sequences],
        }


class SinkScan:
    """Observe every layer's prefill pattern and count hidden sinks per head.

    :param params: rules and thresholds (:class:`ActParams`).
    :param keep: also keep each forward's ``(B, H, Tk)`` sink masks (absolute rule, first
        token spared) per layer in :attr:`masks`, to map sinks to the tokens they sit on.
    """

    name = "act"

    def __init__(self, params: ActParams | None = None, keep: bool = False) -> None:
        self.params = params or ActParams()
        self.keep = keep
        self.masks: dict[int, list[torch.Tensor]] = {}
        self._sums: dict[int, torch.Tensor] = {}  # (4, H): abs, rel, first_is_sink, escaped
        self._seqs: dict[int, int] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rule={self.params.rule!r}, thres={self.params.thres}, alpha={self.params.alpha})"

    @hookimpl
    def attnkit_sites(self) -> list[str]:
        return ["blocks.{l}.attn.hook_pattern@prefill"]

    @hookimpl
    def attnkit_capture(self, site: str, layer: int | None, tensor: torch.Tensor) -> None:
        if layer is None or not site.endswith("hook_pattern"):
            return
        p = self.params
        pat = tensor.detach()
        first = first_real_key(pat)
        kw = {"thres": p.thres, "alpha": p.alpha, "min_queries": p.min_queries, "first": first}
        hid_abs = detect_sinks(pat, rule="absolute", spare="first_token", **kw)
        hid_rel = detect_sinks(pat, rule="relative", spare="first_token", **kw)
        hits = sink_candidates(pat, rule="absolute", thres=p.thres, min_queries=p.min_queries)
        b = torch.arange(pat.shape[0], device=pat.device)
        first_hit = hits[b, :, first]  # (B, H)
        escaped = ~first_hit & hid_abs.any(-1)
        stats = torch.stack(
            [hid_abs.sum(-1).double(), hid_rel.sum(-1).double(), first_hit.double(), escaped.double()]
        ).sum(dim=1)  # (4, H)
        self._sums[layer] = self._sums.get(layer, torch.zeros_like(stats.cpu())) + stats.cpu()
        self._seqs[layer] = self._seqs.get(layer, 0) + int(pat.shape[0])
        if self.keep:
            self.masks.setdefault(layer, []).append((hid_abs & real_keys(pat)[:, None, :]).cpu())

    def result(self) -> ScanResult:
        """Per-sequence means so far, layers ``0 .. max seen`` (nothing seen: ``(0, 0)``)."""
        if not self._sums:
            z = torch.zeros(0, 0, dtype=torch.float64)
            return ScanResult(z, z, z, z, torch.zeros(0, dtype=torch.int64))
        n_layers, heads = 1 + max(self._sums), max(v.shape[1] for v in self._sums.values())
        grid = torch.full((4, n_layers, heads), float("nan"), dtype=torch.float64)
        seqs = torch.zeros(n_layers, dtype=torch.int64)
        for layer, s in self._sums.items():
            grid[:, layer, : s.shape[1]] = s / max(self._seqs[layer], 1)
            seqs[layer] = self._seqs[layer]
        return ScanResult(grid[0], grid[1], grid[2], grid[3], seqs)


def build(params: ActParams | None = None) -> AttentionCalibration | SinkScan:
    """The spec's factory: the calibration editor on ``params.heads``, or (no heads) the
    sink scanner."""
    if params is None:
        params = ActParams()
    if not isinstance(params, ActParams):
        raise TypeError(f"params must be an ActParams, got {type(params).__name__}")
    return AttentionCalibration(params.head_map, params) if params.head_map else SinkScan(params)
