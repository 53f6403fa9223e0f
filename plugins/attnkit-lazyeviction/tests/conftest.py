"""Puts this folder on sys.path for the helper module ``_lazy_reference``, and runs every test
with one intra-op thread (on a shared, loaded machine spinning OpenMP workers make the small
matmuls of these tests far slower)."""

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
