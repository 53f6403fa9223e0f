"""Runs every test with one intra-op thread (on a shared, loaded machine spinning OpenMP
workers make small matmuls far slower)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from attnkit.testing import torch_threads


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield
