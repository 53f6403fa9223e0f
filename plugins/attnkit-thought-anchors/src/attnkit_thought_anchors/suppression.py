"""Attention suppression of a sentence and its KL effect on later tokens.

To suppress sentence ``i`` its keys ``[start_i, end_i)`` are masked before the softmax in
every head of every layer (the core's :class:`~attnkit.runtime.ScoreEdit` in ``"mask"`` mode
at ``blocks.{l}.attn.hook_scores``); the baseline goes through the same explicit
scores -> softmax -> ``A V`` path (the core's no-op :class:`~attnkit.runtime.ExplicitPath`), so positions the suppression cannot reach
(queries before ``start_i``) give bit-identical logits and a KL of exactly 0.

The released code masks with ``finfo(dtype).min`` added to a causal mask that may hold the
same value (overflow to ``-inf``, and a NaN row when every key is masked). Here masked scores
are ``-inf`` and the core's softmax maps a row with nothing visible to zeros; and a span may
not start at position 0, so every query keeps at least its first key.

Shape legend: ``T`` tokens, ``V`` vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["EPS_LOG", "sentence_kl", "span_effect", "span_logits", "suppression_matrix", "token_kl"]

#: The paper reports ``log(KL + 1e-9)``: zero effect maps to ``log(1e-9)``.
EPS_LOG = 1e-9


def _editor(n_layers: int, span: tuple[int, int] | None, heads: Any) -> Any:
    from attnkit.runtime import ExplicitPath, ScoreEdit

    every = list(range(n_layers))
    if span is None:  # the baseline: the same explicit path, nothing edited
        return ExplicitPath(every)
    return ScoreEdit(every if heads is None else heads, span, mode="mask")


def span_logits(
    model: Any,
    ids: torch.Tensor,
    span: tuple[int, int] | None,
    *,
    heads: Any = None,
    extra: Sequence[Any] = (),
) -> torch.Tensor:
    """Logits ``(T, V)`` float32 of ``ids (1, T)`` with the keys of ``span`` masked.

    :param model: a transformers causal LM :func:`attnkit.patch` supports.
    :param span: ``(start, end)`` absolute key positions, ``start >= 1``; ``None`` suppresses
        nothing (the baseline, through the same code path).
    :param heads: ``None`` for every head of every layer, else ``{layer: [head, ...]}``.
    :param extra: more run-time analyses for the same forward (a capture of the patterns).
    :raises ValueError: for ``ids`` not ``(1, T)`` or a span outside ``[1, T]``.
    """
    import attnkit

    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"ids must be (1, T), got {tuple(ids.shape)}")
    t = ids.shape[1]
    if span is not None:
        s, e = int(span[0]), int(span[1])
        if not 1 <= s < e <= t:
            raise ValueError(
                f"span ({s}, {e}) must satisfy 1 <= start < end <= {t} (T): the first key is never masked, "
                "so no query loses every key"
            )
        span = (s, e)
    n_layers = int(model.config.num_hidden_layers)
    with torch.no_grad(), attnkit.patch(model, "dense", analyses=[_editor(n_layers, span, heads), *extra]):
        out = model(input_ids=ids)
    return out.logits[0].float()


def token_kl(base: torch.Tensor, edited: torch.Tensor, temperature: float = 1.0, chunk: int = 64) -> torch.Tensor:
    """``KL(p_base || p_edited)`` of every position, exact over the whole vocabulary.

    :param base: logits ``(T, V)`` of the unedited run.
    :param edited: logits ``(T, V)`` of the edited run.
    :param temperature: both distributions are ``softmax(logits / temperature)``.
    :param chunk: positions per float64 block (bounds memory for a large vocabulary).
    :returns: ``(T,)`` float64, ``>= 0`` (clamped: rounding can give ``-1e-17``).
    """
    if base.shape != edited.shape or base.dim() != 2:
        raise ValueError(
            f"base and edited must be (T, V) of one shape, got {tuple(base.shape)} and {tuple(edited.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    out = torch.empty(base.shape[0], dtype=torch.float64)
    for a in range(0, base.shape[0], chunk):
        lp = torch.log_softmax(base[a : a + chunk].double() / temperature, -1)
        lq = torch.log_softmax(edited[a : a + chunk].double() / temperature, -1)
        out[a : a + chunk] = (lp.exp() * (lp - lq)).sum(-1)
    return out.clamp_min(0.0)


def _token_rows(lo: int, hi: int) -> slice:
    # the distribution of token t is the logit row t - 1
    return slice(lo - 1, hi - 1)


def span_effect(kl: torch.Tensor, lo: int, hi: int) -> float:
    """Mean KL over the distributions of tokens ``lo .. hi-1`` (logit rows ``lo-1 .. hi-2``).

    :param kl: ``(T,)`` per logit row (:func:`token_kl`).
    :raises ValueError: unless ``1 <= lo < hi <= T``.
    """
    if not 1 <= lo < hi <= kl.shape[0]:
        raise ValueError(f"token range ({lo}, {hi}) must satisfy 1 <= lo < hi <= {kl.shape[0]} (T)")
    return float(kl[_token_rows(lo, hi)].mean())


def sentence_kl(kl: torch.Tensor, spans: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sentence: mean KL of its tokens' distributions, and the paper's mean
    ``log(KL + 1e-9)``.

    :param kl: ``(T,)`` per logit row (:func:`token_kl`).
    :param spans: absolute token spans, ``start >= 1``.
    :returns: two ``(n,)`` float64 tensors.
    """
    for s, e in spans:
        if not 1 <= s < e <= kl.shape[0]:
            raise ValueError(f"spans: ({s}, {e}) must satisfy 1 <= start < end <= {kl.shape[0]} (T)")
    mean = torch.empty(len(spans), dtype=torch.float64)
    logm = torch.empty(len(spans), dtype=torch.float64)
    for j, (s, e) in enumerate(spans):
        part = kl[_token_rows(s, e)]
        mean[j] = part.mean()
        logm[j] = torch.log(part + EPS_LOG).mean()
    return mean, logm


def suppression_matrix(
    model: Any,
    ids: torch.Tensor,
    spans: Sequence[tuple[int, int]],
    base: torch.Tensor,
    temperature: float,
    progress: Any = None,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The paper's causal matrix: suppress each sentence ``i`` in turn.

    :param spans: absolute token spans of the sentences (``start >= 1``).
    :param base: baseline logits ``(T, V)`` (:func:`span_logits` with ``span=None``).
    :param progress: optional ``iterable -> iterable`` wrapper (a progress bar).
    :returns: ``(kl, log_kl, per_token)``: ``(n, n)`` matrices, row = affected sentence ``j``,
        column = suppressed sentence ``i``, NaN for ``j <= i``; and each suppression's ``(T,)``
        per-row KL.
    """
    n = len(spans)
    kl_m = torch.full((n, n), float("nan"), dtype=torch.float64)
    log_m = torch.full((n, n), float("nan"), dtype=torch.float64)
    per_token = []
    cols = range(n) if progress is None else progress(range(n))
    for i in cols:
        kl = token_kl(base, span_logits(model, ids, spans[i]), temperature)
        per_token.append(kl)
        mean, logm = sentence_kl(kl, spans)
        kl_m[i + 1 :, i] = mean[i + 1 :]
        log_m[i + 1 :, i] = logm[i + 1 :]
    return kl_m, log_m, per_token
