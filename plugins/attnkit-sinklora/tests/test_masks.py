"""Properties of the brute-force SF-Attn mask (the oracle every backend is checked against).

The checks come from the spec's list: sinks visible from every row subject to causality, rows
inside a group see exactly ``pos_in_group + 1`` non-sink keys, ``G = T`` gives causal full
attention; plus the S² variant against LongLoRA's cyclic roll (same groups except the wrapped
one, which is split so nothing leaks) and the vectorised masks of the onnx/flex backends.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from attnkit_sinklora.masks import brute_force_mask
from attnkit_sinklora.onnx import sf_mask
from attnkit_sinklora.params import SFAttnParams, group_size


def _mask(params: SFAttnParams, t: int, heads: int = 4, causal: bool = True) -> torch.Tensor:
    """``(H, T, T)`` whatever the variant."""
    m = brute_force_mask(params, (1, heads, t, 8), (1, heads, t, 8), causal)
    return m if m.dim() == 3 else m.expand(heads, t, t)


CASES = list(itertools.product([7, 16, 23], [None, 1, 3, 4], [0, 1, 4], [False, True]))


@pytest.mark.parametrize(("t", "g", "n_sink", "shifted"), CASES)
def test_sinks_visible_subject_to_causality(t: int, g: int | None, n_sink: int, shifted: bool) -> None:
    p = SFAttnParams(group_size=g, n_sink=n_sink, shifted=shifted)
    causal = _mask(p, t)
    full = _mask(p, t, causal=False)
    rows = torch.arange(t)[:, None]
    sinks = torch.arange(min(n_sink, t))[None, :]
    assert bool(causal[:, :, : sinks.shape[1]].eq(sinks <= rows).all())  # the trap: never the future
    assert bool(full[:, :, : sinks.shape[1]].all())
    assert not bool(causal.triu(1).any())


@pytest.mark.parametrize(("t", "g", "n_sink"), [(16, 4, 4), (23, 5, 2), (23, 5, 0), (30, 7, 4)])
def test_rows_see_pos_in_group_plus_one_non_sink_keys(t: int, g: int, n_sink: int) -> None:
    p = SFAttnParams(group_size=g, n_sink=n_sink)
    m = _mask(p, t, heads=1)[0]
    for i in range(t):
        start = (i // g) * g
        if start < n_sink:
            continue  # the group holds sinks: they are counted as sinks
        non_sink = int(m[i, n_sink:].sum())
        assert non_sink == i - start + 1
        assert bool(m[i, start : i + 1].all())


@pytest.mark.parametrize("t", [1, 5, 16, 23])
def test_group_equal_to_length_is_causal_full_attention(t: int) -> None:
    for n_sink in (0, 4):
        m = brute_force_mask(SFAttnParams(group_size=t, n_sink=n_sink), (1, 2, t, 8), (1, 2, t, 8), True)
        assert torch.equal(m, torch.ones(t, t, dtype=torch.bool).tril())
        m = brute_force_mask(SFAttnParams(group_size=t, n_sink=n_sink), (1, 2, t, 8), (1, 2, t, 8), False)
        assert bool(m.all())


def test_sinks_covering_the_sequence_give_full_attention() -> None:
    m = _mask(SFAttnParams(group_size=2, n_sink=9, shifted=True), 9)
    assert torch.equal(m, torch.ones(4, 9, 9, dtype=torch.bool).tril().expand(4, 9, 9))


def test_default_group_is_a_quarter_of_the_sequence() -> None:
    p = SFAttnParams()
    assert [group_size(p, t) for t in (1, 3, 4, 13, 4096)] == [1, 1, 1, 3, 1024]


def _longlora_groups(t: int, g: int) -> torch.Tensor:
    """Group of each original position after LongLoRA's ``roll(-g // 2)``: independent of
    the plugin's arithmetic."""
    rolled = torch.roll(torch.arange(t), -(g // 2))  # rolled[i] = original position at slot i
    grp = torch.empty(t, dtype=torch.long)
    grp[rolled] = torch.arange(t) // g
    return grp


@pytest.mark.parametrize(("t", "g"), [(16, 4), (24, 6), (20, 5), (12, 12)])
def test_shifted_heads_match_longlora_except_the_wrapped_group(t: int, g: int) -> None:
    m = _mask(SFAttnParams(group_size=g, n_sink=0, shifted=True), t, heads=4, causal=False)
    assert torch.equal(m[0], m[1]) and torch.equal(m[2], m[3])
    grp = _longlora_groups(t, g)
    wrapped = grp == grp[0]  # LongLoRA's last group: the sequence end plus its beginning
    same = grp[:, None] == grp[None, :]
    keep = ~wrapped[:, None] & ~wrapped[None, :]
    assert torch.equal(m[2][keep], same[keep])
    # the wrapped group is split in two: its start and end never see each other
    head, tail = torch.arange(t) < g // 2, torch.arange(t) >= t - (g - g // 2)
    assert not bool(m[2][head][:, tail].any()) and not bool(m[2][tail][:, head].any())
    assert bool(m[2][head][:, head].all()) and bool(m[2][tail][:, tail].all())


@pytest.mark.parametrize(("t", "g", "n_sink", "shifted", "causal"), [(*c, cz) for c in CASES for cz in (False, True)])
def test_vectorised_mask_of_onnx_backend_equals_brute_force(
    t: int, g: int | None, n_sink: int, shifted: bool, causal: bool
) -> None:
    p = SFAttnParams(group_size=g, n_sink=n_sink, shifted=shifted)
    if g is not None and g > t:
        pytest.skip("group larger than the sequence")
    want = _mask(p, t, heads=5, causal=causal)
    got = sf_mask(p, torch.empty(1, 5, t, 1), causal)
    assert torch.equal(got, want)
