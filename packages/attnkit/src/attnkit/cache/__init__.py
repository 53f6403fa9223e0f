"""KV-cache policies: the :class:`CachePolicy` base, the built-in policies, and
:class:`AttnkitCache`, the transformers cache that runs a policy inside ``generate()``.

Names load lazily so that :mod:`attnkit.cache.params` (imported when plugins register) pulls
in neither torch nor transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from attnkit.cache.attention import reference_cache_attention, register_reference_attention
    from attnkit.cache.builtin import FullPolicy, SinkWindowPolicy, WindowPolicy
    from attnkit.cache.hf import AttnkitCache, active_cache
    from attnkit.cache.params import SinkWindowParams, WindowParams, check_budget, resolve_budget
    from attnkit.cache.policy import CachePolicy, LayerState, query_probabilities

__all__ = [
    "AttnkitCache",
    "CachePolicy",
    "FullPolicy",
    "LayerState",
    "SinkWindowParams",
    "SinkWindowPolicy",
    "WindowParams",
    "WindowPolicy",
    "active_cache",
    "build_policy",
    "check_budget",
    "query_probabilities",
    "reference_cache_attention",
    "register_reference_attention",
    "resolve_budget",
]

_WHERE = {
    "AttnkitCache": "attnkit.cache.hf",
    "active_cache": "attnkit.cache.hf",
    "CachePolicy": "attnkit.cache.policy",
    "LayerState": "attnkit.cache.policy",
    "query_probabilities": "attnkit.cache.policy",
    "FullPolicy": "attnkit.cache.builtin",
    "SinkWindowPolicy": "attnkit.cache.builtin",
    "WindowPolicy": "attnkit.cache.builtin",
    "SinkWindowParams": "attnkit.cache.params",
    "WindowParams": "attnkit.cache.params",
    "check_budget": "attnkit.cache.params",
    "resolve_budget": "attnkit.cache.params",
    "reference_cache_attention": "attnkit.cache.attention",
    "register_reference_attention": "attnkit.cache.attention",
}


def build_policy(name: str, /, **params: Any) -> Any:
    """A fresh policy of the installed cache spec ``name`` with validated ``params``."""
    from attnkit.plugins import load_plugins
    from attnkit.registry import registry, resolve

    load_plugins()
    spec = registry.get(name, kind="cache")
    return resolve(spec.factory)(spec.make_params(**params))


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'attnkit.cache' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
