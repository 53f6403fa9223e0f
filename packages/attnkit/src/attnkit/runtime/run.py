"""The per-run context: which sites are wanted, and the pluggy manager the analyses of one
run are registered on.

Site names follow TransformerLens: ``blocks.{l}.attn.hook_q`` / ``hook_k`` / ``hook_v`` /
``hook_scores`` / ``hook_pattern`` / ``hook_z``, ``blocks.{l}.hook_resid_pre`` /
``hook_attn_out`` / ``hook_mlp_out`` / ``hook_resid_post``, and ``logits``. A pattern may use ``{l}`` (every layer) or ``*``, and may
end in ``@prefill`` or ``@decode`` to be active in one phase only (retrieval scoring needs
the decode-step patterns, not the prompt's ``T x T`` ones).

Only sites some analysis asks for are computed: the adapter checks :meth:`Run.wants` before
it materialises attention scores, so a run without analyses runs the attention kernel alone.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from attnkit.hookspecs import RuntimeSpecs

__all__ = ["ATTN_SITES", "BLOCK_SITES", "MODEL_SITES", "Run", "expand_sites", "site_name"]

ATTN_SITES = ("hook_q", "hook_k", "hook_v", "hook_scores", "hook_pattern", "hook_z")
BLOCK_SITES = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post")
MODEL_SITES = ("logits",)
PHASES = ("prefill", "decode")


def site_name(site: str, layer: int | None) -> str:
    """Full name of ``site`` (``"hook_z"``) at ``layer`` (``"blocks.3.attn.hook_z"``)."""
    if layer is None:
        return site
    if site in ATTN_SITES:
        return f"blocks.{layer}.attn.{site}"
    return f"blocks.{layer}.{site}"


def all_sites(n_layers: int) -> list[str]:
    """Every site name of a model with ``n_layers`` blocks."""
    names = [site_name(s, layer) for layer in range(n_layers) for s in (*BLOCK_SITES, *ATTN_SITES)]
    return [*names, *MODEL_SITES]


@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern[str]
    phase: str | None


def _compile(pattern: str) -> _Pattern:
    if not isinstance(pattern, str) or not pattern:
        raise TypeError(f"site patterns must be non-empty strings, got {pattern!r}")
    phase = None
    if "@" in pattern:
        pattern, phase = pattern.rsplit("@", 1)
        if phase not in PHASES:
            raise ValueError(f"site phase must be one of {PHASES}, got {phase!r} in {pattern + '@' + phase!r}")
    glob = pattern.replace("{l}", "*")
    return _Pattern(re.compile(fnmatch.translate(glob)), phase)


def expand_sites(patterns: Iterable[str], n_layers: int) -> dict[str, set[str]]:
    """The sites ``patterns`` select, each with the phases it is active in.

    :raises ValueError: for a pattern that matches no site of an ``n_layers`` model (a typo
        would otherwise silently capture nothing).
    """
    names = all_sites(n_layers)
    out: dict[str, set[str]] = {}
    for raw in patterns:
        pat = _compile(raw)
        hits = [n for n in names if pat.regex.match(n)]
        if not hits:
            examples = ", ".join(names[:3] + names[-1:])
            raise ValueError(
                f"site pattern {raw!r} matches no site of a {n_layers}-layer model (sites: {examples} ...)"
            )
        for n in hits:
            out.setdefault(n, set()).update(PHASES if pat.phase is None else (pat.phase,))
    return out


@dataclass
class Run:
    """One patched run: the analyses' plugin manager and the step being computed.

    :ivar phase: ``"prefill"`` for a forward pass over a prompt, ``"decode"`` for a step that
        extends a cache by one token.
    :ivar step: forward passes so far in this run (0 for the prefill).
    :ivar positions: absolute positions of the current queries, ``(Tq,)``.
    :ivar attention_mask: the caller's padding mask of the current forward, ``(B, Tk)`` with 1
        for a real token (past tokens included), or ``None`` when none was passed.
    :ivar n_layers: number of transformer blocks of the patched model.
    :ivar store: free space analyses may use to keep results.
    """

    n_layers: int
    analyses: list[Any] = field(default_factory=list)
    phase: str = "prefill"
    step: int = 0
    positions: Any = None
    attention_mask: Any = None
    store: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pm = pluggy.PluginManager("attnkit")
        self.pm.add_hookspecs(RuntimeSpecs)
        for analysis in self.analyses:
            self.pm.register(analysis)
        editors = {id(impl.plugin) for impl in self.pm.hook.attnkit_edit.get_hookimpls()}
        patterns: list[str] = []
        edit_patterns: list[str] = []
        #: Each editor sees only the sites it declared (not every site another analysis wants).
        self._edit_scope: dict[int, dict[str, set[str]]] = {}
        for impl in self.pm.hook.attnkit_sites.get_hookimpls():
            result = impl.function()
            if isinstance(result, str) or not isinstance(result, (list, tuple, set, frozenset, type(None))):
                raise TypeError(
                    f"attnkit_sites of {impl.plugin_name!r} must return a list of site names, got {result!r}"
                )
            patterns.extend(result or ())
            if id(impl.plugin) in editors:
                edit_patterns.extend(result or ())
                self._edit_scope[id(impl.plugin)] = expand_sites(result or (), self.n_layers)
        self.sites = expand_sites(patterns, self.n_layers)
        #: Sites some editing analysis declared: only there must the adapter compute attention
        #: step by step (scores / pattern edits); capture-only sites leave the kernel's output.
        self.edit_sites = expand_sites(edit_patterns, self.n_layers)
        self._editors = bool(editors)
        self._capturers = self._has_impl("attnkit_capture")

    def _has_impl(self, hook: str) -> bool:
        return bool(getattr(self.pm.hook, hook).get_hookimpls())

    # -- what the adapter asks ------------------------------------------------------
    def wants(self, site: str, layer: int | None = None) -> bool:
        """Whether some analysis needs ``site`` at ``layer`` in the current phase."""
        phases = self.sites.get(site_name(site, layer))
        return bool(phases) and self.phase in phases  # type: ignore[operator]

    def wants_any(self, sites: Iterable[str], layer: int | None) -> bool:
        return any(self.wants(s, layer) for s in sites)

    def edits_any(self, sites: Iterable[str], layer: int | None) -> bool:
        """Whether an editing analysis declared one of ``sites`` at ``layer`` for this phase."""
        for s in sites:
            phases = self.edit_sites.get(site_name(s, layer))
            if phases and self.phase in phases:
                return True
        return False

    def visit(self, site: str, layer: int | None, tensor: Any) -> Any:
        """Let the analyses edit, then observe, ``tensor`` at ``site``; return the result.

        Edits chain in pluggy's call order; captures see the final value. A replacement of a
        different shape or dtype raises ``ValueError`` naming the site.
        """
        name = site_name(site, layer)
        phases = self.sites.get(name)
        if not phases or self.phase not in phases:
            return tensor
        if self._editors:
            for impl in reversed(self.pm.hook.attnkit_edit.get_hookimpls()):
                scope = self._edit_scope.get(id(impl.plugin), {}).get(name)
                if not scope or self.phase not in scope:
                    continue
                new = impl.function(**{a: v for a, v in _args(name, layer, tensor, self).items() if a in impl.argnames})
                if new is None:
                    continue
                if getattr(new, "shape", None) != tensor.shape or getattr(new, "dtype", None) != tensor.dtype:
                    raise ValueError(
                        f"attnkit_edit of {impl.plugin_name!r} at {name!r} returned shape "
                        f"{tuple(getattr(new, 'shape', ()))} / {getattr(new, 'dtype', None)}, "
                        f"expected {tuple(tensor.shape)} / {tensor.dtype}"
                    )
                tensor = new
        if self._capturers:
            self.pm.hook.attnkit_capture(site=name, layer=layer, tensor=tensor, run=self)
        return tensor

    def finish(self) -> dict[str, Any]:
        """Each analysis' ``result()`` (if it has one), by analysis name."""
        out: dict[str, Any] = {}
        for analysis in self.analyses:
            fn = getattr(analysis, "result", None)
            if callable(fn):
                out[getattr(analysis, "name", type(analysis).__name__)] = fn()
        return out


def _args(site: str, layer: int | None, tensor: Any, run: Run) -> dict[str, Any]:
    return {"site": site, "layer": layer, "tensor": tensor, "run": run}
