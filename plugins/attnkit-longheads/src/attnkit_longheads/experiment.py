"""SmolLM2 passkey retrieval beyond the trained length, plain (dense SDPA) against LongHeads.

LongHeads (arXiv:2402.10685) claims that a RoPE model extrapolates without training when each
head attends only a few chunks at re-indexed positions (the paper: LLaMA-2-7B, passkey 100 %
at 128K). This module measures that on the embedded SmolLM2-135M-Instruct
(``attnkit.models.load("smollm2")``): passkey prompts at a length inside
``max_position_embeddings`` and at 2x and 4x of it, each scored with plain SmolLM2 (no patch:
transformers' SDPA at the model's own positions) and under
``attnkit.patch(model, "longheads", attention_params=...)`` with ``chunks * chunk_size``
inside the trained length.

The prompt is the classic passkey task (Mohtashami & Jaggi 2023, the one LongHeads'
``passkey_retrieval/`` uses): an instruction, the same filler sentences repeated, the line
"The pass key is N. Remember it. N is the pass key." at a chosen depth, more filler, then
"What is the pass key? The pass key is". Everything is built from token ids measured with the
model's tokenizer, so a prompt has exactly the requested length (nothing is downloaded).

Scoring is teacher forcing: one forward over prompt + answer tokens; a case is correct when
every answer token is the argmax of the logits before it (no decode step, so LongHeads'
``representation="attention"``, which has no decode path, runs as in the paper's prefill).
Only the logits of the answer positions are computed (``logits_to_keep``), so a 32K prompt
does not materialise a ``(T, vocab)`` matrix.

The kernel gets post-RoPE q / k at positions ``0..T-1`` (a plain, unpadded prefill with no
cache), which is what ``rope_theta`` in the spec assumes.

Cost is measured two ways: the whole forward (seconds per token at each length, dense and
LongHeads), and one attention call at SmolLM2's shape (``(1, 9, T, 64)`` queries, 3 KV heads)
split into LongHeads' selection and kernel, beside ``scaled_dot_product_attention``.

Run: ``python -m attnkit_longheads.experiment --out results/smollm2_passkey.json``
(``--help`` for the lengths and case counts). Results go to JSON after every case.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "FILLER",
    "PasskeyCase",
    "main",
    "make_passkey_case",
    "passkey_key",
    "run",
    "summarize",
    "teacher_forced",
]

INSTRUCTION = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there."
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
QUESTION = "What is the pass key? The pass key is"


def _needle(key: str) -> str:
    return f"The pass key is {key}. Remember it. {key} is the pass key."


def passkey_key(seed: int, digits: int = 5) -> str:
    """A ``digits``-digit passkey (no leading zero), the same for the same ``seed``."""
    if isinstance(digits, bool) or not isinstance(digits, int) or digits < 1:
        raise ValueError(f"digits must be an int >= 1, got {digits!r}")
    rng = random.Random(seed)
    return str(rng.randrange(10 ** (digits - 1), 10**digits))


@dataclass(frozen=True)
class PasskeyCase:
    """One passkey prompt.

    :ivar input_ids: prompt followed by the answer tokens (what the teacher-forced forward
        reads), ``len == length``.
    :ivar answer_len: the answer tokens are the last ``answer_len`` of ``input_ids``.
    :ivar key: the passkey.
    :ivar length: total tokens (prompt + answer).
    :ivar depth: requested depth of the needle in percent of the filler.
    :ivar needle_token: where the needle starts, in tokens.
    """

    input_ids: list[int]
    answer_len: int
    key: str
    length: int
    depth: float
    needle_token: int

    @property
    def answer_ids(self) -> list[int]:
        return self.input_ids[-self.answer_len :]


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def make_passkey_case(tokenizer: Any, length: int, depth: float, seed: int = 0, digits: int = 5) -> PasskeyCase:
    """A passkey prompt of exactly ``length`` tokens (answer included).

    The pieces are tokenized separately (each with a leading space after the first) and their
    ids concatenated; filler repeats fill the room, and ``depth`` percent of them go before the
    needle. Plain text, no chat template: the question ends in "The pass key is", which the
    answer completes.

    :param tokenizer: any Hugging Face style tokenizer (``tokenizer(text, add_special_tokens=False)``).
    :param length: total tokens, prompt plus answer.
    :param depth: percent of the filler repeats before the needle, in ``[0, 100]``.
    :param seed: picks the passkey.
    :raises TypeError: for a ``length`` that is not an int.
    :raises ValueError: for a depth outside ``[0, 100]`` or a length with no room for one filler.
    """
    if isinstance(length, bool) or not isinstance(length, int):
        raise TypeError(f"length must be an int number of tokens, got {type(length).__name__}")
    if isinstance(depth, bool) or not isinstance(depth, (int, float)) or not 0 <= depth <= 100:
        raise ValueError(f"depth must be a percentage in [0, 100], got {depth!r}")
    key = passkey_key(seed, digits)
    head = _ids(tokenizer, INSTRUCTION)
    filler = _ids(tokenizer, " " + FILLER)
    needle = _ids(tokenizer, " " + _needle(key))
    question = _ids(tokenizer, " " + QUESTION)
    answer = _ids(tokenizer, " " + key)
    fixed = len(head) + len(needle) + len(question) + len(answer)
    room = length - fixed
    if room < len(filler):
        raise ValueError(
            f"length must be >= {fixed + len(filler)} tokens for a passkey prompt with one filler, got {length}"
        )
    repeats, rest = divmod(room, len(filler))
    before = round(depth / 100.0 * repeats)
    # The remainder is a prefix of one more filler, placed right before the question.
    body = head + filler * before + needle + filler * (repeats - before) + filler[:rest]
    ids = body + question + answer
    assert len(ids) == length
    return PasskeyCase(
        input_ids=ids,
        answer_len=len(answer),
        key=key,
        length=length,
        depth=float(depth),
        needle_token=len(head) + len(filler) * before,
    )


def teacher_forced(model: Any, case: PasskeyCase) -> dict[str, Any]:
    """One forward over ``case.input_ids``; per answer token whether it is the argmax.

    :returns: ``{"correct": all tokens right, "token_accuracy", "predicted": the argmax ids,
        "seconds": forward wall time, "cpu_seconds": this process's CPU time for it (with one
        thread, the cost without the other processes' share of the machine)}``.
    """
    import torch

    ids = torch.tensor([case.input_ids], dtype=torch.long)
    n = case.answer_len
    with torch.no_grad():
        t0, c0 = time.perf_counter(), time.process_time()
        out = model(input_ids=ids, use_cache=False, logits_to_keep=n + 1)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    pred = out.logits[0, :-1].argmax(-1).tolist()  # the logits before each answer token
    want = case.answer_ids
    hits = [int(p == w) for p, w in zip(pred, want)]
    return {
        "correct": all(hits), "token_accuracy": sum(hits) / n, "predicted": pred, "seconds": seconds, "cpu_seconds": cpu,
    }  # fmt: skip


def _depths(n: int, seed: int) -> list[float]:
    """``n`` depths: evenly spread over 10..90 % (one case: 50 %), in a seeded order."""
    if n == 1:
        return [50.0]
    out = [10.0 + 80.0 * i / (n - 1) for i in range(n)]
    random.Random(seed).shuffle(out)
    return out


def summarize(cases: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows ``{"method", "length", "n", "accuracy", "token_accuracy", "s_per_token"}`` (and
    ``"cpu_s_per_token"`` when every record has ``cpu_seconds``) from the per-case records
    (``method``, ``length``, ``correct``, ``token_accuracy``, ``seconds``)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for c in cases:
        groups.setdefault((c["method"], c["length"]), []).append(c)
    rows = []
    for (method, length), members in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        n = len(members)
        rows.append(
            {
                "method": method,
                "length": length,
                "n": n,
                "accuracy": sum(bool(m["correct"]) for m in members) / n,
                "token_accuracy": sum(m["token_accuracy"] for m in members) / n,
                "s_per_token": sum(m["seconds"] for m in members) / (n * length),
            }
        )
        if all("cpu_seconds" in m for m in members):
            rows[-1]["cpu_s_per_token"] = sum(m["cpu_seconds"] for m in members) / (n * length)
    return rows


def time_attention(lengths: Sequence[int], params: dict[str, Any], seed: int = 0) -> list[dict[str, Any]]:
    """One attention call per length at SmolLM2's shape (float32, causal): LongHeads'
    selection, the whole numba call (selection included) and dense SDPA: wall seconds
    (``*_s``) and this process's CPU seconds (``*_cpu_s``)."""
    import torch
    import torch.nn.functional as F

    import attnkit
    from attnkit_longheads.params import LongheadsParams
    from attnkit_longheads.selection import select

    p = LongheadsParams(**params)
    steps = (
        lambda q, k, v: select(q, k, v, p, True, 0.125),
        lambda q, k, v: attnkit.attention(q, k, v, spec="longheads", backend="numba", is_causal=True, **params),
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
    )
    g = torch.Generator().manual_seed(seed)
    rows = []
    for t in lengths:
        q = torch.randn(1, 9, t, 64, generator=g)
        k = torch.randn(1, 3, t, 64, generator=g)
        v = torch.randn(1, 3, t, 64, generator=g)
        wall, cpu = [time.perf_counter()], [time.process_time()]
        for step in steps:
            step(q, k, v)
            wall.append(time.perf_counter())
            cpu.append(time.process_time())
        row: dict[str, Any] = {"length": t}
        for j, name in enumerate(("select", "longheads", "sdpa")):
            row[f"{name}_s"] = wall[j + 1] - wall[j]
            row[f"{name}_cpu_s"] = cpu[j + 1] - cpu[j]
        rows.append(row)
    return rows


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def run(
    *,
    out: Path | None,
    lengths: Sequence[int] | None = None,
    cases: Sequence[int] = (3, 2, 1),
    dense_cases: Sequence[int] | None = None,
    chunk_size: int = 64,
    chunks: int = 8,
    representation: str = "attention",
    attention_timing: bool = True,
    timing_lengths: Sequence[int] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Score plain SmolLM2 and LongHeads on passkey prompts and time them.

    :param lengths: total prompt tokens; default ``(L/2, 2L, 4L)`` for
        ``L = max_position_embeddings``.
    :param cases: LongHeads cases per length (same order as ``lengths``).
    :param dense_cases: plain-model cases per length (default ``cases``); the plain model runs
        on the first ones of the same prompts.
    :param timing_lengths: lengths of the attention-call timing (default ``lengths``).
    :returns: the JSON written to ``out``: config, per-case records, summary rows, attention timing.
    """
    import torch

    import attnkit
    from attnkit.hf.modelconfig import rope_theta, trained_length
    from attnkit.models import load

    model, tok = load("smollm2")
    limit = trained_length(model.config)
    theta = rope_theta(model.config)
    lengths = list(lengths) if lengths is not None else [limit // 2, 2 * limit, 4 * limit]
    cases = list(cases)
    dense_cases = list(dense_cases) if dense_cases is not None else list(cases)
    if not (len(lengths) == len(cases) == len(dense_cases)):
        raise ValueError(
            f"lengths, cases and dense_cases need one entry per length: got {len(lengths)}, {len(cases)} "
            f"and {len(dense_cases)}"
        )
    params = {"chunk_size": chunk_size, "chunks": chunks, "representation": representation, "rope_theta": theta}
    if chunk_size * chunks > limit:
        raise ValueError(
            f"chunks * chunk_size = {chunks * chunk_size} must stay inside max_position_embeddings={limit}"
        )
    data: dict[str, Any] = {
        "model": "SmolLM2-135M-Instruct (attnkit.models.load('smollm2'))",
        "max_position_embeddings": limit,
        "rope_theta": theta,
        "longheads_params": params,
        "torch_threads": torch.get_num_threads(),
        "scoring": "teacher forcing: correct = every answer token is the argmax",
        "cases": [],
    }
    # Warm-up: numba compilation and first-call allocations, outside every timing.
    warm = make_passkey_case(tok, 512, 50.0, seed=10_000 + seed)
    with attnkit.patch(model, "longheads", attention_params=params):
        teacher_forced(model, warm)
    teacher_forced(model, warm)
    for length, n_lh, n_dense in zip(lengths, cases, dense_cases):
        depths = _depths(max(n_lh, n_dense), seed + length)
        for i, depth in enumerate(depths):
            case = make_passkey_case(tok, int(length), depth, seed=seed * 1_000_003 + length + i)
            runs = (["dense"] if i < n_dense else []) + (["longheads"] if i < n_lh else [])
            if i % 2:
                runs.reverse()  # alternate the order, so neither method always runs first
            for method in runs:
                if method == "dense":
                    r = teacher_forced(model, case)
                else:
                    with attnkit.patch(model, "longheads", attention_params=params):
                        r = teacher_forced(model, case)
                rec = {
                    "method": method,
                    "length": int(length),
                    "x_trained": length / limit,
                    "depth": depth,
                    "key": case.key,
                    "predicted": tok.decode(r["predicted"]),
                    **{k: r[k] for k in ("correct", "token_accuracy", "seconds")},
                }
                data["cases"].append(rec)
                data["summary"] = summarize(data["cases"])
                if progress:
                    print(json.dumps(rec), file=sys.stderr, flush=True)
                if out is not None:
                    _write(out, data)
    if attention_timing:
        data["attention_timing"] = time_attention(timing_lengths or lengths, params, seed)
        if progress:
            print(json.dumps(data["attention_timing"]), file=sys.stderr, flush=True)
    if out is not None:
        _write(out, data)
    return data


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of ints, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m attnkit_longheads.experiment``."""
    ap = argparse.ArgumentParser(prog="python -m attnkit_longheads.experiment", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="JSON file written after every case")
    ap.add_argument("--lengths", type=_ints, default=None, help="prompt tokens (default: L/2, 2L, 4L)")
    ap.add_argument("--cases", type=_ints, default=[3, 2, 1], help="LongHeads cases per length")
    ap.add_argument("--dense-cases", type=_ints, default=None, help="plain-model cases per length (default --cases)")
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--representation", default="attention", choices=("attention", "mean"))
    ap.add_argument("--no-attention-timing", action="store_true")
    ap.add_argument(
        "--timing-lengths", type=_ints, default=None, help="attention-call timing lengths (default --lengths)"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    data = run(
        out=a.out,
        lengths=a.lengths,
        cases=a.cases,
        dense_cases=a.dense_cases,
        chunk_size=a.chunk_size,
        chunks=a.chunks,
        representation=a.representation,
        attention_timing=not a.no_attention_timing,
        timing_lengths=a.timing_lengths,
        seed=a.seed,
    )
    for row in data.get("summary", []):
        print(
            f"{row['method']:>9}  T={row['length']:>6}  n={row['n']}  acc={row['accuracy']:.2f}  "
            f"tok_acc={row['token_accuracy']:.2f}  {1e3 * row['s_per_token']:.2f} ms/token"
        )
    for row in data.get("attention_timing", []):
        print(
            f"attention T={row['length']:>6}: longheads {row['longheads_s']:.2f} s "
            f"(selection {row['select_s']:.2f} s), sdpa {row['sdpa_s']:.2f} s (CPU: {row['longheads_cpu_s']:.2f} s, "
            f"{row['select_cpu_s']:.2f} s, {row['sdpa_cpu_s']:.2f} s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
