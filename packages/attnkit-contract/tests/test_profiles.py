"""Contract profiles and tiers: which checks a profile yields, applicability from declared
capabilities, the left-out record, the per-package time table, and `attnkit check`'s lines."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import badspecs
import pytest

from attnkit import Backend
from attnkit_contract import profiles
from attnkit_contract.checks import ATTENTION_CHECKS, applies, yield_contract
from attnkit_contract.timing import format_timing, projection


def _spec(**backend_overrides):  # type: ignore[no-untyped-def]
    """A good spec with a cheap reference, a compiled and an interpreted backend."""
    base = badspecs.make_spec(badspecs.good, name="tiers")
    impl = base.backends[0].impl
    backends = (
        Backend(name="reference", impl=impl, traceable=True),
        Backend(name="compiled", impl=impl, cost=("compile",), **backend_overrides),
        Backend(name="interpreted", impl=impl, cost=("interpreter",)),
    )
    return dataclasses.replace(base, backends=backends)


def _pairs(spec, profile):  # type: ignore[no-untyped-def]
    return set(yield_contract(spec, profile=profile))


def test_full_runs_every_applicable_check() -> None:
    spec = _spec()
    full = _pairs(spec, "full")
    assert {c for b, c in full if b == "compiled"} >= {"check_matches_reference", "check_gqa", "check_gradient"}
    assert ("reference", "check_onnx_export") in full


def test_quick_keeps_one_small_check_per_expensive_backend_and_no_export(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(profiles, "_cuda", lambda: False)
    spec = _spec()
    quick = _pairs(spec, "quick")
    assert {c for b, c in quick if b == "compiled"} == {"check_matches_reference"}
    assert {c for b, c in quick if b == "interpreted"} == {"check_matches_reference"}
    assert not any(c == "check_onnx_export" for _, c in quick)
    assert ("reference", "check_hypothesis_property") in quick  # kept, at a reduced size
    assert profiles.is_reduced(spec, "reference", "check_hypothesis_property", "quick")
    assert profiles.is_reduced(spec, "compiled", "check_matches_reference", "quick")
    assert not profiles.is_reduced(spec, "reference", "check_gqa", "quick")


def test_rest_is_what_quick_leaves_out_or_shrinks(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(profiles, "_cuda", lambda: False)
    spec = _spec()
    full, quick, rest = _pairs(spec, "full"), _pairs(spec, "quick"), _pairs(spec, "rest")
    assert quick | rest == full
    shared = quick & rest
    assert shared and all(profiles.is_reduced(spec, b, c, "quick") for b, c in shared)


def test_interpreter_is_cheap_where_cuda_runs_triton(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(profiles, "_cuda", lambda: True)
    spec = _spec()
    assert {c for b, c in _pairs(spec, "quick") if b == "interpreted"} > {"check_matches_reference"}


def test_quick_records_what_it_left_out() -> None:
    spec = dataclasses.replace(_spec(), name="tiers-recorded")
    list(yield_contract(spec, profile="quick"))
    left = [x for x in profiles.left_out() if x.spec == "tiers-recorded"]
    assert {(x.backend, x.check) for x in left} >= {("compiled", "check_gqa"), ("reference", "check_onnx_export")}
    assert all(x.reason for x in left)


@pytest.mark.parametrize(
    ("change", "check", "backend"),
    [
        ({"differentiable": False}, "check_gradient", "compiled"),
        ({"supports_lse": False}, "check_return_lse", "compiled"),
    ],
)
def test_backend_capabilities_decide_what_applies(change, check, backend) -> None:  # type: ignore[no-untyped-def]
    spec = _spec(**change)
    assert not applies(spec, backend, check)
    assert (backend, check) not in _pairs(spec, "full")
    assert applies(spec, "reference", check)


@pytest.mark.parametrize(
    ("change", "check"),
    [
        ({"causal": False}, "check_causal_no_future"),
        ({"gqa": False}, "check_gqa"),
        ({"onnx": False}, "check_onnx_export"),
        ({"mask": None}, "check_mask_semantics"),
    ],
)
def test_spec_capabilities_decide_what_applies(change, check) -> None:  # type: ignore[no-untyped-def]
    spec = dataclasses.replace(_spec(), **change)
    assert check not in {c for _, c in _pairs(spec, "full")}


def test_token_axes_apply_only_to_multi_axis_specs() -> None:
    one = _spec()
    assert one.spatial_dims == (1,) and not applies(one, "reference", "check_token_axes")
    assert set(ATTENTION_CHECKS) >= {c for _, c in _pairs(one, "full")}


def test_profile_comes_from_the_environment(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("ATTNKIT_CONTRACT_PROFILE", raising=False)
    assert profiles.current_profile() == "full"
    monkeypatch.setenv("ATTNKIT_CONTRACT_PROFILE", "Quick")
    assert profiles.current_profile() == "quick"
    monkeypatch.setenv("ATTNKIT_CONTRACT_PROFILE", "fast")
    with pytest.raises(ValueError, match="ATTNKIT_CONTRACT_PROFILE must be one of quick, full, rest, got 'fast'"):
        profiles.current_profile()


def test_timing_table_flags_budget_and_projects() -> None:
    seconds = {"attnkit": 100.0, "attnkit-contract": 20.0, "cross-package": 30.0, "attnkit-a": 10.0, "attnkit-b": 40.0}
    left = [profiles.LeftOut("s", "attnkit-b", "flex", "check_gqa", "r")] * 3
    text = format_timing(seconds, dict.fromkeys(seconds, 7), {"attnkit-b": 2}, left, budget=30.0, profile="quick")
    rows = {line.split()[0]: line.split() for line in text.splitlines()[2:7]}
    assert rows["attnkit-a"][3] == "ok" and rows["attnkit-b"][3] == "OVER"
    assert rows["attnkit-b"][-2:] == ["2", "3"]
    assert projection(seconds) == (150.0, 25.0, 150.0 + 35 * 25.0)
    assert "= 1025 s (17.1 min)" in text
    assert "2 slow tests were left" in text and "left 3 checks" in text


def test_attnkit_check_prints_a_line_per_check_and_what_quick_left_out() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ATTNKIT_CONTRACT_PROFILE"}
    cmd = [sys.executable, "-m", "attnkit.cli", "check", "attnkit", "--", "-k", "check_single_token or state_dict"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("attnkit check:") and "profile 'quick'" in lines[0]
    rows = [line for line in lines if line.startswith("[")]
    assert len(rows) == 3 and all("passed" in r for r in rows)
    assert any("dense" in r and "sdpa" in r and "check_single_token" in r for r in rows)
    assert any(line.startswith("attnkit check: 3 passed") for line in lines)
    assert "costs export" in done.stdout and "attnkit check attnkit --full" in done.stdout


_TIMED = """
import pytest

def test_fast():
    assert 1 + 1 == 2

@pytest.mark.slow
def test_slow():
    assert 2 + 2 == 4
"""


@pytest.mark.parametrize("workers", [None, "2"], ids=["serial", "xdist"])
def test_timing_table_reports_what_was_left_with_and_without_xdist(tmp_path, workers) -> None:  # type: ignore[no-untyped-def]
    if workers:
        pytest.importorskip("xdist")
    (tmp_path / "test_timed.py").write_text(_TIMED)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "not slow", "--attnkit-timing"]
    cmd += ["-n", workers] if workers else []
    done = subprocess.run([*cmd, str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, check=False, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "attnkit test time per package" in done.stdout
    row = next(line.split() for line in done.stdout.splitlines() if line.startswith("cross-package"))
    assert row[1:2] == ["1"] and row[-2:] == ["1", "0"], row
    assert "1 slow tests were left" in done.stdout
