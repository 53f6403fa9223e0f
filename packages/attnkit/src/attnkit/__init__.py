"""attnkit: attention research as plugins behind one API.

>>> import torch, attnkit
>>> q = k = v = torch.randn(1, 4, 128, 32)
>>> out = attnkit.attention(q, k, v, spec="dense", is_causal=True)

Public names: :func:`attention`, :func:`get_spec`, :func:`list_specs`, the spec types,
:data:`hookimpl` for plugins, :func:`load_plugins`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from attnkit.hookspecs import hookimpl, hookspec
from attnkit.registry import (
    AnalysisSpec,
    AttentionModuleSpec,
    AttentionSpec,
    Backend,
    CallInfo,
    KVCacheSpec,
    NoParams,
    Paper,
    Spec,
    choose,
    registry,
)

if TYPE_CHECKING:
    import torch

    from attnkit.plugins import get_plugins, load_plugins

__all__ = [
    "AnalysisSpec",
    "AttentionModuleSpec",
    "AttentionSpec",
    "Backend",
    "CallInfo",
    "KVCacheSpec",
    "NoParams",
    "Paper",
    "Spec",
    "attention",
    "choose",
    "get_plugins",
    "get_spec",
    "hookimpl",
    "hookspec",
    "list_specs",
    "load_plugins",
    "patch",
    "registry",
]


def get_spec(name: str, kind: str | None = None) -> Any:
    """Return the installed spec called ``name`` (loading plugins on first use).

    :param kind: ``"attention"``, ``"module"``, ``"cache"`` or ``"analysis"`` to restrict the
        lookup. Unknown names raise ``ValueError`` listing the available ones.
    """
    from attnkit.plugins import load_plugins

    load_plugins()
    return registry.get(name, kind)


def list_specs(kind: str | None = None) -> list[Spec]:
    """Every installed spec, or those of one ``kind``, sorted by name."""
    from attnkit.plugins import load_plugins

    load_plugins()
    return list(registry) if kind is None else registry.of_kind(kind)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    spec: str = "dense",
    backend: str | None = None,
    **kwargs: Any,
) -> Any:
    """Run attention spec ``spec`` on ``q (B, Hq, T, D)``, ``k/v (B, Hkv, T, D)``.

    Keyword arguments are the spec's parameters plus ``is_causal``, ``scale``,
    ``return_lse``, ``mask`` and ``layout`` (see :meth:`AttentionSpec.__call__`).
    ``backend=`` forces an implementation by name.
    """
    return get_spec(spec, "attention")(q, k, v, backend=backend, **kwargs)


def __getattr__(name: str) -> Any:
    if name in ("get_plugins", "load_plugins"):
        # attnkit.plugins imports importlib.metadata (email, zipfile ...): only when plugins
        # are asked for, which list_specs() and get_spec() do themselves.
        from attnkit import plugins

        return getattr(plugins, name)
    if name == "patch":  # imports torch and transformers: only when asked for
        from attnkit.hf import patch

        return patch
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("attnkit")
        except PackageNotFoundError:
            return "0.1.0"
    raise AttributeError(f"module 'attnkit' has no attribute {name!r}")
