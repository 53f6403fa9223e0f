"""Shared fixtures of the cross-package tests.

The contract plugin (``attnkit_contract.plugin``, loaded through its ``pytest11`` entry point)
already sets ``TRITON_INTERPRET=1`` on machines without CUDA and adds ``--attnkit-plugin``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.fixture
def register_plugin() -> Iterator[Callable[..., Any]]:
    """Register a plugin object for one test and remove it (and its specs) afterwards.

    ``register_plugin(obj, name="undo-...")`` returns its ``PluginInfo``; registration leaking
    between tests is what llm's and datasette's ``undo-`` names guard against.
    """
    from attnkit import load_plugins
    from attnkit.plugins import register_plugin as register
    from attnkit.plugins import unregister_plugin

    load_plugins()
    names: list[str] = []

    def add(plugin: Any, name: str | None = None, **kwargs: Any) -> Any:
        name = name or f"undo-{getattr(plugin, '__name__', type(plugin).__name__)}"
        names.append(name)
        return register(plugin, name=name, **kwargs)

    try:
        yield add
    finally:
        for name in reversed(names):
            unregister_plugin(name)
