"""Pure helpers of ``ring`` in one process, against independent oracles.

- :func:`chunked_attention` (the per-block attention, in query-row chunks) equals one call of
  attnkit's float64 dense reference over all rows, for budgets that force every chunking,
  causal (bottom-right aligned) and not, ``Tq <= Tk`` and ``Tq > Tk``, MHA and GQA, and keeps
  the reference's non-finite rule.
- :func:`ring_send_bytes` equals the bytes of the key and value blocks a rank holds at each
  ring step, built from :func:`shard_bounds` and the tensors' own ``numel * element_size``
  (what ``count_sent_bytes`` counts in the 2-process test).
"""

from __future__ import annotations

import pytest
import torch

from attnkit.reference import attention as dense
from attnkit_ring.comm import ring_send_bytes
from attnkit_ring.distributed import chunked_attention, shard_bounds


def _qkv(b=2, hq=4, hkv=2, tq=11, tk=11, d=8, dv=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, hq, tq, d, generator=g, dtype=torch.float64),
        torch.randn(b, hkv, tk, d, generator=g, dtype=torch.float64),
        torch.randn(b, hkv, tk, dv, generator=g, dtype=torch.float64),
    )


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize(("tq", "tk", "hq", "hkv"), [(11, 11, 4, 2), (5, 13, 4, 4), (13, 5, 3, 1), (1, 7, 2, 2)])
@pytest.mark.parametrize("budget", [1, 2 * 4 * 13 + 1, 2 * 4 * 3 * 13, None])
def test_chunked_attention_equals_one_dense_call(is_causal, tq, tk, hq, hkv, budget):
    q, k, v = _qkv(hq=hq, hkv=hkv, tq=tq, tk=tk)
    want, want_lse = dense(q, k, v, is_causal=is_causal, return_lse=True)
    got, lse = chunked_attention(q, k, v, is_causal=is_causal, max_logits=budget)
    assert got.shape == want.shape and lse.shape == want_lse.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # rows with no key (Tq > Tk, causal) are -inf in both; assert_close treats equal infs as equal
    torch.testing.assert_close(lse, want_lse, rtol=0, atol=1e-12)


def test_chunked_attention_keeps_the_non_finite_rule():
    # A NaN key at position 6: causal rows 0..5 may not see it and stay finite, rows 6.. are NaN.
    q, k, v = _qkv(tq=10, tk=10)
    k[:, :, 6] = float("nan")
    want, want_lse = dense(q, k, v, is_causal=True, return_lse=True)
    got, lse = chunked_attention(q, k, v, is_causal=True, max_logits=2 * 4 * 10 * 3)  # 3 rows per chunk
    assert torch.isfinite(got[:, :, :6]).all() and torch.isnan(got[:, :, 6:]).all()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12, equal_nan=True)
    torch.testing.assert_close(lse, want_lse, rtol=0, atol=1e-12, equal_nan=True)


def test_chunked_attention_refuses_a_budget_below_one():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="max_logits must be >= 1, got 0"):
        chunked_attention(q, k, v, max_logits=0)


def _blocks(total, world, *, b, hkv, d, dv, dtype):
    """The K and V shard tensors each rank holds, as the ring sends them."""
    out = []
    for r in range(world):
        start, stop = shard_bounds(total, world, r)
        out.append(
            (torch.empty(b, hkv, stop - start, d, dtype=dtype), torch.empty(b, hkv, stop - start, dv, dtype=dtype))
        )
    return out


@pytest.mark.parametrize(("total", "world"), [(16, 2), (13, 2), (10, 4), (3, 4), (7, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_ring_send_bytes_equals_the_blocks_held_at_each_step(total, world, dtype):
    b, hkv, d, dv = 2, 3, 8, 5
    blocks = _blocks(total, world, b=b, hkv=hkv, d=d, dv=dv, dtype=dtype)
    lengths = [kb.shape[2] for kb, _ in blocks]
    for rank in range(world):
        # at step s rank r holds (and sends on) the block that started on rank r - s
        want = [sum(x.numel() * x.element_size() for x in blocks[(rank - s) % world]) for s in range(world - 1)]
        got = ring_send_bytes(
            lengths, rank, batch=b, kv_heads=hkv, head_dim=d, v_head_dim=dv, element_size=blocks[0][0].element_size()
        )
        assert got == want


def test_ring_send_bytes_closed_form_of_the_benchmark_shape():
    # B=1, Hkv=8, T=32768 over 2 ranks, D=64, float32: 2 * 8 * 16384 * 64 * 4 bytes = 64 MiB per step
    assert ring_send_bytes([16384, 16384], 1, batch=1, kv_heads=8, head_dim=64) == [64 * 2**20]
    assert ring_send_bytes([4096] * 4, 0, batch=1, kv_heads=2, head_dim=64) == [4 * 2**20] * 3


def test_ring_send_bytes_refuses_bad_input():
    with pytest.raises(ValueError, match="empty"):
        ring_send_bytes([], 0, batch=1, kv_heads=1, head_dim=1)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\).*rank=2"):
        ring_send_bytes([4, 4], 2, batch=1, kv_heads=1, head_dim=1)
    with pytest.raises(ValueError, match=r"'kv_heads': -1"):
        ring_send_bytes([4, 4], 0, batch=1, kv_heads=-1, head_dim=1)
