"""Parameters of the ``blockrank`` spec: the segment layout, its validation, and the
contract's parameter sets.

BlockRank packs an in-context ranking prompt as segments along the token axis:
``[instruction | document 1 | ... | document n | query]``. The layout is given by
``instruction`` (its length), the document lengths (``documents=(L1, ..., Ln)``, or
``num_documents`` documents of ``document_len`` tokens each) and ``query`` (its length, or
``None``: the query takes every key after the last document, so one layout serves every
sequence length at or above ``instruction + sum(documents)``).

:func:`segment_bounds` is the one definition of the layout every backend reads; the
brute-force mask in :mod:`attnkit_blockrank.masks` re-derives the segments itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from attnkit.paramcheck import check_queries_are_last_keys

__all__ = ["BlockrankParams", "contract_params", "document_lengths", "segment_bounds", "validate"]


def _check_int(name: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "an int or None" if allow_none else "an int"
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


@dataclass(frozen=True)
class BlockrankParams:
    """Parameters of :data:`attnkit_blockrank.BLOCKRANK`: the segment layout of the keys.

    :param instruction: tokens of the instruction segment (block 0), ``>= 0``.
    :param documents: the length of each document segment (each ``>= 1``), in order; or
        ``None`` to use ``num_documents`` x ``document_len``.
    :param num_documents: how many equal documents (with ``document_len``), ``>= 0``.
    :param document_len: tokens per document when ``num_documents`` is given, ``>= 1``.
    :param query: tokens of the query segment (last); ``None`` (default): every key after
        the last document, so the layout fits any length ``>= instruction + sum(documents)``.
    """

    instruction: int = field(default=0, metadata={"min": 0})
    documents: tuple[int, ...] | None = field(default=None, metadata={"contract_invalid": [(0,), (3, -1), "3", 2.5]})
    num_documents: int | None = field(default=None, metadata={"contract_invalid": [-1, 1.5, "2"]})
    document_len: int | None = field(default=None, metadata={"contract_invalid": [0, -2, 1.5]})
    query: int | None = field(default=None, metadata={"contract_invalid": [-1, 2.5, "x"]})

    def __post_init__(self) -> None:
        _check_int("instruction", self.instruction, 0)
        _check_int("num_documents", self.num_documents, 0, allow_none=True)
        _check_int("document_len", self.document_len, 1, allow_none=True)
        _check_int("query", self.query, 0, allow_none=True)
        docs = self.documents
        if docs is not None:
            if isinstance(docs, list):
                docs = tuple(docs)
                object.__setattr__(self, "documents", docs)
            if not isinstance(docs, tuple):
                raise TypeError(
                    f"documents must be a tuple of ints (document lengths) or None, got {type(docs).__name__} {docs!r}"
                )
            for i, n in enumerate(docs):
                if isinstance(n, bool) or not isinstance(n, int):
                    raise TypeError(f"documents[{i}] must be an int length, got {type(n).__name__} {n!r} in {docs!r}")
                if n < 1:
                    raise ValueError(f"documents[{i}] must be >= 1 token, got {n} in {docs!r}")
            if self.num_documents is not None or self.document_len is not None:
                raise ValueError(
                    f"give documents={docs!r} or num_documents/document_len "
                    f"(got num_documents={self.num_documents}, document_len={self.document_len}), not both"
                )
        elif (self.num_documents is None) != (self.document_len is None):
            raise ValueError(
                "num_documents and document_len go together: got "
                f"num_documents={self.num_documents}, document_len={self.document_len}"
            )

    @property
    def fixed_length(self) -> int | None:
        """The one sequence length the layout fits, or ``None`` when ``query`` is ``None``."""
        if self.query is None:
            return None
        return self.instruction + sum(document_lengths(self)) + self.query


def document_lengths(params: BlockrankParams) -> tuple[int, ...]:
    """The document lengths of ``params``, in order."""
    if params.documents is not None:
        return params.documents
    if params.num_documents is None:
        return ()
    assert params.document_len is not None
    return (params.document_len,) * params.num_documents


def segment_bounds(params: BlockrankParams) -> tuple[int, ...]:
    """``(I, b1, ..., bn)``: where each document starts after the instruction, and ``bn`` where
    the query starts. Key ``j`` is in segment ``sum(j >= b for b in bounds)``: 0 is the
    instruction, ``1..n`` the documents, ``n + 1`` the query."""
    out = [params.instruction]
    for n in document_lengths(params):
        out.append(out[-1] + n)
    return tuple(out)


def validate(params: BlockrankParams, q: Any, k: Any, v: Any, is_causal: Any) -> None:
    """Check the layout against ``q (B, Hq, Tq, D)``, ``k (B, Hkv, Tk, D)``; raises
    ``ValueError`` naming the parameters and the sizes seen. Queries are the last ``Tq``
    keys (bottom-right aligned), so ``Tq <= Tk``."""
    check_queries_are_last_keys("blockrank", q, k)
    tk = k.shape[2] if q.dim() == 4 else None
    if not isinstance(tk, int):
        return  # other ranks: the registry reports them; symbolic while exporting
    start = segment_bounds(params)[-1]
    if params.query is None:
        if tk < start:
            raise ValueError(
                f"the layout instruction={params.instruction} + documents {document_lengths(params)} "
                f"needs at least {start} key tokens, but k has Tk={tk} (k {tuple(k.shape)})"
            )
    elif tk != start + params.query:
        raise ValueError(
            f"the layout instruction={params.instruction} + documents {document_lengths(params)} + "
            f"query={params.query} is {start + params.query} tokens, but k has Tk={tk} (k {tuple(k.shape)}); "
            "pass query=None to let the query take the rest"
        )


def contract_params(seq_len: int) -> list[dict[str, Any]]:
    """Parameter sets valid at sequence length ``seq_len`` for the contract suite; the first
    keeps the query open-ended (``query=None``), so it fits every length the ONNX check uses."""
    t = max(int(seq_len), 1)
    sets: list[dict[str, Any]] = [{}]  # no documents: the query segment is everything
    if t >= 9:
        sets.insert(0, {"instruction": 2, "documents": (3, 1, 2)})  # 8 tokens + open query
        sets.append(
            {"instruction": 1, "num_documents": 3, "document_len": (t - 2) // 3, "query": t - 1 - 3 * ((t - 2) // 3)}
        )
    elif t >= 3:
        sets.insert(0, {"instruction": 1, "documents": (1,) * (t - 2)})
    elif t == 2:
        sets.insert(0, {"instruction": 0, "documents": (1,), "query": 1})
    return sets
