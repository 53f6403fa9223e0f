"""attnkit eval cache: argument checks, the needle split, the reasoning set, perplexity and
lockstep generation against plain references, and one end-to-end run on a tiny model. Real
SmolLM2 runs are slow-marked."""

from __future__ import annotations

import json
import math

import pytest

from attnkit.evaluate.cache import ROW_KEYS, build_parser, main
from attnkit.evaluate.prompts import make_needle_cases, question_start, split_case
from attnkit.evaluate.tasks import check_answer, make_problem, make_problems, parse_answer, solution_text
from attnkit.evaluate.text import long_text, token_ids
from attnkit.testing import WordTokenizer, torch_threads


def _tiny_lm(vocab: int = 4096):  # type: ignore[no-untyped-def]
    """The shape of attnkit.testing.tiny_causal_lm with a vocabulary large enough for the
    word-level tokenizer on haystack, documentation and arithmetic text."""
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.set_attn_implementation("sdpa")
    return model


# -- arguments ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--budgets", "0"], "--budgets"),
        (["--budgets", "0.5,abc"], "--budgets"),
        (["--budgets", "2.5"], "token count and must be whole"),
        (["--tasks", "needle,nope"], "--tasks must be a comma list of needle, ppl, reasoning"),
        (["--lengths", "1k"], "--lengths"),
        (["--cases", "0"], "--cases"),
        (["--setting", "aware"], "--setting"),
        (["--rerotate", "maybe"], "--rerotate"),
        (["--ppl-chunk", "-1"], "--ppl-chunk"),
    ],
)
def test_bad_arguments_exit_before_the_model_loads(argv: list[str], needle: str, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit):
        main(argv)
    assert needle in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--model", "gpt9"], "--model: 'gpt9' is not an embedded decoder model"),
        (["--model", "minilm"], "not an embedded decoder model"),
        (["--policies", "window,nope"], "--policies: 'nope' not installed"),
        (["--ppl-policies", "nope"], "--ppl-policies: 'nope' not installed"),
        (["--policy-param", "window"], "--policy-param must look like POLICY:NAME=VALUE"),
        (["--policy-param", "nope:x=1"], "--policy-param: ['nope'] not installed"),
        (["--cache-params", "/no/such.json"], "--cache-params: no such file"),
        (["--ppl-file", "/no/such.txt"], "--ppl-file: no such file"),
        (["--lengths", "32"], "--lengths: a needle context needs >= 64 tokens"),
    ],
)
def test_bad_values_exit_with_the_option_named(argv: list[str], needle: str) -> None:
    with pytest.raises(SystemExit, match=None) as info:
        main(argv)
    assert needle in str(info.value)


def test_parser_defaults() -> None:
    args = build_parser().parse_args([])
    assert args.budgets == [0.25, 0.5] and args.tasks == ["needle", "ppl", "reasoning"]
    assert build_parser().parse_args(["--rerotate"]).rerotate == "both"
    assert build_parser().parse_args(["--budgets", "0.5,1024"]).budgets == [0.5, 1024]
    assert build_parser().parse_args(["--tasks", "all"]).tasks == ["needle", "ppl", "reasoning"]


# -- needle split --------------------------------------------------------------------------------
def test_needle_split_keeps_the_tokens_and_cuts_before_the_question() -> None:
    tok = WordTokenizer()
    cases = make_needle_cases(tok, 3, [120, 200], seed=1)
    assert [c.length for c in cases] == [120, 120, 120, 200, 200, 200]
    assert [c.depth for c in cases[:3]] == [0.0, 50.0, 100.0]
    for c in cases:
        assert c.context_ids + c.question_ids == c.input_ids
        question = tok.decode(c.question_ids)
        # the question part starts with the blank line, then the marker; the context has no marker
        assert question.startswith("\n \n Based on the content of the book")
        assert "Based" not in tok.decode(c.context_ids)
        assert c.case.question.split()[-1].rstrip("?") in question
        assert c.case.needle.split()[-1].rstrip(".") in tok.decode(c.context_ids)  # the needle is context


def test_question_start_without_the_marker_raises() -> None:
    tok = WordTokenizer()
    with pytest.raises(ValueError, match="question marker"):
        question_start(tok("no question here")["input_ids"], tok)


def test_split_case_on_a_real_tokenizer_like_split() -> None:
    """BPE-style decoding (no spaces added): a tokenizer whose tokens are characters."""

    class Chars:
        def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
            return {"input_ids": [ord(ch) for ch in text]}

        def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
            return "".join(chr(i) for i in ids)

    from attnkit.data.needles import make_case

    tok = Chars()
    case = make_case(tok, length=400, depth=50.0, seed=3)
    split = split_case(case, tok)
    text = tok.decode(case.input_ids)
    expected = text.index("\n\nBased on the content of the book")
    assert split.cut == expected


