"""Shared fixtures for the core tests: plugin state is global, so every test that changes it
restores it (the llm / datasette ``register ... finally unregister`` pattern)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from attnkit.plugins import load_plugins


@contextlib.contextmanager
def plugin_env(**env: str | None) -> Iterator[None]:
    """Reload plugins under ``env`` (``None`` unsets a variable); restore both on exit."""
    saved = {k: os.environ.get(k) for k in env}
    try:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        load_plugins(force=True)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        load_plugins(force=True)


@pytest.fixture(name="plugin_env")
def plugin_env_fixture():  # type: ignore[no-untyped-def]
    """:func:`plugin_env` as a fixture, so test modules need not import conftest."""
    return plugin_env


@pytest.fixture
def clean_plugins() -> Iterator[None]:
    """Plugins loaded as installed before the test, and again after it."""
    load_plugins()
    try:
        yield
    finally:
        load_plugins(force=True)
