"""Interchange interventions: run the counterfactual, patch its state at one layer and token
into the base run, and read the base's answer candidates.

Everything goes through the core's run-time sites: :class:`attnkit.runtime.Capture` keeps the
counterfactual's ``blocks.{L}.hook_resid_pre`` (the input of block ``L``, i.e. transformers'
``hidden_states[L]``: no off-by-one with ``hook_resid_post``) or ``blocks.{L}.attn.hook_z``
(per-head attention outputs before ``o_proj``), and :class:`attnkit.runtime.ActivationPatch`
writes it into the base at the chosen positions.

The answer distribution is a softmax over the *candidate* tokens' raw logits (the ``n`` bound
objects), not a full-vocabulary softmax, as in the paper's code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["SITES", "Readout", "candidate_readout", "interchange", "site_for"]

#: ``site`` parameter value -> site name template.
SITES = {"resid_pre": "blocks.{L}.hook_resid_pre", "z": "blocks.{L}.attn.hook_z"}


def site_for(site: str, layer: int) -> str:
    """Full site name of ``site`` (``"resid_pre"`` / ``"z"``) at block ``layer``."""
    if site not in SITES:
        raise ValueError(f"site must be one of {sorted(SITES)}, got {site!r}")
    return SITES[site].replace("{L}", str(layer))


@dataclass(frozen=True)
class Readout:
    """Last-token readout of a batch.

    :ivar logits: ``(B, n)`` float32 raw logits of the ``n`` candidate tokens.
    :ivar top1: ``(B,)`` int64 full-vocabulary argmax token.
    """

    logits: torch.Tensor
    top1: torch.Tensor

    @property
    def dist(self) -> torch.Tensor:
        """``(B, n)`` softmax over the candidates."""
        return torch.softmax(self.logits.double(), dim=-1)

    @property
    def choice(self) -> torch.Tensor:
        """``(B,)`` argmax candidate."""
        return self.logits.argmax(-1)


def _check_ids(name: str, ids: torch.Tensor) -> None:
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
        shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise TypeError(f"{name} must be (B, T) integer token ids, got {shape}")


def candidate_readout(
    model: torch.nn.Module, ids: torch.Tensor, candidates: torch.Tensor, analyses: Sequence[object] = ()
) -> Readout:
    """Run ``ids (B, T)`` (under :func:`attnkit.patch` with ``analyses`` when given) and read
    the last token's logits at ``candidates (B, n)``."""
    import attnkit

    _check_ids("ids", ids)
    if candidates.dim() != 2 or candidates.shape[0] != ids.shape[0]:
        raise ValueError(f"candidates must be (B, n) with B = {ids.shape[0]}, got {tuple(candidates.shape)}")
    dev = next(model.parameters()).device
    with torch.no_grad():
        if analyses:
            with attnkit.patch(model, "dense", analyses=list(analyses)):
                logits = model(ids.to(dev)).logits[:, -1].float().cpu()
        else:
            logits = model(ids.to(dev)).logits[:, -1].float().cpu()
    return Readout(logits.gather(1, candidates), logits.argmax(-1))


def interchange(
    model: torch.nn.Module,
    base: torch.Tensor,
    cf: torch.Tensor,
    candidates: torch.Tensor,
    cf_candidates: torch.Tensor,
    plan: Sequence[tuple[int, str, Sequence[int]]],
    site: str = "resid_pre",
) -> tuple[Readout, Readout, dict[tuple[int, str], Readout]]:
    """Interchange interventions of one batch.

    :param base: ``(B, T)`` base prompts; ``cf``: ``(B, T)`` counterfactuals (same shape).
    :param candidates: ``(B, n)`` base candidate tokens; ``cf_candidates`` the counterfactual's.
    :param plan: ``(layer, name, positions)`` triples: one patched run each, patching the
        counterfactual's ``site`` of block ``layer`` at token ``positions`` into the base.
    :param site: ``"resid_pre"`` or ``"z"`` (all heads of block ``layer``).
    :returns: ``(base readout, counterfactual readout, {(layer, name): patched readout})``.
    :raises ValueError: for base / counterfactual shapes that differ, naming both, or positions
        outside the prompt.
    """
    from attnkit.runtime import ActivationPatch, Capture

    _check_ids("base", base)
    _check_ids("cf", cf)
    if base.shape != cf.shape:
        raise ValueError(f"base {tuple(base.shape)} and cf {tuple(cf.shape)} must have the same shape (B, T)")
    t = base.shape[1]
    for layer, name, pos in plan:
        bad = [p for p in pos if not 0 <= p < t]
        if bad or not pos:
            raise ValueError(f"plan entry ({layer}, {name!r}): positions {list(pos)} must be non-empty and in [0, {t})")
    sites = sorted({site_for(site, layer) for layer, _, _ in plan})
    cap = Capture(sites) if sites else None
    cf_out = candidate_readout(model, cf, cf_candidates, analyses=[cap] if cap else ())
    base_out = candidate_readout(model, base, candidates)
    patched: dict[tuple[int, str], Readout] = {}
    for layer, name, pos in plan:
        assert cap is not None
        edit = ActivationPatch(cap, [site_for(site, layer)], positions=list(pos))
        patched[(layer, name)] = candidate_readout(model, base, candidates, analyses=[edit])
    return base_out, cf_out, patched
