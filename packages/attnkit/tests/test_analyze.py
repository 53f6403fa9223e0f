"""attnkit analyze: a test-registered analysis (no model loaded) end to end, and the
argument checks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from attnkit import AnalysisSpec
from attnkit.analyze import AnalyzeContext, AnalyzeOutcome, Comparison, main
from attnkit.cli import main as cli_main
from attnkit.testing import registered_specs


@dataclasses.dataclass(frozen=True)
class CountParams:
    """:param n: how many prompts to count (>= 1)."""

    n: int = 3

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be an int >= 1, got {self.n!r}")


SEEN: list[AnalyzeContext] = []


def _count(ctx: AnalyzeContext) -> AnalyzeOutcome:
    """Counts words of its prompts (or of n generated ones); plots nothing heavy."""
    SEEN.append(ctx)
    prompts = ctx.prompts or [f"prompt {i} " * (i + 1) for i in range(ctx.params.n)]
    words = [len(p.split()) for p in prompts]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.bar(range(len(words)), words)
    png = ctx.out_dir / "words.png"
    fig.savefig(png)
    plt.close(fig)
    return AnalyzeOutcome(
        summary={"prompts": len(prompts), "mean words": sum(words) / len(words)},
        results={"words": words},
        tables=[(["prompt", "words"], [[i, w] for i, w in enumerate(words)])],
        figures=[png],
        comparisons=[Comparison("drop the longest", "mean words", 1.5, 2.0, "drop a random one", baseline=2.0, n=3)],
    )


COUNT = AnalysisSpec(
    name="testing.count",
    description="Test-only analysis: words per prompt.",
    params=CountParams,
    analyze=_count,
    default_model="tiny-words",
    models=("tiny-words",),
)


def test_analyze_writes_report_results_and_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    SEEN.clear()
    with registered_specs(COUNT, name="attnkit-testing-analyze"):
        assert cli_main(["analyze", "testing.count", "--out", str(tmp_path), "--param", "n=4", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "mean words" in out and "drop a random one" in out
    ctx = SEEN[-1]
    assert ctx.params.n == 4 and ctx.model_name == "tiny-words" and ctx.prompts is None
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["summary"] == {"prompts": 4, "mean words": (2 + 4 + 6 + 8) / 4}
    assert results["words"] == [2, 4, 6, 8]
    assert results["comparisons"][0]["control_name"] == "drop a random one"
    html = (tmp_path / "report.html").read_text()
    assert "Interventions against their controls" in html and "data:image/png;base64," in html


def test_prompts_file_is_split_on_blank_lines(tmp_path: Path) -> None:
    SEEN.clear()
    f = tmp_path / "p.txt"
    f.write_text("one two\nthree\n\n\nfour\n", encoding="utf-8")
    with registered_specs(COUNT, name="attnkit-testing-analyze"):
        main(["testing.count", "--prompts", str(f), "--out", str(tmp_path / "r"), "--no-progress"])
    assert SEEN[-1].prompts == ["one two\nthree", "four"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["nope"], "no analysis 'nope'; installed: "),
        ([], "name an analysis"),
        (["testing.count", "--param", "n=0"], "--param: n must be an int >= 1, got 0"),
        (["testing.count", "--model", "smollm2"], "--model: analysis 'testing.count' runs on tiny-words"),
        (["testing.count", "--prompts", "/no/such/file"], "--prompts: no such file"),
    ],
)
def test_bad_arguments_fail_before_anything_runs(argv: list[str], needle: str) -> None:
    SEEN.clear()
    with registered_specs(COUNT, name="attnkit-testing-analyze"), pytest.raises(SystemExit) as info:
        main(argv)
    assert needle in str(info.value.code)
    assert not SEEN


def test_list_names_the_analysis_its_model_and_sites(capsys: pytest.CaptureFixture[str]) -> None:
    with registered_specs(COUNT, name="attnkit-testing-analyze"):
        main(["--list"])
        text = capsys.readouterr().out
        main(["--list", "--json"])
        rows = json.loads(capsys.readouterr().out)
    assert "testing.count" in text and "[tiny-words]" in text
    assert "testing.count" in [r["name"] for r in rows]  # beside any installed analysis plugin


def test_an_embedded_model_name_is_required_to_load() -> None:
    ctx = AnalyzeContext(spec=COUNT, params=CountParams(), model_name="tiny-words", prompts=None, out_dir=Path("."))
    with pytest.raises(ValueError, match="is not an embedded model"):
        ctx.load_model()
