"""Test setup for attnkit-core-context.

Without CUDA the Triton kernel runs under the Triton interpreter, which is chosen when
``@triton.jit`` decorates it: so ``TRITON_INTERPRET`` is set here, before any test module
imports triton (an explicit value in the environment wins). This folder goes on sys.path for
the uniquely named helper module ``_cca_oracle`` (pytest's importlib mode does not add it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).parent))
