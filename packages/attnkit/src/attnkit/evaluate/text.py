"""Long real text for the perplexity task of ``attnkit eval cache``: the documentation topics
that ship with Python itself (``pydoc_data.topics``, the text ``help()`` shows: about 460,000
characters of English prose and code examples), concatenated in sorted topic order.

Nothing is downloaded, and the same Python version gives the same text. A plain-text file can
be used instead (``--ppl-file``).

>>> from attnkit.evaluate.text import long_text, token_ids
>>> ids = token_ids(tokenizer, 16384)  # doctest: +SKIP
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

__all__ = ["long_text", "source_line", "token_ids"]


def long_text(path: str | Path | None = None) -> str:
    """The text of ``path`` (UTF-8), or by default Python's own documentation topics."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"ppl text file {str(p)!r} does not exist")
        return p.read_text(encoding="utf-8")
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics))


def source_line(path: str | Path | None = None) -> str:
    """Where the text comes from, for the report."""
    if path is not None:
        return f"file {path}"
    v = sys.version_info
    return f"Python {v.major}.{v.minor}.{v.micro}'s pydoc_data.topics (the help() documentation), sorted topics"


def token_ids(tokenizer: Any, length: int, path: str | Path | None = None) -> list[int]:
    """The first ``length`` token ids of :func:`long_text`.

    :raises ValueError: when the text has fewer than ``length`` tokens (naming both counts).
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise ValueError(f"length must be an int >= 2 tokens, got {length!r}")
    text = long_text(path)
    # Tokenise a prefix long enough for ``length`` tokens (about 4 characters a token; grow if not).
    chars = 6 * length
    while True:
        ids = list(tokenizer(text[:chars], add_special_tokens=False)["input_ids"])
        if len(ids) > length or chars >= len(text):
            break
        chars *= 2
    if len(ids) < length:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than the {length} asked for ({source_line(path)})")
    return ids[:length]
