"""Built-in KV-cache policies: full, sliding window, sinks + window (StreamingLLM), and the
baselines SnapKV, observed attention, key norm and AdaKV (:mod:`attnkit.cache.baselines`)."""

from __future__ import annotations

from attnkit.cache.baseline_params import AdaKVParams, KeyNormParams, ObservedAttentionParams, SnapKVParams
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

SNAPKV = KVCacheSpec(
    name="snapkv",
    paper=Paper(title="SnapKV: LLM Knows What You are Looking for Before Generation", arxiv="2404.14469"),
    description="SnapKV: the prompt's last `window` queries' attention, max-pooled along the keys, picks the "
    "prompt keys kept per KV head; the `window` newest tokens are always kept, then decoding evicts the lowest score.",
    params=SnapKVParams,
    factory="attnkit.cache.baselines:build_snapkv",
)

OBSERVED_ATTENTION = KVCacheSpec(
    name="observed_attention",
    paper=Paper(
        title="H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models", arxiv="2306.14048"
    ),
    description="Observed attention (kvpress): attention each key received divided by the number of queries that "
    "saw it, over prefill and decoding, per KV head.",
    params=ObservedAttentionParams,
    factory="attnkit.cache.baselines:build_observed_attention",
)

KEY_NORM = KVCacheSpec(
    name="key_norm",
    paper=Paper(title="A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression", arxiv="2406.11430"),
    description="Key norm (kvpress's Knorm): keep the keys of smallest L2 norm per KV head; no queries needed.",
    params=KeyNormParams,
    factory="attnkit.cache.baselines:build_key_norm",
)

ADAKV = KVCacheSpec(
    name="adakv",
    paper=Paper(
        title="Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation for Efficient LLM Inference",
        arxiv="2407.11550",
    ),
    description="AdaKV head-wise budgets over a scorer (SnapKV by default): a layer keeps its budget x Hkv best "
    "keys over all its KV heads jointly (a floor per head); evicted keys are freed.",
    params=AdaKVParams,
    factory="attnkit.cache.baselines:build_adakv",
)


@hookimpl
def attnkit_register_caches(register):  # type: ignore[no-untyped-def]
    register(FULL)
    register(WINDOW)
    register(SINK_WINDOW)
    register(SNAPKV)
    register(OBSERVED_ATTENTION)
    register(KEY_NORM)
    register(ADAKV)
