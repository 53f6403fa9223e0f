"""Test setup for attnkit-longheads.

Without CUDA the Triton kernel runs under the Triton interpreter, which is chosen when
``@triton.jit`` decorates it: so ``TRITON_INTERPRET`` is set here, before any test module
imports triton (an explicit value in the environment wins).
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
