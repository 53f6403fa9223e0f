"""The suite must be able to fail: each deliberately wrong kernel fails the checks about
its bug, and the correct kernel beside it passes them."""

from __future__ import annotations

import badspecs
import pytest
import torch

from attnkit import AttentionSpec, Backend
from attnkit.reference import attention, causal_mask
from attnkit_contract import ATTENTION_CHECKS, ContractFailure, check_spec
from attnkit_contract.checks import applies, check_mask_semantics, check_matches_reference


def outcomes(spec, checks, backends=("bad", "reference")):
    results = check_spec(spec, list(backends), list(checks), raise_on_failure=False)
    return {(r.backend, r.check): r for r in results}


@pytest.mark.parametrize(
    ("kernel", "checks", "params"),
    [
        pytest.param(
            badspecs.peeks_at_future, ["check_causal_no_future", "check_matches_reference"], None, id="future"
        ),
        pytest.param(
            badspecs.wrong_scale,
            ["check_matches_reference", "check_odd_lengths", "check_hypothesis_property"],
            None,
            id="scale",
        ),
        pytest.param(badspecs.nan_on_masked_rows, ["check_fully_masked_rows"], None, id="nan-rows"),
        pytest.param(badspecs.ignores_gqa, ["check_gqa", "check_matches_reference"], None, id="gqa"),
        pytest.param(badspecs.noisy, ["check_deterministic"], None, id="nondeterministic"),
        pytest.param(badspecs.overflows, ["check_large_logits"], None, id="overflow"),
        pytest.param(badspecs.log2_lse, ["check_return_lse"], None, id="lse"),
        pytest.param(badspecs.mixes_batch, ["check_batch_independence"], None, id="batch"),
        pytest.param(badspecs.ignores_strides, ["check_non_contiguous"], None, id="strides"),
        pytest.param(badspecs.good, ["check_bad_inputs"], badspecs.UncheckedParams, id="params"),
        pytest.param(badspecs.nan_to_finite, ["check_non_finite"], None, id="nan-to-finite"),
        pytest.param(badspecs.spreads_nan, ["check_non_finite"], None, id="nan-spreads"),
    ],
)
def test_wrong_kernel_fails_its_checks(kernel, checks, params):
    spec = badspecs.make_spec(kernel, params=params)
    backends = ("reference",) if checks == ["check_bad_inputs"] else ("bad", "reference")
    got = outcomes(spec, checks, backends)
    for check in checks:
        if check == "check_bad_inputs":
            assert got[("reference", check)].outcome == "failed", got
            assert "window=0: no error raised" in got[("reference", check)].message
            continue
        assert got[("bad", check)].outcome == "failed", (
            f"{check} did not catch {kernel.__name__}: {got[('bad', check)]}"
        )
        assert got[("reference", check)].outcome == "passed", got[("reference", check)]


def test_failure_message_is_useful():
    spec = badspecs.make_spec(badspecs.wrong_scale)
    with pytest.raises(ContractFailure) as info:
        check_spec(spec, ["bad"], ["check_matches_reference"])
    text = str(info.value)
    assert "bad.bad-check_matches_reference FAILED" in text
    assert "float64 oracle" in text and "worst at index" in text and "is_causal=" in text
    assert [r.outcome for r in info.value.results] == ["failed"]


def test_future_peeking_is_named_as_such():
    spec = badspecs.make_spec(badspecs.peeks_at_future)
    (result,) = check_spec(spec, ["bad"], ["check_causal_no_future"], raise_on_failure=False)
    assert "must not read the future" in result.message


def test_nan_rows_reported_as_nan():
    spec = badspecs.make_spec(badspecs.nan_on_masked_rows)
    (result,) = check_spec(spec, ["bad"], ["check_fully_masked_rows"], raise_on_failure=False)
    assert "NaN" in result.message


def test_non_finite_failures_say_which_rows():
    spec = badspecs.make_spec(badspecs.nan_to_finite)
    (result,) = check_spec(spec, ["bad"], ["check_non_finite"], raise_on_failure=False)
    assert "NaN in one q entry" in result.message and "must be NaN in every entry" in result.message
    spec = badspecs.make_spec(badspecs.spreads_nan)
    (result,) = check_spec(spec, ["bad"], ["check_non_finite"], raise_on_failure=False)
    assert "may not attend to any non-finite input but is not finite" in result.message, result.message


def test_non_finite_check_runs_on_every_backend():
    from attnkit_contract.checks import yield_contract

    for spec in (badspecs.make_spec(badspecs.good), badspecs.make_spec(badspecs.good, supports_mask=False)):
        for profile in ("quick", "full"):
            got = {b for b, c in yield_contract(spec, profile=profile) if c == "check_non_finite"}
            assert got == {"bad", "reference"}, (profile, got)


def test_refusing_backend_is_skipped_with_its_reason():
    from attnkit import AttentionSpec, Backend

    spec = AttentionSpec(
        name="refuses",
        backends=(
            Backend(name="gpu-only", impl=badspecs.good, can_run=lambda call: "needs CUDA here"),
            Backend(name="reference", impl=badspecs.good),
        ),
        mask=badspecs.MASK,
    )
    results = check_spec(spec, ["gpu-only"], ["check_matches_reference", "check_gradient"])
    assert [r.outcome for r in results] == ["skipped", "skipped"]
    assert all("needs CUDA here" in r.message for r in results)


