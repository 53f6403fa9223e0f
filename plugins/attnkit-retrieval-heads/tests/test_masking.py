"""Head masking = uniform attention: a masked head outputs the mean of V over the visible
prefix (prefill and decode), unmasked heads are untouched."""

from __future__ import annotations

import pytest
import torch
from _retrieval_helpers import VOCAB, tiny_llama

import attnkit
from attnkit.runtime import Capture
from attnkit_retrieval_heads.detect import mask_heads, random_heads


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return tiny_llama(heads=4, kv_heads=2, layers=2)


def _ids(length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(seed))


def test_masked_head_is_prefix_mean_of_v_prefill(model) -> None:  # type: ignore[no-untyped-def]
    x = _ids(12)
    sites = ["blocks.{l}.attn.hook_v", "blocks.{l}.attn.hook_z"]
    clean = Capture(sites)
    with torch.no_grad(), attnkit.patch(model, analyses=[clean]):
        model(x)
    cap = Capture(sites)
    with torch.no_grad(), attnkit.patch(model, analyses=[*mask_heads([(0, 1), (0, 2)]), cap]):
        model(x)
    z = cap.first("blocks.0.attn.hook_z")  # (B, Hq, T, D)
    v = cap.first("blocks.0.attn.hook_v").to(torch.float64)  # (B, Hkv, T, D)
    g = 2
    counts = torch.arange(1, x.shape[1] + 1, dtype=torch.float64).view(-1, 1)
    for h in (1, 2):
        want = v[0, h // g].cumsum(0) / counts
        # the adapter's explicit path takes the softmax in float32: float32 tolerance
        torch.testing.assert_close(z[0, h].to(torch.float64), want, atol=1e-6, rtol=1e-6)
    # unmasked heads of the masked layer see the same inputs: unchanged
    zc = clean.first("blocks.0.attn.hook_z")
    torch.testing.assert_close(z[0, [0, 3]], zc[0, [0, 3]], atol=1e-6, rtol=1e-6)
    # and the mask really changed the masked heads
    assert (z[0, 1] - zc[0, 1]).abs().max() > 1e-3


def test_masked_head_is_prefix_mean_of_v_decode(model) -> None:  # type: ignore[no-untyped-def]
    from transformers import DynamicCache

    x = _ids(10, seed=1)
    cap = Capture(["blocks.1.attn.hook_v@decode", "blocks.1.attn.hook_z@decode"])
    with torch.no_grad(), attnkit.patch(model, analyses=[*mask_heads({1: [3]}), cap]):
        cache = DynamicCache()
        model(x, cache=cache, use_cache=True)
        model(torch.tensor([[5]]), cache=cache, use_cache=True)
    z = cap.last("blocks.1.attn.hook_z")  # (1, Hq, 1, D)
    v = cap.last("blocks.1.attn.hook_v")  # (1, Hkv, 11, D): the whole cache at decode
    assert v.shape[2] == 11
    torch.testing.assert_close(z[0, 3, 0], v[0, 1].mean(0), atol=1e-6, rtol=1e-6)


def test_mask_heads_forms() -> None:
    assert mask_heads([]) == []
    (edit,) = mask_heads([(3, 1), (3, 0), (5, 2)])
    assert edit.mode == "uniform" and edit.heads == {3: [0, 1], 5: [2]}
    with pytest.raises(ValueError, match="layer"):
        mask_heads([(-1, 0)])


def test_random_heads_exclusion_and_seed() -> None:
    top = [(0, 0), (1, 1), (2, 2)]
    a = random_heads(4, 3, 5, exclude=top, seed=7)
    assert a == random_heads(4, 3, 5, exclude=top, seed=7)
    assert len(set(a)) == 5 and not set(a) & set(top)
    assert all(0 <= layer < 4 and 0 <= h < 3 for layer, h in a)
    assert random_heads(4, 3, 9, exclude=top, seed=1) == sorted(
        (layer, h) for layer in range(4) for h in range(3) if (layer, h) not in top
    )
    with pytest.raises(ValueError, match=r"k=10 .* only 9"):
        random_heads(4, 3, 10, exclude=top)
