"""Puts this folder on sys.path for the uniquely named helper modules (``_kdgqa_*``): the
repository runs plugin tests with ``--import-mode=importlib``, where test modules cannot
import each other by package."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def x64() -> torch.Tensor:
    return torch.randn(3, 7, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
