"""attnkit plugin for MoH: Multi-Head Attention as Mixture-of-Head Attention.

Paper: "MoH: Multi-Head Attention as Mixture-of-Head Attention" (Jin, Zhu, Yuan, Yan;
arXiv:2410.11842); code: https://github.com/SkyworkAI/MoH.
Shared heads are always on; each token picks ``top_k`` routed heads; per-token gates weight
each head's output before the output projection; a load-balance loss keeps routed heads used.

This module is the entry point: it only declares the spec. torch is imported by
:mod:`attnkit_moh.module` on first use.
"""

from __future__ import annotations

from attnkit import AttentionModuleSpec, Paper, hookimpl
from attnkit_moh.params import MoHParams

__all__ = ["MOH", "PAPER", "MoHParams"]

PAPER = Paper(
    title="MoH: Multi-Head Attention as Mixture-of-Head Attention",
    arxiv="2410.11842",
    url="https://github.com/SkyworkAI/MoH",
)

MOH = AttentionModuleSpec(
    name="moh",
    paper=PAPER,
    description="Mixture-of-Head attention: shared + top-k routed heads per token, gated sum before o_proj; "
    "computes only the selected heads on CPU.",
    params=MoHParams,
    factory="attnkit_moh.module:build",
    from_pretrained="attnkit_moh.module:from_pretrained",
    reduction="attnkit_moh.module:reduction",
    contract_params="attnkit_moh.module:contract_params",
    onnx=True,
    train_eval_differ=False,
    bench="attnkit_moh.bench:run",
)


@hookimpl
def attnkit_register_attention(register):  # type: ignore[no-untyped-def]
    register(MOH)