# -- reasoning set ---------------------------------------------------------------------------------
def test_problems_are_seeded_and_their_answers_are_the_sums() -> None:
    tok = WordTokenizer()
    a = make_problems(tok, 5, 4, seed=7)
    b = make_problems(tok, 5, 4, seed=7)
    assert [p.input_ids for p in a] == [p.input_ids for p in b]
    assert len({p.question for p in a}) == 5
    for p in a:
        assert p.steps == 4 and p.answer == p.start + sum(p.addends)
        assert all(1 <= x <= 3 for x in (p.start, *p.addends))  # the default max_addend
        assert p.prompt.endswith(f"Problem: {p.question}\nSolution:")
        assert p.prompt.count("The answer is") == 3  # three solved examples
        assert parse_answer(p.reference) == p.answer and check_answer(p, p.reference)
    assert solution_text(4, (3, 5)) == (
        "Start with 4. Step 1: add 3. 4 + 3 = 7. Step 2: add 5. 7 + 5 = 12. The answer is 12."
    )
    assert max(max(p.addends) for p in make_problems(tok, 20, 3, max_addend=2)) == 2


def test_answer_parsing() -> None:
    assert parse_answer("... Step 2: 7 + 5 = 12. The answer is 12. The answer is 3.") == 12
    assert parse_answer("no number") is None
    p = make_problem(WordTokenizer(), 2, seed=0)
    assert not check_answer(p, f"The answer is {p.answer + 1}.")
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        make_problem(WordTokenizer(), 0)


# -- long text ------------------------------------------------------------------------------------
def test_long_text_is_pythons_documentation_and_long_enough() -> None:
    text = long_text()
    assert len(text) > 200_000 and "lambda" in text
    ids = token_ids(WordTokenizer(), 3000)
    assert len(ids) == 3000
    with pytest.raises(ValueError, match="fewer than"):
        token_ids(WordTokenizer(), 10**8)


