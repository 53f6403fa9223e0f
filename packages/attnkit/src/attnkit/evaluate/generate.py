"""Greedy generation and teacher-forced perplexity for ``attnkit eval cache``, with the KV
cache's size sampled after every forward.

:func:`generate_lockstep` is :func:`attnkit.mainjob.greedy_lockstep` with a prompt given as
segments (one forward each: the context, then the question, for the question-agnostic
setting), a stop test on the generated ids, and the cache's bytes
(:func:`kv_stored_bytes`) recorded after each forward, so the peak and the mean
over the run are known (a lagged policy exceeds its budget between evictions). A cache whose
policy refuses the run (a ``ValueError``, say re-rotation on a model it cannot re-rotate)
is dropped from the step and its error returned; the others go on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["generate_lockstep", "kv_stored_bytes", "perplexity", "stop_ids"]


def kv_stored_bytes(cache: Any) -> int:
    """Bytes of the keys and values ``cache`` holds for real tokens now: for an
    :class:`~attnkit.cache.AttnkitCache` its valid slots only (what the policy keeps, without
    the empty and spare slots :func:`attnkit.cache.bench.kv_nbytes` also counts); for any
    other transformers cache, :func:`~attnkit.cache.bench.kv_nbytes`."""
    from attnkit.cache.bench import kv_nbytes

    policy = getattr(cache, "policy", None)
    layers = getattr(policy, "layers", None)
    if not isinstance(layers, dict):
        return kv_nbytes(cache)
    total = 0
    for state in layers.values():
        per_slot = state.kbuf.shape[-1] * state.kbuf.element_size() + state.vbuf.shape[-1] * state.vbuf.element_size()
        total += int(state.valid.sum()) * per_slot
    return total


def stop_ids(model: Any, tokenizer: Any, texts: Sequence[str] = ("\n", ".\n")) -> set[int]:
    """End-of-sequence ids of ``model`` / ``tokenizer`` plus each of ``texts`` that is one token."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
    for text in texts:
        enc = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(enc) == 1:
            ids.add(int(enc[0]))
    return ids


def generate_lockstep(
    model: Any,
    segments: Sequence[Sequence[int]],
    caches: dict[Any, Any],
    max_new_tokens: int,
    stop: set[int],
    *,
    done: Callable[[list[int]], bool] | None = None,
    rotate: int = 0,
) -> dict[Any, dict[str, Any]]:
    """Every cache answers the prompt ``segments`` greedily, in lockstep: each segment's forward
    for every cache (the order rotating), then one decode step of every cache still answering.

    :param segments: the prompt as token-id lists, one forward each (``[prompt]``, or
        ``[context, question]``).
    :param stop: ids that end an answer (the id is kept in ``ids``).
    :param done: ``done(ids) -> bool`` on the ids generated so far: ends the answer too.
    :returns: ``{key: {"ids", "prefill_s", "decode_s", "decode_steps", "kv_bytes", "kv_alloc_bytes",
        "error"}}``; ``kv_bytes`` holds the bytes of the kept keys and values after each forward
        (:func:`kv_stored_bytes`), ``kv_alloc_bytes`` the bytes allocated (spare slots too), ``prefill_s`` sums the
        segments' forwards, ``error`` is ``None`` or the message of the error that stopped it.
    """
    import torch

    from attnkit.cache.bench import kv_nbytes

    if not segments or any(len(s) == 0 for s in segments):
        raise ValueError(f"segments must be non-empty token-id lists, got lengths {[len(s) for s in segments]}")
    names = list(caches)
    res: dict[Any, dict[str, Any]] = {
        n: {
            "ids": [],
            "prefill_s": 0.0,
            "decode_s": 0.0,
            "decode_steps": 0,
            "kv_bytes": [],
            "kv_alloc_bytes": [],
            "error": None,
        }
        for n in names
    }
    logits: dict[Any, Any] = {}
    active = list(names)

    def order(step: int) -> list[Any]:
        shift = (rotate + step) % len(names)
        return [n for n in names[shift:] + names[:shift] if n in active]

    def forward(n: Any, ids: Any) -> bool:
        try:
            logits[n] = model(input_ids=ids, cache=caches[n], use_cache=True).logits
        except (ValueError, NotImplementedError) as exc:
            res[n]["error"] = f"{type(exc).__name__}: {exc}"
            active.remove(n)
            return False
        res[n]["kv_bytes"].append(kv_stored_bytes(caches[n]))
        res[n]["kv_alloc_bytes"].append(kv_nbytes(caches[n]))
        return True

    with torch.no_grad():
        for seg in segments:
            ids = torch.tensor([list(seg)], dtype=torch.long)
            for n in order(0):
                t0 = time.perf_counter()
                forward(n, ids)
                res[n]["prefill_s"] += time.perf_counter() - t0
        answering = set(active)
        step = 0
        while answering:
            step += 1
            for n in order(step):
                if n not in answering:
                    continue
                t0 = time.perf_counter()
                token = int(logits[n][0, -1].argmax())
                out = res[n]["ids"]
                out.append(token)
                if token in stop or len(out) >= max_new_tokens or (done is not None and done(out)):
                    answering.discard(n)
                elif forward(n, torch.tensor([[token]])):
                    res[n]["decode_steps"] += 1
                else:
                    answering.discard(n)
                res[n]["decode_s"] += time.perf_counter() - t0
    return res


