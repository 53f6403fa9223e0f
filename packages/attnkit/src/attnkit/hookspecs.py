"""Hook specifications for attnkit plugins.

Two families of hooks share the project name ``attnkit``:

* registration hooks, called once per plugin by :func:`attnkit.plugins.load_plugins`, that
  hand a ``register`` callback to the plugin (the ``llm`` pattern). They only register specs;
  choosing between implementations happens in :mod:`attnkit.registry`, not in hook chains.
* run-time hooks, called on a per-run plugin manager (:class:`RuntimeSpecs`) while a patched
  model runs, so only the analyses chosen for that run are called and only the sites they
  ask for pay for capture.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pluggy import HookimplMarker, HookspecMarker

if TYPE_CHECKING:
    import torch

    from attnkit.registry import AnalysisSpec, AttentionModuleSpec, AttentionSpec, KVCacheSpec, Register

hookspec = HookspecMarker("attnkit")
hookimpl = HookimplMarker("attnkit")

# -------------------------------------------------------------------------
# Registration hooks: called once per plugin by attnkit.plugins.load_plugins()
# -------------------------------------------------------------------------


@hookspec
def attnkit_register_attention(register: Register[AttentionSpec | AttentionModuleSpec]) -> None:
    """Register the attention kernels and attention modules this plugin provides.

    Call ``register(spec)`` once per :class:`~attnkit.AttentionSpec` (a kernel,
    ``q, k, v -> out``) or :class:`~attnkit.AttentionModuleSpec` (a module with its own
    projections or state). Reference implementations by ``"module:function"`` strings so
    torch, numba and triton are imported on first use, never at registration.

    If the hook raises, none of the specs it registered are kept and the plugin is listed
    as broken with the error; other plugins are unaffected.

    :param register: adds one spec to the registry; raises ``ValueError`` on a name clash.

    .. versionadded:: 0.1
    """


@hookspec
def attnkit_register_caches(register: Register[KVCacheSpec]) -> None:
    """Register the KV-cache policies this plugin provides.

    Call ``register(spec)`` once per :class:`~attnkit.KVCacheSpec`.

    :param register: adds one spec to the registry.

    .. versionadded:: 0.1
    """


@hookspec
def attnkit_register_analyses(register: Register[AnalysisSpec]) -> None:
    """Register the analyses and interventions this plugin provides.

    Call ``register(spec)`` once per :class:`~attnkit.AnalysisSpec`; the spec lists the
    run-time sites it needs.

    :param register: adds one spec to the registry.

    .. versionadded:: 0.1
    """


# -------------------------------------------------------------------------
# Run-time hooks: called on a per-run plugin manager while a patched model runs
# -------------------------------------------------------------------------


class RuntimeSpecs:
    """Run-time capture and edit sites, named like TransformerLens hook points.

    Sites: ``blocks.{l}.attn.hook_q``, ``hook_k``, ``hook_v`` (after RoPE, ``(B, H, T, D)``),
    ``hook_scores`` (pre-softmax logits after the mask, ``(B, Hq, Tq, Tk)``),
    ``hook_pattern`` (probabilities, GQA expanded, ``(B, Hq, Tq, Tk)``), ``hook_z`` (per-head
    output before ``o_proj``, ``(B, Hq, T, Dv)``), ``blocks.{l}.hook_resid_pre`` /
    ``hook_resid_post`` (``(B, T, E)``), ``blocks.{l}.hook_attn_out`` / ``hook_mlp_out`` (the
    attention's and the MLP's output projection before the residual add, ``(B, T, E)``), and
    ``logits`` (``(B, T, V)``).
    """

    @hookspec
    def attnkit_sites(self) -> list[str]:
        """Return the site names (patterns with ``{l}`` allowed) this run-time plugin needs.

        Sites nobody asks for are not captured. All results are combined.

        :returns: site names or patterns.

        .. versionadded:: 0.1
        """
        raise NotImplementedError

    @hookspec
    def attnkit_capture(self, site: str, layer: int | None, tensor: torch.Tensor, run: Any) -> None:
        """Observe a tensor at ``site``; must not modify it.

        :param site: full site name, e.g. ``"blocks.3.attn.hook_pattern"``.
        :param layer: the block index, or ``None`` for model-level sites such as ``logits``.
        :param tensor: the value at the site (shape per :class:`RuntimeSpecs`).
        :param run: the per-run context (step, phase ``"prefill"``/``"decode"``, positions).

        .. versionadded:: 0.1
        """

    @hookspec
    def attnkit_edit(self, site: str, layer: int | None, tensor: torch.Tensor, run: Any) -> torch.Tensor | None:
        """Return a replacement for the tensor at ``site``, or ``None`` to leave it.

        Edits chain: each implementation sees the previous one's result. Used for head-output
        edits at ``hook_z`` (zero, mean, scale, replace), pre-softmax span masks and boosts at
        ``hook_scores``, post-softmax redistribution at ``hook_pattern``, and activation
        patching from a cached run.

        :param site: full site name.
        :param layer: the block index, or ``None``.
        :param tensor: the current value; same shape and dtype must be returned.
        :param run: the per-run context.
        :returns: the edited tensor or ``None``.

        .. versionadded:: 0.1
        """
