"""Test setup for attnkit-landmark: this folder goes on sys.path for the uniquely named helper
module ``_landmark_oracle`` (pytest's importlib mode does not add it)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
