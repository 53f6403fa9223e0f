"""Optional cross-check against NATTEN itself (``natten`` >= 0.21; on CPU its flex backend).

Install without touching torch: ``pip install --no-build-isolation --no-deps natten``.
NATTEN is heads-last (``(B, *S, H, D)``), so the spec is called with ``layout="bthd"``; its
positional arguments changed between releases, so every argument is passed by keyword.
"""

from __future__ import annotations

import warnings

import pytest
import torch

natten = pytest.importorskip(
    "natten", reason="natten is not installed (pip install --no-build-isolation --no-deps natten)", exc_type=ImportError
)

import attnkit  # noqa: E402

pytestmark = pytest.mark.natten

SPEC = attnkit.get_spec("neighborhood")

# (token axes S, Hq, Hkv, kernel_size, dilation, is_causal)
CASES = {
    "1d-odd": ((20,), 2, 2, 5, 1, False),
    "1d-even-dilated": ((19,), 2, 2, 4, 2, False),
    "1d-causal-dilated": ((21,), 2, 1, 3, 3, True),
    "1d-causal-even": ((18,), 2, 2, 4, 2, True),
    "2d": ((7, 9), 2, 2, (3, 4), (2, 1), (True, False)),
    "2d-even": ((8, 6), 2, 1, 4, (2, 1), False),
    "3d": ((4, 5, 6), 1, 1, (3, 2, 3), (1, 2, 2), (False, True, False)),
}


@pytest.mark.parametrize("backend", ["reference", "onnx"])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_natten(name, backend):
    spatial, hq, hkv, ks, dl, causal = CASES[name]
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, *spatial, hq, 16, generator=gen)
    k = torch.randn(2, *spatial, hkv, 16, generator=gen)
    v = torch.randn(2, *spatial, hkv, 16, generator=gen)
    fn = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[len(spatial)]
    with warnings.catch_warnings():
        # NATTEN's CPU path is eager FlexAttention, which warns that it is not compiled.
        warnings.simplefilter("ignore")
        want, want_lse = fn(query=q, key=k, value=v, kernel_size=ks, dilation=dl, is_causal=causal, return_lse=True)
    got, got_lse = SPEC(
        q, k, v, backend=backend, kernel_size=ks, dilation=dl, is_causal=causal, return_lse=True, layout="bthd"
    )
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_lse.float(), want_lse.float(), atol=1e-5, rtol=0)
