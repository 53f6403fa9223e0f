"""Triton forward against dense float64 attention under the brute-force mask.

Without CUDA these run under the Triton interpreter (see conftest.py): tiny float32 shapes and
16-wide tiles so query tiles and key blocks cross group borders.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from _sinklora_oracle import dense_oracle, inputs

from attnkit import CallInfo
from attnkit_sinklora import SF_ATTN, gpu
from attnkit_sinklora.params import SFAttnParams

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# (q shape (B, Hq, T, D), Hkv, Dv, params, is_causal)
CASES = {
    "default-causal": ((2, 2, 37, 16), 2, 16, {}, True),
    "sinks-after-group": ((1, 2, 40, 8), 1, 12, {"group_size": 6, "n_sink": 20}, False),
    "shifted-gqa-split": ((1, 6, 35, 8), 3, 8, {"group_size": 9, "n_sink": 4, "shifted": True}, True),
    "shifted-noncausal": ((1, 4, 33, 8), 2, 8, {"group_size": 20, "n_sink": 2, "shifted": True}, False),
}


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu.TRITON, "interpreter_blocks", (16, 16))


def _refusal() -> str | None:
    return gpu.TRITON.can_run(CallInfo(device=DEVICE, dtype=torch.float32, q_shape=(1, 2, 16, 16)))


@pytest.mark.parametrize("case", list(CASES))
def test_forward_matches_dense_oracle(case: str) -> None:
    if (reason := _refusal()) is not None:
        pytest.skip(reason)
    shape, hkv, dv, kw, causal = CASES[case]
    q, k, v = (x.to(DEVICE) for x in inputs(shape, hkv, dv=dv, dtype=torch.float32))
    out, lse = SF_ATTN(q, k, v, backend="triton", is_causal=causal, return_lse=True, **kw)
    want, want_lse = dense_oracle(q.cpu(), k.cpu(), v.cpu(), SFAttnParams(**kw), causal, shape[-1] ** -0.5)
    assert lse.dtype == torch.float32
    torch.testing.assert_close(out.cpu().double(), want, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse.cpu().double(), want_lse, atol=2e-5, rtol=2e-5)


def test_refuses_gradients() -> None:
    q, k, v = (x.requires_grad_() for x in inputs((1, 2, 8, 8), 2, dtype=torch.float32))
    with pytest.raises(RuntimeError, match="no backward pass"):
        SF_ATTN(q, k, v, backend="triton")
