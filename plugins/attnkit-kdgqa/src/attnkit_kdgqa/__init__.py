"""attnkit plugin for Key-Driven GQA and its variants.

Paper: "Beyond Uniform Query Distribution: Key-Driven Grouped Query Attention" (Khan,
Khaquan, Tafveez, Samiwala, Raza; arXiv:2408.08454). Three attention module specs:

* ``kdgqa``: query heads allocated to KV heads from the key norms of each forward pass;
* ``dgqa``: the allocation follows the key norms through training (``form="diff"|"ema"``),
  kept in buffers, frozen in eval;
* ``pgqa``: static GQA groups with the paper's noise subtracted in training.

Each converts a trained attnkit ``MultiHeadAttention`` by mean-pooling K/V heads
(``attnkit.modules.from_pretrained_attention``); ``attnkit_kdgqa.uptrain.to_gqa`` gives the
static GQA baseline. This module is the entry point: it only declares the specs; torch is
imported by the implementation modules on first use.
"""

from __future__ import annotations

from attnkit import AttentionModuleSpec, Paper, hookimpl
from attnkit_kdgqa.params import DGQAParams, KDGQAParams, PGQAParams

__all__ = ["DGQA", "KDGQA", "PAPER", "PGQA", "DGQAParams", "KDGQAParams", "PGQAParams"]

__version__ = "0.1.0"

PAPER = Paper(title="Beyond Uniform Query Distribution: Key-Driven Grouped Query Attention", arxiv="2408.08454")

KDGQA = AttentionModuleSpec(
    name="kdgqa",
    paper=PAPER,
    description="GQA whose query heads are allocated to KV heads in proportion to min-max normalised key norms, every forward.",
    params=KDGQAParams,
    factory="attnkit_kdgqa.modules:build_kdgqa",
    from_pretrained="attnkit_kdgqa.modules:from_pretrained_kdgqa",
    reduction="attnkit_kdgqa.modules:reduction_kdgqa",
    contract_params="attnkit_kdgqa.params:kdgqa_contract_params",
)

DGQA = AttentionModuleSpec(
    name="dgqa",
    paper=PAPER,
    description="GQA whose query-head allocation tracks key norms during training (diff or EMA), frozen in eval.",
    params=DGQAParams,
    factory="attnkit_kdgqa.modules:build_dgqa",
    from_pretrained="attnkit_kdgqa.modules:from_pretrained_dgqa",
    reduction="attnkit_kdgqa.modules:reduction_dgqa",
    contract_params="attnkit_kdgqa.params:dgqa_contract_params",
)

PGQA = AttentionModuleSpec(
    name="pgqa",
    paper=PAPER,
    description="Static GQA with the paper's normalised noise subtracted from each group's attention output in training.",
    params=PGQAParams,
    factory="attnkit_kdgqa.modules:build_pgqa",
    from_pretrained="attnkit_kdgqa.modules:from_pretrained_pgqa",
    reduction="attnkit_kdgqa.modules:reduction_pgqa",
    train_eval_differ=True,
    contract_params="attnkit_kdgqa.params:pgqa_contract_params",
)


@hookimpl
def attnkit_register_attention(register):  # type: ignore[no-untyped-def]
    register(KDGQA)
    register(DGQA)
    register(PGQA)
