"""attnkit plugin for LongHeads: Multi-Head Attention is Secretly a Long Context Processor
(arXiv:2402.10685): training-free, per-head chunk selection.

Keys are split into chunks; each query and head keeps the first chunk, its local chunks and
the top chunks by query-chunk-key correlation (:mod:`attnkit_longheads.selection`), and
attends only to their keys, optionally at re-indexed (compact) RoPE positions
(:mod:`attnkit_longheads.positions`).

This module is the entry point: it only declares the spec. torch, numba and triton are
imported by the backend modules on first use, so listing plugins stays fast and a broken
backend cannot break it.
"""

from __future__ import annotations

from attnkit import AttentionSpec, Paper, hookimpl
from attnkit.kernels import standard_backends
from attnkit_longheads.params import LongheadsParams

__all__ = ["LONGHEADS", "PAPER", "LongheadsParams"]

PAPER = Paper(
    title="LongHeads: Multi-Head Attention is Secretly a Long Context Processor",
    arxiv="2402.10685",
)

LONGHEADS = AttentionSpec(
    name="longheads",
    paper=PAPER,
    description="Per head and query: the first chunk, the local chunks and the top chunks by "
    "query-chunk correlation, attended at compact positions (training-free).",
    params=LongheadsParams,
    backends=standard_backends(
        "attnkit_longheads",
        "longheads_attention",
        numba="torch selection, then a numba CPU kernel per query row over its chosen chunks' keys "
        "(per-chunk query rotation for rope_theta); backward recomputes the reference",
        triton="torch selection, then a Triton forward with one program per query row over its chosen "
        "chunks' contiguous keys (per-chunk query rotation for rope_theta); backward recomputes the reference",
        reference="plain torch: the selection as a dense mask, then dense attention under it "
        "(re-rotated logits for rope_theta); float32/float64",
        onnx="traceable selection, then each query over its chunks' keys (gathered_attention); "
        "no rope_theta; used while exporting",
    ),
    # No brute-force ``mask``: the spec's mask hook sees only shapes, and the selection
    # depends on q, k and v. The contract's oracle is the float64 reference; the plugin's
    # tests hold that to a brute-force selection written out in Python.
    validate="attnkit_longheads.params:validate",
    contract_params="attnkit_longheads.params:contract_params",
    expected_failed_checks={
        "check_output_shape_dtype_device": "representation='attention' (the paper's chunk key) scores the "
        "mean chunk output against the keys, so it needs value dim == head dim; the check uses Dv=8, D=16 "
        "and the spec refuses with a ValueError (representation='mean' has no such limit)",
    },
    bench="attnkit_longheads.bench:run",
    model_prefill="attnkit_longheads.prefill_params:for_model",
)


@hookimpl
def attnkit_register_attention(register):  # type: ignore[no-untyped-def]
    register(LONGHEADS)
