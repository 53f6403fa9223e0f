"""Test setup for attnkit-landmark: this folder goes on sys.path for the uniquely named helper
module ``_landmark_oracle`` (pytest's importlib mode does not add it).

Without CUDA the Triton kernel runs under the Triton interpreter, which is chosen when
``@triton.jit`` decorates it: so ``TRITON_INTERPRET`` is set here, before any test module
imports triton (an explicit value in the environment wins)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
