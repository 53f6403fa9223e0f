"""Interventions on a patched run: head-output edits, pre-softmax span masks and boosts,
post-softmax redistribution, and activation patching from a captured run.

Each is a run-time plugin for :func:`attnkit.patch` (``analyses=[...]``) that declares only
the sites it edits, so nothing else is computed step by step.

>>> ablate = HeadEdit({3: [0, 5]}, mode="zero")           # heads 0 and 5 of block 3
>>> with attnkit.patch(model, analyses=[ablate]):  # doctest: +SKIP
...     logits = model(**inputs).logits
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from attnkit.hookspecs import hookimpl
from attnkit.runtime.capture import Capture

__all__ = ["ActivationPatch", "ExplicitPath", "HeadEdit", "PatternRedistribute", "ScoreEdit", "heads_by_layer"]


def heads_by_layer(heads: Any) -> dict[int, list[int]]:
    """Normalise ``{layer: [head, ...]}`` or ``[(layer, head), ...]`` to a sorted dict.

    :raises TypeError / ValueError: naming ``heads`` when an entry is not a non-negative int.
    """
    pairs: list[tuple[int, int]] = []
    if isinstance(heads, Mapping):
        for layer, hs in heads.items():
            if isinstance(hs, int):
                hs = [hs]
            pairs.extend((layer, h) for h in hs)
    elif isinstance(heads, Iterable):
        for item in heads:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise TypeError(f"heads must be {{layer: [head, ...]}} or [(layer, head), ...], got entry {item!r}")
            pairs.append((item[0], item[1]))
    else:
        raise TypeError(f"heads must be {{layer: [head, ...]}} or [(layer, head), ...], got {type(heads).__name__}")
    out: dict[int, list[int]] = {}
    for layer, h in pairs:
        for name, value in (("layer", layer), ("head", h)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"heads: {name} indices must be non-negative ints, got {value!r}")
        out.setdefault(layer, [])
        if h not in out[layer]:
            out[layer].append(h)
    return {layer: sorted(hs) for layer, hs in sorted(out.items())}


def _check_heads(layer: int, heads: list[int], n_heads: int) -> None:
    bad = [h for h in heads if h >= n_heads]
    if bad:
        raise ValueError(f"heads {bad} do not exist in block {layer}, which has {n_heads} query heads")


def _rows(rows: Any) -> list[int]:
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Iterable):
        raise TypeError(f"rows must be a sequence of batch indices, got {type(rows).__name__}")
    out = list(rows)
    if not out:
        raise ValueError("rows must name at least one batch row (None edits every row)")
    for r in out:
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise ValueError(f"rows must be non-negative batch indices, got {r!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"rows must not repeat a batch index, got {out}")
    return sorted(out)


def _span(span: Any) -> tuple[int, int]:
    if not isinstance(span, (tuple, list)) or len(span) != 2 or not all(isinstance(x, int) for x in span):
        raise TypeError(f"span must be (start, stop) key positions, got {span!r}")
    start, stop = span
    if not 0 <= start < stop:
        raise ValueError(f"span must satisfy 0 <= start < stop, got {span!r}")
    return start, stop


class HeadEdit:
    """Edit per-head outputs before the output projection (site ``hook_z``, ``(B, Hq, T, Dv)``).

    :param heads: ``{layer: [head, ...]}`` or ``[(layer, head), ...]``.
    :param mode: ``"zero"``, ``"mean"`` (the head's mean output over the current tokens, per
        sequence), ``"scale"`` (multiply by ``factor``) or ``"replace"`` (with ``value``,
        broadcastable to ``(B, T, D)``, or ``(b, n_heads, T, D)`` with ``b`` the edited rows).
    :param factor: for ``"scale"``.
    :param value: for ``"replace"``.
    :param rows: batch rows the edit applies to (``None``: every row). Several ``HeadEdit`` with
        different ``rows`` ablate different heads in one batched forward (an importance scan
        of ``n`` heads in ``n`` rows, the unedited run in another).
    """

    name = "head_edit"
    MODES = ("zero", "mean", "scale", "replace")

    def __init__(
        self, heads: Any, mode: str = "zero", factor: float = 1.0, value: Any = None, rows: Sequence[int] | None = None
    ) -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        if mode == "replace" and value is None:
            raise ValueError("mode='replace' needs value= (a tensor broadcastable to (B, T, D))")
        self.heads = heads_by_layer(heads)
        self.mode, self.factor, self.value = mode, float(factor), value
        self.rows = None if rows is None else _rows(rows)

    @hookimpl
    def attnkit_sites(self) -> list[str]:
        return [f"blocks.{layer}.attn.hook_z" for layer in self.heads]

    @hookimpl
    def attnkit_edit(self, site: str, layer: int | None, tensor: torch.Tensor, run: Any) -> torch.Tensor | None:
        if layer not in self.heads or not site.endswith("hook_z"):
            return None
        hs = self.heads[layer]
        _check_heads(layer, hs, tensor.shape[1])
        idx = torch.tensor(hs, device=tensor.device)
        if self.rows is None:
            return self._edit(tensor.clone(), idx)
        bad = [r for r in self.rows if r >= tensor.shape[0]]
        if bad:
            raise ValueError(f"HeadEdit rows {bad} do not exist in a batch of {tensor.shape[0]} sequences")
        ridx = torch.tensor(self.rows, device=tensor.device)
        return tensor.index_copy(0, ridx, self._edit(tensor.index_select(0, ridx), idx))

    def _edit(self, z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``z`` (a copy the edit may write) with the heads ``idx`` edited."""
        if self.mode == "zero":
            z[:, idx] = 0
        elif self.mode == "scale":
            z[:, idx] = z[:, idx] * self.factor
        elif self.mode == "mean":
            z[:, idx] = z[:, idx].mean(dim=2, keepdim=True).expand_as(z[:, idx])
        else:
            value = torch.as_tensor(self.value, dtype=z.dtype, device=z.device)
            z[:, idx] = value.expand_as(z[:, idx]) if value.dim() < 4 else value
        return z


