"""The pytest faces of the suite, run in a nested pytest: ids, strict xfails, the mixin, and
the ``--attnkit-plugin`` filter."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

HEADER = """
import pytest
import badspecs
from attnkit_contract import AttentionContract, parametrize_with_contract
"""


@pytest.fixture
def nested(pytester):
    from pathlib import Path

    pytester.syspathinsert(Path(__file__).parent)
    return pytester


def test_ids_and_strict_xfail(nested):
    nested.makepyfile(
        HEADER
        + """
SPEC = badspecs.make_spec(
    badspecs.wrong_scale,
    name="scaled",
    expected_failed_checks={
        "bad:check_matches_reference": "wrong scale, known",   # really fails -> xfailed
        "reference:check_gqa": "claimed broken, but it works",  # passes -> strict XPASS fails the run
    },
)

@parametrize_with_contract([SPEC])
def test_contract(spec, backend, check):
    check(spec, backend)
"""
    )
    result = nested.runpytest("-k", "check_matches_reference or check_gqa", "-rA")
    result.assert_outcomes(passed=1, xfailed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*XPASS(strict)*claimed broken, but it works*",
            "XFAIL *test_contract?scaled.bad-check_matches_reference? - wrong scale, known",
        ]
    )
    text = result.stdout.str()
    assert "FAILED test_ids_and_strict_xfail.py::test_contract[scaled.bad-check_gqa]" in text
    assert "FAILED test_ids_and_strict_xfail.py::test_contract[scaled.reference-check_gqa]" in text


def test_bound_check_form(nested):
    nested.makepyfile(
        HEADER
        + """
@parametrize_with_contract([badspecs.make_spec(badspecs.good, name="fine")])
def test_contract(spec, check):
    check(spec)
"""
    )
    result = nested.runpytest("-k", "check_single_token or check_gqa")
    result.assert_outcomes(passed=4)


def test_mixin_gives_one_test_per_backend_and_check(nested):
    nested.makepyfile(
        HEADER
        + """
from attnkit import get_spec

class TestDense(AttentionContract):
    @pytest.fixture
    def impl(self):
        return get_spec("dense")

    @pytest.fixture
    def checks(self, impl):
        return ["check_gqa", "check_return_lse", "check_bad_inputs"]
"""
    )
    result = nested.runpytest("-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            "*TestDense::test_contract?sdpa-check_gqa? PASSED*",
            "*TestDense::test_contract?reference-check_return_lse? PASSED*",
            "*TestDense::test_contract?reference-check_bad_inputs? PASSED*",
        ]
    )
    # sdpa declares supports_lse=False: check_return_lse does not apply to it, so no test.
    assert "sdpa-check_return_lse" not in result.stdout.str()


def test_mixin_strict_xfail_and_fallback(nested):
    nested.makepyfile(
        HEADER
        + """
WRONG = badspecs.make_spec(badspecs.wrong_scale, expected_failed_checks={"bad:check_gqa": "known"})

class TestWrong(AttentionContract):
    @pytest.fixture
    def impl(self):
        return WRONG

    @pytest.fixture
    def checks(self, impl):
        return ["check_gqa", "check_matches_reference", "check_single_token"]


class TestLateImpl(AttentionContract):
    # Needs `request`: backends are unknown at collection, so one test runs them all.
    @pytest.fixture
    def impl(self, request):
        return WRONG

    @pytest.fixture
    def checks(self, impl):
        return ["check_gqa"]
"""
    )
    result = nested.runpytest("-v", "-k", "check_gqa or check_matches_reference or check_single_token")
    text = result.stdout.str()
    assert "TestWrong::test_contract[bad-check_gqa] XFAIL" in text
    # T=1 makes the softmax trivial, so the wrong scale passes there.
    assert "TestWrong::test_contract[bad-check_single_token] PASSED" in text
    assert "TestWrong::test_contract[bad-check_matches_reference] FAILED" in text
    assert "TestWrong::test_contract[reference-check_matches_reference] PASSED" in text
    assert "TestLateImpl::test_contract[check_gqa] XFAIL" in text
    assert "TestLateImpl::test_contract[check_matches_reference] SKIPPED" in text


def test_attnkit_plugin_option_filters_and_rejects_unknown(nested):
    nested.makepyfile(
        HEADER
        + """
from attnkit import load_plugins, registry
load_plugins()

@parametrize_with_contract(registry.attention_specs())
def test_contract(spec, backend, check):
    check(spec, backend)
"""
    )
    result = nested.runpytest("--collect-only", "-q", "--attnkit-plugin", "attnkit")
    ids = [line for line in result.stdout.lines if "::test_contract[" in line]
    assert ids and all("[dense." in line for line in ids)
    assert "deselected" in result.stdout.str()
    result = nested.runpytest("--collect-only", "-q", "--attnkit-plugin", "attnkit-no-such-plugin")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*no installed attnkit plugin is called 'attnkit-no-such-plugin'; installed: *attnkit*"]
    )


def test_plugin_sets_triton_interpret_without_cuda(nested, monkeypatch):
    import torch

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    nested.makepyfile("import os\ndef test_env():\n    assert os.environ.get('TRITON_INTERPRET') == '1'\n")
    result = nested.runpytest()
    if torch.cuda.is_available():
        result.assert_outcomes(failed=1)
    else:
        result.assert_outcomes(passed=1)