def perplexity(
    model: Any,
    ids: Sequence[int],
    cache: Any,
    chunk: int,
    *,
    boundary: int | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Teacher-forced perplexity of ``ids`` fed in forwards of ``chunk`` tokens through
    ``cache`` (which evicts between them, as during generation).

    Token ``t`` (``t >= 1``) is predicted from the logits at ``t - 1``; the last logits of a
    chunk predict the first token of the next.

    :param boundary: also report the perplexity of the targets before / from this position
        (the model's ``max_position_embeddings``).
    :returns: ``{"ppl", "nll", "tokens", "ppl_inside", "ppl_beyond", "kv_bytes", "seconds"}``
        (``kv_bytes``: :func:`kv_stored_bytes` after each forward)
        (``ppl_inside`` / ``ppl_beyond`` ``None`` without ``boundary`` or without targets there).
    """
    import torch

    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
    if len(ids) < 2:
        raise ValueError(f"ids must hold at least 2 tokens, got {len(ids)}")
    all_ids = torch.tensor([list(ids)], dtype=torch.long)
    n = all_ids.shape[1]
    nll = torch.zeros(n, dtype=torch.float64)  # nll[t]: of token t (t >= 1)
    kv: list[int] = []
    prev_last: Any = None
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            out = model(input_ids=all_ids[:, s:e], cache=cache, use_cache=True)
            logp = torch.log_softmax(out.logits[0].double(), dim=-1)  # (e - s, V)
            if prev_last is not None:
                nll[s] = -prev_last[all_ids[0, s]]
            if e - s > 1:
                nll[s + 1 : e] = -logp[:-1].gather(1, all_ids[0, s + 1 : e].unsqueeze(1)).squeeze(1)
            prev_last = logp[-1]
            kv.append(kv_stored_bytes(cache))
            if progress is not None:
                progress.update(e - s)
    seconds = time.perf_counter() - t0
    targets = nll[1:]

    def ppl(x: Any) -> float | None:
        return math.exp(float(x.mean())) if x.numel() else None

    inside = beyond = None
    if boundary is not None:
        inside, beyond = ppl(nll[1:boundary]), ppl(nll[max(1, boundary) :])
    return {
        "ppl": ppl(targets),
        "nll": float(targets.mean()),
        "tokens": n,
        "ppl_inside": inside,
        "ppl_beyond": beyond,
        "kv_bytes": kv,
        "seconds": seconds,
    }