class ExplicitPath:
    """Route attention through the explicit scores -> softmax -> ``A V`` path and change nothing.

    The baseline of an intervention at ``hook_scores`` / ``hook_pattern``: an edited run takes
    that path, the fused kernel of an unedited run rounds differently, so comparing the two
    would show differences the edit did not cause. With this no-op in the baseline, positions
    the edit cannot reach come out bit-identical.

    :param layers: block indices, or ``None`` for every block.
    """

    name = "explicit_path"

    def __init__(self, layers: Sequence[int] | None = None) -> None:
        if layers is not None:
            layers = list(layers)
            for layer in layers:
                if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                    raise ValueError(f"layers must be non-negative block indices, got {layer!r}")
        self.layers = layers

    @hookimpl
    def attnkit_sites(self) -> list[str]:
        if self.layers is None:
            return ["blocks.{l}.attn.hook_scores"]
        return [f"blocks.{layer}.attn.hook_scores" for layer in self.layers]

    @hookimpl
    def attnkit_edit(self, site: str, layer: int | None, tensor: torch.Tensor, run: Any) -> torch.Tensor | None:
        return None


class ScoreEdit:
    """Mask, boost or flatten pre-softmax scores of chosen heads (site ``hook_scores``).

    :param heads: ``{layer: [head, ...]}`` / ``[(layer, head), ...]``, or a list of layers
        (every head of those layers).
    :param span: ``(start, stop)`` key indices (stop exclusive): absolute positions unless a
        cache policy has evicted keys. ``None``: every key.
    :param mode: ``"mask"`` (the keys become invisible), ``"boost"`` (add ``amount``) or
        ``"uniform"`` (every visible key in the span gets the same logit: the head attends
        uniformly, i.e. outputs the mean of the visible values; the retrieval-head paper's
        head masking, which zeroes the head's query).
    :param amount: logit added for ``"boost"``.
    """

    name = "score_edit"
    MODES = ("mask", "boost", "uniform")

    def __init__(self, heads: Any, span: Sequence[int] | None = None, mode: str = "mask", amount: float = 0.0) -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.heads: dict[int, list[int] | None] = (
            {int(layer): None for layer in heads}
            if isinstance(heads, (list, tuple)) and heads and all(isinstance(x, int) for x in heads)
            else dict(heads_by_layer(heads))
        )
        self.span = None if span is None else _span(span)
        self.mode, self.amount = mode, float(amount)

    @hookimpl
    def attnkit_sites(self) -> list[str]:
        return [f"blocks.{layer}.attn.hook_scores" for layer in self.heads]

    @hookimpl
    def attnkit_edit(self, site: str, layer: int | None, tensor: torch.Tensor, run: Any) -> torch.Tensor | None:
        if layer not in self.heads:
            return None
        heads = self.heads[layer]
        if heads is not None:
            _check_heads(layer, heads, tensor.shape[1])
        lo, hi = (0, tensor.shape[-1]) if self.span is None else (self.span[0], min(self.span[1], tensor.shape[-1]))
        if lo >= hi:
            return None
        s = tensor.clone()
        sel = s if heads is None else s[:, heads]
        part = sel[..., lo:hi]
        if self.mode == "mask":
            part = torch.full_like(part, float("-inf"))
        elif self.mode == "boost":
            part = part + self.amount
        else:  # keys already masked (causal, padding) stay invisible
            part = torch.where(torch.isfinite(part), torch.zeros_like(part), part)
        sel[..., lo:hi] = part
        if heads is not None:
            s[:, heads] = sel
        else:
            s = sel
        return s


