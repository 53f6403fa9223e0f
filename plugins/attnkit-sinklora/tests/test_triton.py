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


@pytest.mark.parametrize(
    ("name", "idx", "value"),
    [("q", (0, 1, 6, 3), float("nan")), ("k", (0, 0, 1, 2), float("inf")), ("v", (0, 0, 36, 1), float("-inf"))],
    ids=["q-nan", "k-inf-sink", "v-minus-inf-last-token"],
)
def test_non_finite_input_gives_nan_exactly_in_the_rows_that_see_it(name: str, idx: tuple, value: float) -> None:
    reason = _refusal()
    if reason is not None:
        pytest.skip(reason)
    from attnkit_sinklora.masks import brute_force_mask

    q, k, v = inputs((1, 2, 37, 16), 2, dtype=torch.float32)
    {"q": q, "k": k, "v": v}[name][idx] = value
    params = SFAttnParams()
    out, lse = SF_ATTN(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), backend="triton", is_causal=True, return_lse=True)
    out, lse = out.cpu(), lse.cpu()
    mask = brute_force_mask(params, tuple(q.shape), tuple(k.shape), True)
    bad_q = ~torch.isfinite(q).all(-1)
    bad_kv = ~torch.isfinite(k).all(-1) | ~torch.isfinite(v).all(-1)
    want_nan = bad_q | (mask & bad_kv[:, :, None, :]).any(-1)
    assert want_nan.any() and not want_nan.all()
    assert torch.isnan(out[want_nan]).all() and torch.isnan(lse[want_nan]).all()
    clean = [torch.where(torch.isfinite(x).all(-1, keepdim=True), x, 0.0) for x in (q, k, v)]
    want, want_lse = dense_oracle(*clean, params, True, 16**-0.5)
    torch.testing.assert_close(out[~want_nan].double(), want[~want_nan], atol=1e-4, rtol=0)
    torch.testing.assert_close(lse[~want_nan].double(), want_lse[~want_nan], atol=1e-4, rtol=1e-4)


def test_logits_overflowing_float32_give_nan_rows() -> None:
    reason = _refusal()
    if reason is not None:
        pytest.skip(reason)
    q = torch.full((1, 2, 37, 16), 1e20, device=DEVICE)
    out, lse = SF_ATTN(q, -q, q, backend="triton", is_causal=True, return_lse=True)
    assert torch.isnan(out).all() and torch.isnan(lse).all()
