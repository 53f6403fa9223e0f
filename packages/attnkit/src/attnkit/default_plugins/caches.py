"""Built-in KV-cache policies: full, sliding window, and sinks + window (StreamingLLM)."""

from __future__ import annotations

from attnkit.cache.params import SinkWindowParams, WindowParams
from attnkit.hookspecs import hookimpl
from attnkit.registry import KVCacheSpec, Paper

FULL = KVCacheSpec(
    name="full",
    description="Keeps every key and value (no eviction); what the other policies reduce to at a large budget.",
    factory="attnkit.cache.builtin:build_full",
)

WINDOW = KVCacheSpec(
    name="window",
    description="Sliding window: the `budget` most recent tokens (int, or ratio of the prompt length).",
    params=WindowParams,
    factory="attnkit.cache.builtin:build_window",
)

SINK_WINDOW = KVCacheSpec(
    name="sink_window",
    paper=Paper(title="Efficient Streaming Language Models with Attention Sinks", arxiv="2309.17453"),
    description="StreamingLLM: the first n_sink tokens plus the most recent ones, `budget` in all; original positions kept.",
    params=SinkWindowParams,
    factory="attnkit.cache.builtin:build_sink_window",
)


@hookimpl
def attnkit_register_caches(register):  # type: ignore[no-untyped-def]
    register(FULL)
    register(WINDOW)
    register(SINK_WINDOW)
