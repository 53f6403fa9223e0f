"""ATTNKIT_NUMBA_CACHE switches numba's on-disk (pickle-read) cache for attnkit's kernels."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba")

_RUN = (
    "import numpy as np\n"
    "from attnkit.kernels.numba_exp import any_non_finite\n"
    "assert any_non_finite(np.array([1.0, float('nan')]))\n"
    "assert not any_non_finite(np.zeros(3))\n"
)


def _cache_files(tmp_path: Path, switch: str | None) -> list[Path]:
    folder = tmp_path / f"numba-{switch}"
    env = {k: v for k, v in os.environ.items() if k != "ATTNKIT_NUMBA_CACHE"}
    env["NUMBA_CACHE_DIR"] = str(folder)
    if switch is not None:
        env["ATTNKIT_NUMBA_CACHE"] = switch
    subprocess.run([sys.executable, "-c", _RUN], env=env, check=True, timeout=300)
    return sorted(folder.rglob("*.nb[ic]")) if folder.exists() else []


def test_cache_is_on_by_default_and_written_where_numba_says(tmp_path: Path) -> None:
    files = _cache_files(tmp_path, None)
    assert any(f.name.startswith("numba_exp.any_non_finite") and f.suffix == ".nbi" for f in files), files


@pytest.mark.parametrize("switch", ["0", "off"])
def test_switch_off_writes_no_cache_file(tmp_path: Path, switch: str) -> None:
    assert _cache_files(tmp_path, switch) == []
