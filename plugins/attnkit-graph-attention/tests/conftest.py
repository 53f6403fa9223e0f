"""Runs every test with one intra-op thread (on a shared, loaded machine spinning OpenMP
workers make small matmuls far slower). This folder goes on sys.path for the uniquely named
helper module ``_graph_attention_fakes`` (pytest's importlib mode does not add it)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from attnkit.testing import torch_threads

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield
