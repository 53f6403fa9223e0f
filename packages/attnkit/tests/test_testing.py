"""attnkit.testing's own helpers: the test-only ``testing.band`` spec is itself held to the
contract suite and to its brute-force mask, ``registered_specs`` registers for a block and
always cleans up, and the word tokenizer counts words."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit import AttentionSpec, Backend
from attnkit.plugins import get_plugins
from attnkit.reference import attention
from attnkit.testing import BAND, BandParams, WordTokenizer, band_brute_force_mask, registered_specs


def test_band_passes_the_contract_suite() -> None:
    # The core's tests lean on testing.band as "some non-dense kernel": it must be a correct one.
    contract = pytest.importorskip("attnkit_contract")
    with registered_specs() as (band,):
        results = contract.check_spec(band, raise_on_failure=False)
    failed = [f"{r.check}: {r.message}" for r in results if r.outcome == "failed"]
    assert not failed
    assert {r.check for r in results if r.outcome == "passed"} >= {"check_bad_inputs"}


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("tq", "tk"), [(7, 7), (2, 7), (1, 5)])
def test_band_matches_dense_attention_under_its_brute_force_mask(causal: bool, tq: int, tk: int) -> None:
    g = torch.Generator().manual_seed(tq * 10 + tk)
    q = torch.randn(2, 4, tq, 8, dtype=torch.float64, generator=g)
    k, v = (torch.randn(2, 2, tk, 8, dtype=torch.float64, generator=g) for _ in range(2))
    allowed = band_brute_force_mask(BandParams(window=2), q.shape, k.shape, causal)
    with registered_specs() as (band,):
        out, lse = attnkit.attention(q, k, v, spec=band.name, window=2, is_causal=causal, return_lse=True)
    want, want_lse = attention(q, k, v, mask=allowed, return_lse=True)
    torch.testing.assert_close(out, want, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(lse, want_lse, atol=1e-12, rtol=1e-12)


def test_band_mask_by_hand() -> None:
    # Square, window 1: the tridiagonal band; causal keeps its lower half (self and one back).
    got = band_brute_force_mask(BandParams(window=1), (1, 1, 4, 2), (1, 1, 4, 2), False).int().tolist()
    assert got == [[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]]
    got = band_brute_force_mask(BandParams(window=1), (1, 1, 4, 2), (1, 1, 4, 2), True).int().tolist()
    assert got == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    # One decode query after 4 cached keys is position 4: it sees 3 and 4.
    got = band_brute_force_mask(BandParams(window=1), (1, 1, 1, 2), (1, 1, 5, 2), True).int().tolist()
    assert got == [[0, 0, 0, 1, 1]]


@pytest.mark.parametrize("window", [0, -1, True, 1.5])
def test_band_params_refuse_bad_windows(window: object) -> None:
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        BandParams(window=window)  # type: ignore[arg-type]


def test_registered_specs_registers_for_the_block_only() -> None:
    attnkit.load_plugins()
    assert BAND.name not in attnkit.registry
    with registered_specs() as (band,):
        assert band.name in attnkit.registry and band.plugin == "attnkit-testing"
        assert any(p.name == "attnkit-testing" for p in get_plugins())
    assert BAND.name not in attnkit.registry
    assert all(p.name != "attnkit-testing" for p in get_plugins())
    # Also after an exception inside the block.
    with pytest.raises(RuntimeError, match="boom"), registered_specs():
        raise RuntimeError("boom")
    assert BAND.name not in attnkit.registry


def test_registered_specs_clash_fails_on_ours_and_leaves_the_installed_ones() -> None:
    clash = AttentionSpec(name="dense", backends=(Backend(name="reference", impl=lambda *a, **k: None),))
    with pytest.raises(ValueError, match="registering dense as 'attnkit-testing' failed"), registered_specs(clash):
        pass
    assert attnkit.get_spec("dense").plugin == "attnkit"  # the built-in is untouched
    assert all(p.name != "attnkit-testing" for p in get_plugins())
    with pytest.raises(TypeError, match="specs must be spec objects"), registered_specs("dense"):  # type: ignore[arg-type]
        pass


def test_word_tokenizer() -> None:
    tok = WordTokenizer()
    ids = tok("The cat sat.\nThe cat", add_special_tokens=False)["input_ids"]
    assert ids == [0, 1, 2, 3, 4, 0, 1]  # words, ".", "\n"; ids by first appearance
    assert tok(" The")["input_ids"] == [0]  # a leading space changes nothing
    assert tok.decode(ids) == "The cat sat . \n The cat"
    assert tok.decode([99]) == "?"
    with pytest.raises(TypeError, match="text must be a str"):
        tok(["The"])  # type: ignore[arg-type]
