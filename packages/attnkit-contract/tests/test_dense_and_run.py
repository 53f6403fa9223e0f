"""The whole suite on the built-in ``dense`` spec, and the ``run`` entry point."""

from __future__ import annotations

import pytest

from attnkit import get_spec
from attnkit_contract import ATTENTION_CHECKS, check_spec, run


def test_dense_passes_the_whole_contract():
    results = check_spec(get_spec("dense"))  # raises ContractFailure listing any failure
    by_id = {r.id: r for r in results}
    # Every check that applies to dense ran and passed: none is skipped.
    ran = {r.check for r in results if r.outcome == "passed"}
    assert ran == set(ATTENTION_CHECKS) - {"check_token_axes"}, sorted(set(ATTENTION_CHECKS) - ran)
    assert all(r.outcome == "passed" for r in results), [r.id for r in results if r.outcome != "passed"]
    # Checks that do not apply are not generated: sdpa returns no LSE, dense has one token axis.
    assert "dense.sdpa-check_return_lse" not in by_id and "dense.reference-check_return_lse" in by_id
    assert not any(r.check == "check_token_axes" for r in results)
    assert "dense.sdpa-check_onnx_export" in by_id and "dense.reference-check_onnx_export" not in by_id


def test_check_spec_accepts_a_name():
    results = check_spec("dense", ["reference"], ["check_single_token"])
    assert [(r.id, r.outcome) for r in results] == [("dense.reference-check_single_token", "passed")]


def test_run_rejects_unknown_plugin_listing_installed():
    with pytest.raises(ValueError, match=r"no installed attnkit plugin is called 'attnkit-nope'; installed: .*attnkit"):
        run("attnkit-nope")


def test_run_selects_one_plugin(capsys):
    code = run("attnkit", ["-q", "-k", "check_single_token or check_bad_inputs"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "3 passed" in out  # sdpa and reference single token, reference bad inputs
    assert "deselected" in out
