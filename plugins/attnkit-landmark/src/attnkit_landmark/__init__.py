"""attnkit plugin for Landmark Attention: Random-Access Infinite Context Length for
Transformers (Mohtashami & Jaggi, arXiv:2305.16300).

Two specs:

* ``landmark``: the training-time grouped softmax. Keys are cut into blocks of
  ``block_size`` positions whose last is a landmark; a query attends its own block's regular
  tokens with a normal softmax, and every earlier block through that block's landmark: the
  outer softmax over the current section and the landmark logits gates an inner softmax over
  each block (:mod:`attnkit_landmark.reference`).
* ``landmark.retrieval``: inference-time block retrieval. Each query and head keeps only the
  ``top_k`` blocks with the largest landmark logit, then runs the same grouped softmax over
  them and its own block.

This module is the entry point: it only declares the specs. torch and numba are imported by
the backend modules on first use, so listing plugins stays fast and a broken backend cannot
break it.
"""

from __future__ import annotations

from attnkit import AttentionSpec, Paper, hookimpl
from attnkit.kernels import standard_backends
from attnkit_landmark.params import LandmarkParams, RetrievalParams

__all__ = ["LANDMARK", "PAPER", "RETRIEVAL", "LandmarkParams", "RetrievalParams"]

PAPER = Paper(
    title="Landmark Attention: Random-Access Infinite Context Length for Transformers",
    arxiv="2305.16300",
)

# No brute-force ``mask``: the grouped softmax is not dense attention under a mask (a block's
# weights are a product of two softmaxes), and the retrieval's blocks depend on q and k. The
# contract's oracle is the float64 reference; the tests hold it to the paper's two softmaxes
# written out per query. A Triton forward for ``landmark`` (none yet for the retrieval), and no
# flex backend: a score_mod needs the per-(query, block) LSE of a first pass (spec S5 (d)), and
# causal landmark attention reads every earlier key, so a BlockMask would skip nothing (README,
# "Backends").
LANDMARK = AttentionSpec(
    name="landmark",
    paper=PAPER,
    description="Grouped softmax: a query attends its own block normally and each earlier block "
    "through the softmax weight of that block's landmark token.",
    params=LandmarkParams,
    backends=standard_backends(
        "attnkit_landmark",
        "landmark_attention",
        numba="numba CPU kernel, one query block per task, current section and landmark-gated blocks "
        "merged by an online softmax; backward recomputes the reference",
        triton="Triton forward, one key block per step folded into an online softmax over the rewritten "
        "logits (CUDA; CPU under TRITON_INTERPRET=1); backward recomputes the reference",
        reference={
            "traceable": True,
            "description": "plain torch: the grouped softmax as one softmax over rewritten logits "
            "(s_u - lse_j + s_L_j), float32/float64, differentiable; the ONNX export path",
        },
    ),
    contract_params="attnkit_landmark.params:contract_params",
    bench="attnkit_landmark.bench:run",
)

RETRIEVAL = AttentionSpec(
    name="landmark.retrieval",
    paper=PAPER,
    description="Landmark block retrieval: each query and head gates only its top-k blocks by landmark "
    "logit, plus its own block.",
    params=RetrievalParams,
    backends=standard_backends(
        "attnkit_landmark",
        "retrieval_attention",
        numba="numba CPU kernel: landmark logits, top-k per query, then only the kept blocks; "
        "backward recomputes the reference",
        reference="plain torch: stable sort of the landmark logits, then the grouped softmax "
        "over the kept blocks, float32/float64, differentiable",
        onnx="the reference with torch.topk (ONNX TopK) in place of the stable sort; used while exporting",
    ),
    contract_params="attnkit_landmark.params:retrieval_contract_params",
    bench="attnkit_landmark.bench:run_retrieval",
    model_prefill="attnkit_landmark.prefill_params:for_model",
)


@hookimpl
def attnkit_register_attention(register):  # type: ignore[no-untyped-def]
    register(LANDMARK)
    register(RETRIEVAL)
