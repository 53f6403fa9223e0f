"""Compiled FlexAttention backend against dense float64 attention under the brute-force mask
(inference on CPU; compiles are slow, so few shapes)."""

from __future__ import annotations

import pytest
import torch
from _sinklora_oracle import dense_oracle, inputs

from attnkit import CallInfo
from attnkit_sinklora import SF_ATTN
from attnkit_sinklora.flex import mask_mod
from attnkit_sinklora.masks import brute_force_mask
from attnkit_sinklora.params import SFAttnParams, group_size, shift_of_head


def _skip_if_refused() -> None:
    reason = SF_ATTN.backend("flex").reason_not_to_run(CallInfo(device=torch.device("cpu"), dtype=torch.float32))
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.parametrize(
    ("shape", "hkv", "kw", "causal"),
    [
        ((1, 4, 40, 16), 2, {"shifted": True, "group_size": 9}, True),
        # Another shape is another compile: the second case runs in the slow tier.
        pytest.param((2, 2, 37, 16), 1, {"n_sink": 6}, False, marks=pytest.mark.slow),
    ],
)
def test_forward_matches_dense_oracle(shape: tuple, hkv: int, kw: dict, causal: bool) -> None:
    _skip_if_refused()
    q, k, v = inputs(shape, hkv, dtype=torch.float32)
    out = SF_ATTN(q, k, v, backend="flex", is_causal=causal, **kw)
    want, _ = dense_oracle(q, k, v, SFAttnParams(**kw), causal, shape[-1] ** -0.5)
    torch.testing.assert_close(out.double(), want, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_mask_mod_equals_brute_force(causal: bool) -> None:
    p = SFAttnParams(group_size=5, n_sink=3, shifted=True)
    t, heads = 23, 4
    g = group_size(p, t)
    fn = mask_mod(g, p.n_sink, tuple(shift_of_head(p, h, heads, g) for h in range(heads)), causal)
    hh, qq, kk = torch.meshgrid(torch.arange(heads), torch.arange(t), torch.arange(t), indexing="ij")
    got = fn(torch.zeros_like(hh), hh, qq, kk)
    assert torch.equal(got, brute_force_mask(p, (1, heads, t, 8), (1, heads, t, 8), causal))


def test_refuses_float64_lse_and_grad_on_cpu() -> None:
    cpu = torch.device("cpu")
    assert "float64" in (SF_ATTN.backend("flex").reason_not_to_run(CallInfo(device=cpu, dtype=torch.float64)) or "")
    assert "log-sum-exp" in (
        SF_ATTN.backend("flex").reason_not_to_run(CallInfo(device=cpu, dtype=torch.float32, return_lse=True)) or ""
    )
    assert "requires grad" in (
        SF_ATTN.backend("flex").reason_not_to_run(CallInfo(device=cpu, dtype=torch.float32, requires_grad=True)) or ""
    )