def test_missing_backend_module_is_skipped_with_the_import_error():
    from attnkit import AttentionSpec, Backend

    spec = AttentionSpec(
        name="missing",
        backends=(
            Backend(name="numba", impl="attnkit_no_such_module:kernel"),
            Backend(name="reference", impl=badspecs.good),
        ),
        mask=badspecs.MASK,
    )
    (result,) = check_spec(spec, ["numba"], ["check_gqa"])
    assert result.outcome == "skipped" and "ModuleNotFoundError" in result.message


def test_expected_failures_become_xfail_and_strict():
    spec = badspecs.make_spec(
        badspecs.wrong_scale,
        expected_failed_checks={
            "bad:check_matches_reference": "scale bug, issue #1",
            "check_single_token": "claimed broken",
        },
    )
    results = check_spec(
        spec, ["bad", "reference"], ["check_matches_reference", "check_single_token"], raise_on_failure=False
    )
    got = {(r.backend, r.check): r.outcome for r in results}
    assert got[("bad", "check_matches_reference")] == "xfail"
    assert got[("reference", "check_matches_reference")] == "passed"
    # Listed for every backend but only the scale bug breaks it (T=1 makes softmax trivial):
    # a check that passes while expected to fail is an error, like xfail(strict=True).
    assert got[("bad", "check_single_token")] == "xpass"
    assert got[("reference", "check_single_token")] == "xpass"
    with pytest.raises(ContractFailure, match="XPASS"):
        check_spec(spec, ["reference"], ["check_single_token"])


def test_unknown_names_are_rejected():
    spec = badspecs.make_spec(badspecs.good)
    with pytest.raises(ValueError, match="no backend"):
        check_spec(spec, ["nope"])
    with pytest.raises(ValueError, match="unknown check"):
        check_spec(spec, None, ["check_nope"])


def test_every_check_has_a_docstring_and_the_public_signature():
    import inspect

    for name, fn in ATTENTION_CHECKS.items():
        assert name.startswith("check_") and fn.__doc__, name
        assert list(inspect.signature(fn).parameters) == ["spec", "backend", "case"], name


def _best_key_mask(params, q, k, is_causal):  # type: ignore[no-untyped-def]
    """Brute force: each query row keeps its own position and the key of largest q.k (among
    the keys it may see), per query head; (B, Hq, Tq, Tk)."""
    b_n, hq, tq, _ = q.shape
    tk, g = k.shape[2], hq // k.shape[1]
    mask = torch.zeros(b_n, hq, tq, tk, dtype=torch.bool)
    for b in range(b_n):
        for h in range(hq):
            for i in range(tq):
                pos = i + tk - tq
                seen = [j for j in range(tk) if not is_causal or j <= pos]
                best = max(seen, key=lambda j: (float(q[b, h, i] @ k[b, h // g, j]), -j))
                mask[b, h, i, best] = True
                mask[b, h, i, min(pos, tk - 1)] = True
    return mask


def _selecting(pick_max: bool):  # type: ignore[no-untyped-def]
    def kernel(q, k, v, *, params, is_causal, scale, return_lse, mask=None):  # type: ignore[no-untyped-def]
        g = q.shape[1] // k.shape[1]
        s = q.double() @ k.double().repeat_interleave(g, 1).transpose(-1, -2)
        tq, tk = q.shape[2], k.shape[2]
        if is_causal:
            s = s.masked_fill(~causal_mask(tq, tk, device=q.device), float("-inf") if pick_max else float("inf"))
        idx = s.argmax(-1) if pick_max else s.argmin(-1)
        allowed = torch.zeros(s.shape, dtype=torch.bool).scatter(-1, idx[..., None], True)
        diag = torch.arange(tq) + tk - tq
        allowed[..., torch.arange(tq), diag.clamp(max=tk - 1)] = True
        return attention(q, k, v, mask=allowed, scale=scale, return_lse=return_lse)

    return kernel


@pytest.mark.parametrize(("pick_max", "passes"), [(True, True), (False, False)], ids=["right", "wrong-selection"])
def test_input_mask_holds_a_data_dependent_selection(pick_max: bool, passes: bool) -> None:
    # A spec whose allowed keys depend on q and k declares input_mask: the oracle is dense
    # attention under the brute-force selection, and check_mask_semantics applies.
    spec = AttentionSpec(
        name="best_key",
        backends=(Backend(name="reference", impl=_selecting(pick_max), traceable=True),),
        input_mask=_best_key_mask,
        onnx=False,
    )
    assert applies(spec, "reference", "check_mask_semantics")
    if passes:
        check_mask_semantics(spec, "reference")
        check_matches_reference(spec, "reference")
    else:
        with pytest.raises(AssertionError):
            check_mask_semantics(spec, "reference")


def test_mask_and_input_mask_are_exclusive() -> None:
    with pytest.raises(ValueError, match="both mask and input_mask"):
        AttentionSpec(name="both", backends=(Backend(name="reference", impl=badspecs.good),), mask=badspecs.MASK,
                      input_mask=_best_key_mask)  # fmt: skip
