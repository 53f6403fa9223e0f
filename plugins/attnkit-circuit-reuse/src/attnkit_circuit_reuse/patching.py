"""Activation patching and three-pass path patching of attention heads at the final query
position ([END]), on the core's run-time sites (``hook_z``, ``hook_q/k/v``).

Every edit is at the last position only, the paper's default (``position=-1``). The prompt
tokens before it are the same in every pass, so one prefill of the clean prompt gives the
key / value cache of positions ``0 .. T-2`` and each patched run is a single decode step of
the last token over that cache: a head's output at [END] reaches the logits only through
the [END] residual stream, so this is exact, not an approximation, for [END]-only patching.

The three passes of path patching sender -> receivers (Wang et al.; Merullo et al.'s
``patching_utils.path_patching``):

1. clean and corrupted runs, recording every head's ``z`` at [END] (:func:`end_state`);
2. a clean run where the sender's ``z`` at [END] comes from the corrupted run and **every
   other head's** ``z`` at [END] is frozen to the clean run, recording the receivers' inputs
   (``hook_q`` / ``hook_k`` / ``hook_v`` at [END]). With the final residual as the receiver,
   the logits of this pass are the answer (:func:`path_patch_to_logits`);
3. a clean run with only the receivers' inputs replaced by those recordings; its logit
   difference is the path's effect (:func:`path_patch_to_heads`).

MLPs are recomputed in pass 2, not frozen (the core has no ``mlp_out`` site): a sender's
effect that goes through later MLPs into the receivers counts as part of the path, as in
the paper's default (its ``hook_mlp_out`` freezing is optional).

Score of an edit: ``(LD_patched - LD_clean) / (LD_corrupt - LD_clean)`` with ``LD`` the mean
logit difference over the prompts: 0 = no effect, 1 = the edit alone turns the clean run
into the corrupted one.

Shape legend: ``N`` prompts, ``G`` groups (one patched sender set each) run side by side as
a batch of ``G * N`` rows (group-major), ``Hq`` query heads, ``Hkv`` KV heads, ``D`` head
dim, ``T`` prompt length, ``V`` vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from attnkit.hookspecs import hookimpl

__all__ = [
    "INPUTS",
    "EndHeadPatch",
    "EndInputPatch",
    "EndRecorder",
    "EndState",
    "activation_patch",
    "build",
    "end_state",
    "logit_diff",
    "path_patch_to_heads",
    "path_patch_to_logits",
    "score",
]

Head = tuple[int, int]
#: receiver inputs path patching can replace
INPUTS = ("q", "k", "v")


def logit_diff(logits: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """``logits (B, V)`` -> ``(B,)`` float64 ``logit[answer] - logit[wrong]``; ``answer`` and
    ``wrong`` are ``(N,)`` token ids with ``B`` a multiple of ``N`` (group-major rows)."""
    if logits.dim() != 2 or logits.shape[0] % answer.shape[0]:
        raise ValueError(f"logits must be (G * N, V) with N = {answer.shape[0]}, got {tuple(logits.shape)}")
    reps = logits.shape[0] // answer.shape[0]
    a, w = answer.repeat(reps), wrong.repeat(reps)
    rows = torch.arange(logits.shape[0])
    return (logits[rows, a] - logits[rows, w]).double()


def score(ld_patched: float, ld_clean: float, ld_corrupt: float) -> float:
    """``(LD_patched - LD_clean) / (LD_corrupt - LD_clean)``; NaN when clean and corrupted
    runs have the same logit difference (nothing to explain)."""
    gap = ld_corrupt - ld_clean
    if gap == 0:
        return float("nan")
    return (ld_patched - ld_clean) / gap


@dataclass
class EndState:
    """One run (clean or corrupted) of ``N`` prompts: the prefix cache and the [END] values.

    :ivar prefix: per layer ``(keys, values)``, each ``(N, Hkv, T - 1, D)``.
    :ivar last: ``(N, 1)`` the last token ids.
    :ivar z: per layer ``(N, Hq, D)`` head outputs at [END].
    :ivar logits: ``(N, V)`` logits at [END].
    """

    prefix: list[tuple[torch.Tensor, torch.Tensor]]
    last: torch.Tensor
    z: list[torch.Tensor]
    logits: torch.Tensor

    @property
    def n(self) -> int:
        return int(self.last.shape[0])


def _prefix(model: Any, ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from transformers import DynamicCache

    if ids.shape[1] < 2:
        raise ValueError(f"prompts need at least 2 tokens for [END] patching, got ids {tuple(ids.shape)}")
    cache = DynamicCache(config=model.config)
    model(ids[:, :-1], cache=cache, use_cache=True, logits_to_keep=1)
    return [(layer.keys.detach().clone(), layer.values.detach().clone()) for layer in cache.layers]


def end_step(
    model: Any,
    prefix: Sequence[tuple[torch.Tensor, torch.Tensor]],
    last: torch.Tensor,
    groups: int,
    analyses: Sequence[Any],
) -> torch.Tensor:
    """Logits ``(groups * N, V)`` of one decode step of ``last (N, 1)`` over ``prefix``
    (repeated ``groups`` times, group-major) under :func:`attnkit.patch` with ``analyses``."""
    from transformers import DynamicCache

    import attnkit

    data = [(k.repeat(groups, 1, 1, 1), v.repeat(groups, 1, 1, 1)) for k, v in prefix]
    cache = DynamicCache(data, config=model.config)
    with attnkit.patch(model, "dense", analyses=list(analyses)):
        out = model(last.repeat(groups, 1), cache=cache, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1].detach()


def end_state(model: Any, ids: torch.Tensor) -> EndState:
    """Prefill ``ids[:, :-1] (N, T - 1)``, then the [END] step with every ``hook_z`` captured."""
    from attnkit.runtime import Capture

    if ids.dim() != 2:
        raise ValueError(f"ids must be (N, T) token ids, got {tuple(ids.shape)}")
    with torch.no_grad():
        prefix = _prefix(model, ids)
        cap = Capture(["blocks.{l}.attn.hook_z"])
        logits = end_step(model, prefix, ids[:, -1:], 1, [cap])
    n_layers = len(prefix)
    z = [cap.first(f"blocks.{layer}.attn.hook_z")[:, :, -1].clone() for layer in range(n_layers)]
    return EndState(prefix=prefix, last=ids[:, -1:].clone(), z=z, logits=logits)


class EndRecorder:
    """Run-time recorder of every head's ``hook_z`` at the last position of each forward pass
    (path patching's first pass, for use with :func:`attnkit.patch` on any prompt); it only
    observes. ``result()``: per layer ``(B, Hq, D)`` of the latest pass."""

    name = "circuit_reuse"

    def __init__(self) -> None:
        self.z: dict[int, torch.Tensor] = {}

    @hookimpl
    def attnkit_sites(self) -> list[str]:
        return ["blocks.{l}.attn.hook_z"]

    @hookimpl
    def attnkit_capture(self, site: str, layer: int | None, tensor: torch.Tensor) -> None:
        if layer is None or not site.endswith("attn.hook_z"):
            return
        if tensor.dim() != 4:
            raise ValueError(f"{site}: expected head outputs (B, Hq, T, D), got {tuple(tensor.shape)}")
        self.z[layer] = tensor[:, :, -1].detach().cpu().clone()

    def result(self) -> dict[str, torch.Tensor]:
        return {f"blocks.{layer}.attn.hook_z": self.z[layer] for layer in sorted(self.z)}


def build(params: Any = None) -> EndRecorder:
    """The spec's factory: a fresh :class:`EndRecorder` (``params`` are the analysis' and do
    not change what is recorded)."""
    return EndRecorder()


class EndHeadPatch:
    """Run-time edit of ``hook_z`` at [END]: group ``g`` (batch rows ``g*N .. g*N+N-1``) gets
    the heads of ``groups[g]`` from ``source``; with ``freeze`` every other head is set to
    ``freeze``'s value (path patching's pass 2), else left to compute (activation patching).

    :param groups: one set of ``(layer, head)`` per group.
    :param source: per layer ``(N, Hq, D)`` values to patch in (the corrupted run).
    :param freeze: per layer ``(N, Hq, D)`` values every other head is frozen to, or ``None``.
    """

    name = "end_head_patch"

    def __init__(
        self,
        groups: Sequence[Iterable[Head]],
        source: Sequence[torch.Tensor],
        freeze: Sequence[torch.Tensor] | None = None,
    ) -> None:
        self.groups = [sorted({(int(layer), int(h)) for layer, h in g}) for g in groups]
        if not self.groups:
            raise ValueError("groups is empty: give at least one set of (layer, head)")
        self.source, self.freeze = list(source), None if freeze is None else list(freeze)
        n_layers = len(self.source)
        for g in self.groups:
            for layer, h in g:
                if not 0 <= layer < n_layers or not 0 <= h < self.source[layer].shape[1]:
                    raise ValueError(
                        f"head ({layer}, {h}) is outside the model: {n_layers} layers of "
                        f"{self.source[0].shape[1]} heads"
                    )
        self.layers = (
            sorted(range(n_layers)) if freeze is not None else sorted({lay for g in self.groups for lay, _ in g})
        )

    @hookimpl
    def attnkit_sites(self) -> list[str]:
        return [f"blocks.{layer}.attn.hook_z" for layer in self.layers]

    @hookimpl
    def attnkit_edit(self, site: str, layer: int | None, tensor: torch.Tensor) -> torch.Tensor | None:
        if layer is None or layer not in self.layers:
            return None
        n = self.source[layer].shape[0]
        if tensor.shape[0] != n * len(self.groups):
            raise ValueError(f"{site}: batch {tensor.shape[0]} != {len(self.groups)} groups x {n} prompts")
        out = tensor.clone()
        if self.freeze is not None:
            out[:, :, -1] = self.freeze[layer].to(out.dtype).repeat(len(self.groups), 1, 1)
        src = self.source[layer].to(out.dtype)
        for g, heads in enumerate(self.groups):
            hs = [h for lay, h in heads if lay == layer]
            if hs:
                out[g * n : (g + 1) * n, hs, -1] = src[:, hs]
        return out


class EndInputPatch:
    """Run-time edit of receiver inputs at [END] (path patching's pass 3): at
    ``blocks.{l}.attn.hook_{q,k,v}`` the receivers' rows take the recorded values.

    :param recorded: site name -> tensor recorded in pass 2, ``(B, H, Tk, D)``.
    :param heads: site name -> head indices to replace (query heads for ``hook_q``, KV heads
        for ``hook_k`` / ``hook_v``: under GQA a KV head feeds every query head of its group).
    """

    name = "end_input_patch"

    def __init__(self, recorded: dict[str, torch.Tensor], heads: dict[str, list[int]]) -> None:
        if set(recorded) != set(heads):
            raise ValueError(f"recorded sites {sorted(recorded)} != heads sites {sorted(heads)}")
        self.recorded, self.heads = recorded, heads

    @hookimpl
    def attnkit_sites(self) -> list[str]:
        return sorted(self.recorded)

    @hookimpl
    def attnkit_edit(self, site: str, tensor: torch.Tensor) -> torch.Tensor | None:
        if site not in self.recorded:
            return None
        rec = self.recorded[site]
        if rec.shape != tensor.shape:
            raise ValueError(f"{site}: recorded {tuple(rec.shape)} != current {tuple(tensor.shape)}")
        out = tensor.clone()
        hs = self.heads[site]
        out[:, hs, -1] = rec[:, hs, -1].to(out.dtype)
        return out


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _rows(max_rows: int, n: int) -> int:
    return max(1, max_rows // max(1, n))


def activation_patch(
    model: Any,
    clean: EndState,
    corrupt: EndState,
    groups: Sequence[Iterable[Head]],
    max_rows: int = 256,
    progress: Callable[[Any], Any] = lambda x: x,
) -> torch.Tensor:
    """Logits ``(len(groups), N, V)``: the clean run with each group's heads at [END] taken
    from the corrupted run, nothing frozen."""
    out = []
    with torch.no_grad():
        for chunk in progress(list(_chunks(list(groups), _rows(max_rows, clean.n)))):
            edit = EndHeadPatch(chunk, corrupt.z)
            out.append(end_step(model, clean.prefix, clean.last, len(chunk), [edit]).view(len(chunk), clean.n, -1))
    return torch.cat(out)


def path_patch_to_logits(
    model: Any,
    clean: EndState,
    corrupt: EndState,
    groups: Sequence[Iterable[Head]],
    max_rows: int = 256,
    progress: Callable[[Any], Any] = lambda x: x,
) -> torch.Tensor:
    """Logits ``(len(groups), N, V)`` of path patching each group -> the final residual
    stream: the group's heads from the corrupted run, every other head frozen to clean."""
    out = []
    with torch.no_grad():
        for chunk in progress(list(_chunks(list(groups), _rows(max_rows, clean.n)))):
            edit = EndHeadPatch(chunk, corrupt.z, freeze=clean.z)
            out.append(end_step(model, clean.prefix, clean.last, len(chunk), [edit]).view(len(chunk), clean.n, -1))
    return torch.cat(out)


def receiver_sites(receivers: Iterable[Head], inputs: str, group_size: int) -> dict[str, list[int]]:
    """Site name -> head indices for ``receivers`` read through ``inputs`` (a subset of
    ``"qkv"``); k / v are per KV head ``h // group_size`` (GQA)."""
    if not inputs or any(c not in INPUTS for c in inputs):
        raise ValueError(f"receiver inputs must be letters of 'qkv', got {inputs!r}")
    sites: dict[str, set[int]] = {}
    for layer, h in receivers:
        for c in inputs:
            sites.setdefault(f"blocks.{layer}.attn.hook_{c}", set()).add(h if c == "q" else h // group_size)
    return {s: sorted(hs) for s, hs in sorted(sites.items())}


def path_patch_to_heads(
    model: Any,
    clean: EndState,
    corrupt: EndState,
    groups: Sequence[Iterable[Head]],
    receivers: Iterable[Head],
    inputs: str = "q",
    max_rows: int = 256,
    progress: Callable[[Any], Any] = lambda x: x,
) -> torch.Tensor:
    """Logits ``(len(groups), N, V)`` of path patching each group -> ``receivers``' inputs
    (``"q"``, ``"k"``, ``"v"`` or a combination) at [END], in three passes."""
    from attnkit.runtime import Capture

    receivers = sorted({(int(layer), int(h)) for layer, h in receivers})
    if not receivers:
        raise ValueError("receivers is empty: give at least one (layer, head)")
    hq = clean.z[0].shape[1]
    hkv = clean.prefix[0][0].shape[1]
    sites = receiver_sites(receivers, inputs, hq // hkv)
    out = []
    with torch.no_grad():
        for chunk in progress(list(_chunks(list(groups), _rows(max_rows, clean.n)))):
            cap = Capture(list(sites))
            edit = EndHeadPatch(chunk, corrupt.z, freeze=clean.z)
            end_step(model, clean.prefix, clean.last, len(chunk), [edit, cap])
            recorded = {s: cap.first(s) for s in sites}
            patch = EndInputPatch(recorded, sites)
            out.append(end_step(model, clean.prefix, clean.last, len(chunk), [patch]).view(len(chunk), clean.n, -1))
    return torch.cat(out)