class PatternRedistribute:
    """Post-softmax redistribution (site ``hook_pattern``): scale the attention a span of
    keys receives by ``factor`` and renormalise each row, so the mass taken from (or given
    to) the span is spread over the other keys in proportion to their weights.

    :param heads: as for :class:`ScoreEdit`.
    :param span: ``(start, stop)`` key positions.
    :param factor: ``0`` removes the span; ``> 1`` amplifies it.
    """

    name = "pattern_redistribute"

    def __init__(self, heads: Any, span: Sequence[int], factor: float = 0.0) -> None:
        if factor < 0:
            raise ValueError(f"factor must be >= 0, got {factor}")
        if span is None:
            raise ValueError("PatternRedistribute needs span=(start, stop)")
        self.inner = ScoreEdit(heads, span)
        self.heads, self.span, self.factor = self.inner.heads, self.inner.span, float(factor)

    @hookimpl
    def attnkit_sites(self) -> list[str]:
        return [f"blocks.{layer}.attn.hook_pattern" for layer in self.heads]

    @hookimpl
    def attnkit_edit(self, site: str, layer: int | None, tensor: torch.Tensor, run: Any) -> torch.Tensor | None:
        if layer not in self.heads:
            return None
        assert self.span is not None  # checked in __init__
        start, stop = self.span
        hi = min(stop, tensor.shape[-1])
        if start >= hi:
            return None
        p = tensor.clone()
        heads = self.heads[layer]
        sel = p if heads is None else p[:, heads]
        sel[..., start:hi] = sel[..., start:hi] * self.factor
        total = sel.sum(-1, keepdim=True)
        # A row whose whole mass was on the span has nothing left to renormalise: zeros.
        sel = torch.where(total > 0, sel / total.clamp_min(torch.finfo(sel.dtype).tiny), torch.zeros_like(sel))
        if heads is None:
            return sel
        p[:, heads] = sel
        return p


class ActivationPatch:
    """Replace values at ``sites`` with those captured from another run (activation patching).

    :param source: a :class:`~attnkit.runtime.capture.Capture` of the clean run holding the
        sites (same sequence length).
    :param sites: full site names to patch (``"blocks.3.attn.hook_z"`` ...).
    :param heads: for ``hook_z`` / ``hook_q`` / ... sites: patch only these heads (default all).
    :param positions: patch only these token positions (default all).
    :param step: the forward of this run to patch (default 0, the prefill).
    :param source_index: which of ``source``'s captured passes to take (default ``step``); a
        decode step over a cache filled before the patched session (``run.step == 1`` there)
        takes the source's first capture with ``step=1, source_index=0``.
    """

    name = "activation_patch"

    def __init__(
        self,
        source: Capture,
        sites: Sequence[str],
        heads: Sequence[int] | None = None,
        positions: Sequence[int] | None = None,
        step: int = 0,
        source_index: int | None = None,
    ) -> None:
        if not isinstance(source, Capture):
            raise TypeError(f"source must be a Capture of the clean run, got {type(source).__name__}")
        missing = [s for s in sites if s not in source]
        if missing:
            raise ValueError(f"source did not capture {missing}; captured: {sorted(source)[:6]}")
        self.source, self.sites = source, list(sites)
        self.heads = None if heads is None else list(heads)
        self.positions = None if positions is None else list(positions)
        self.step = step
        self.source_index = step if source_index is None else source_index
        for site in self.sites:
            if not -len(source[site]) <= self.source_index < len(source[site]):
                raise ValueError(
                    f"source_index {self.source_index} out of range: source holds {len(source[site])} pass(es) of {site!r}"
                )

    @hookimpl
    def attnkit_sites(self) -> list[str]:
        return self.sites

    @hookimpl
    def attnkit_edit(self, site: str, layer: int | None, tensor: torch.Tensor, run: Any) -> torch.Tensor | None:
        if site not in self.sites or run.step != self.step:
            return None
        clean = self.source[site][self.source_index].to(device=tensor.device, dtype=tensor.dtype)
        if clean.shape != tensor.shape:
            raise ValueError(f"activation patch at {site!r}: clean value {tuple(clean.shape)} != {tuple(tensor.shape)}")
        out = tensor.clone()
        head_axis = "attn." in site and tensor.dim() == 4
        index: list[Any] = [slice(None)] * tensor.dim()
        if self.heads is not None and head_axis:
            index[1] = self.heads
        if self.positions is not None:
            index[2 if head_axis else 1] = self.positions
        if self.heads is not None and self.positions is not None and head_axis:
            h = torch.tensor(self.heads)[:, None]
            t = torch.tensor(self.positions)[None, :]
            out[:, h, t] = clean[:, h, t]
            return out
        out[tuple(index)] = clean[tuple(index)]
        return out