# -- perplexity and generation against plain references -----------------------------------------
@torch_threads(1)
def test_chunked_perplexity_matches_one_plain_forward() -> None:
    import torch
    from transformers import DynamicCache

    from attnkit.evaluate.generate import perplexity

    model = _tiny_lm(vocab=200)
    ids = torch.randint(0, 200, (150,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    ref = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none")
    for chunk in (20, 37, 150):
        got = perplexity(model, ids, DynamicCache(config=model.config), chunk, boundary=100)
        assert got["ppl"] == pytest.approx(math.exp(float(ref.mean())), rel=1e-4)
        assert got["ppl_inside"] == pytest.approx(math.exp(float(ref[:99].mean())), rel=1e-4)
        assert got["ppl_beyond"] == pytest.approx(math.exp(float(ref[99:].mean())), rel=1e-4)
        assert len(got["kv_bytes"]) == math.ceil(150 / chunk)
    # the full cache's bytes after the last forward: 2 layers x K and V x 2 KV heads x 150 x 16 x 4 bytes
    assert got["kv_bytes"][-1] == 2 * 2 * 2 * 150 * 16 * 4


@torch_threads(1)
def test_lockstep_generation_matches_greedy_and_segments_change_nothing_for_the_full_cache() -> None:
    import torch
    from transformers import DynamicCache

    import attnkit
    from attnkit.cache import AttnkitCache, build_policy
    from attnkit.evaluate.generate import generate_lockstep

    model = _tiny_lm(vocab=200)
    prompt = torch.randint(0, 200, (60,), generator=torch.Generator().manual_seed(1)).tolist()
    # plain greedy reference without any cache: the argmax of the whole sequence, token by token
    ref, seq = [], list(prompt)
    with torch.no_grad():
        for _ in range(6):
            token = int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
            ref.append(token)
            seq.append(token)
    with attnkit.patch(model, "dense"):
        caches = {
            "one": DynamicCache(config=model.config),
            "two": DynamicCache(config=model.config),
            "window": AttnkitCache(build_policy("window", budget=16), config=model.config),
        }
        out = generate_lockstep(model, [prompt], {k: caches[k] for k in ("one", "window")}, 6, set())
        split = generate_lockstep(model, [prompt[:40], prompt[40:]], {"two": caches["two"]}, 6, set())
    assert out["one"]["ids"] == ref and split["two"]["ids"] == ref
    assert out["one"]["decode_steps"] == 5 and out["one"]["error"] is None
    # bytes after each forward: the prompt, then one more token per decode step (full cache)
    per_token = 2 * 2 * 2 * 16 * 4
    assert out["one"]["kv_bytes"] == [per_token * (60 + i) for i in range(6)] == out["one"]["kv_alloc_bytes"]
    assert len(split["two"]["kv_bytes"]) == 7
    # the window keeps its budget after every forward, with one spare slot for the next token
    assert out["window"]["kv_bytes"] == [per_token * 16] * 6
    assert max(out["window"]["kv_alloc_bytes"]) <= per_token * 17


# -- end to end on a tiny model ------------------------------------------------------------------
@torch_threads(1)
def test_end_to_end_on_a_tiny_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, tok = _tiny_lm(), WordTokenizer()
    argv = [
        "--out", str(tmp_path), "--no-progress", "--policies", "window,snapkv",
        "--budgets", "0.5,1.0", "--lengths", "100", "--cases", "2", "--max-new-tokens", "4",
        "--ppl-lengths", "300", "--ppl-chunk", "100", "--ppl-policies", "window",
        "--problems", "1", "--steps", "1", "--cache-params", "none",
    ]  # fmt: skip
    assert main(argv, model=model, tokenizer=tok) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert "data:image/png;base64" in (tmp_path / "report.html").read_text()
    rows = res["rows"]
    assert all(set(ROW_KEYS) <= set(r) for r in rows)
    by = {(r["task"], r["setting"], r["policy"], r["budget"], r["rerotate"]): r for r in rows}
    for setting in ("question-aware", "question-agnostic"):
        full = by[("needle", setting, "full", None, False)]
        assert full["n"] == 2 and full["decode_vs_full"] == pytest.approx(1.0)
        # a budget of the whole prompt keeps everything: the same answers as the full cache
        assert by[("needle", setting, "window", 1.0, False)]["recalls"] == full["recalls"]
        assert by[("needle", setting, "window", 0.5, False)]["peak_kv_bytes"] < full["peak_kv_bytes"]
        assert ("needle", setting, "snapkv", 0.5, False) in by
    # question-agnostic keeps the question and the answer: more bytes than question-aware at 0.5
    aware, agnostic = (by[("needle", s, "window", 0.5, False)] for s in ("question-aware", "question-agnostic"))
    assert agnostic["mean_kv_bytes"] > aware["mean_kv_bytes"]
    ppl_full = by[("ppl", None, "full", None, False)]
    assert ppl_full["ppl_beyond"] is not None and ppl_full["ppl"] > 1  # 300 tokens > 256 trained positions
    assert by[("ppl", None, "window", 1.0, False)]["ppl"] == pytest.approx(ppl_full["ppl"], rel=1e-4)
    assert by[("reasoning", None, "full", None, False)]["n"] == 1
    assert (tmp_path / "partial_rows.json").is_file()


@torch_threads(1)
def test_rerotated_rows_match_the_full_cache_when_nothing_is_evicted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, tok = _tiny_lm(), WordTokenizer()
    argv = [
        "--out", str(tmp_path), "--no-progress", "--tasks", "ppl", "--ppl-policies", "sink_window",
        "--ppl-budgets", "200,1.0", "--ppl-lengths", "200", "--ppl-chunk", "50", "--rerotate",
    ]  # fmt: skip
    assert main(argv, model=model, tokenizer=tok) == 0
    rows = {
        (r["policy"], r["budget"], r["rerotate"]): r
        for r in json.loads((tmp_path / "results.json").read_text())["rows"]
    }
    full = rows[("full", None, False)]["ppl"]
    # a cache as large as the text keeps contiguous positions: re-rotation changes nothing
    for key in (("sink_window", 200, True), ("sink_window", 1.0, True), ("sink_window", 1.0, False)):
        assert rows[key]["ppl"] == pytest.approx(full, rel=1e-4)
        assert rows[key]["budget_tokens"] == 200


@pytest.mark.slow
def test_quick_run_on_smollm2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("transformers")
    from attnkit.models.pretrained import weights_file

    try:
        weights_file("smollm2")
    except (FileNotFoundError, ImportError, ValueError) as exc:
        pytest.skip(f"smollm2 is not installed: {exc}")
    assert (
        main(["--quick", "--out", str(tmp_path), "--no-progress", "--policies", "sink_window", "--threads", "1"]) == 0
    )
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert {r["task"] for r in rows} == {"needle", "ppl", "reasoning"}


def test_cli_routes_eval_cache(capsys: pytest.CaptureFixture[str]) -> None:
    from attnkit.cli import main as cli_main

    with pytest.raises(SystemExit) as info:
        cli_main(["eval", "cache", "--help"])
    assert info.value.code == 0 and "attnkit eval cache" in capsys.readouterr().out
    assert cli_main(["eval", "nope"]) == 1
    assert "the one evaluation is `attnkit eval cache`" in capsys.readouterr().err
