"""A 2-layer transformers Llama with a hand-set binding mechanism, for known-answer
interchange tests.

Tokens: one token per bound group ``P(i, k, a)`` (group index ``i``, name ``k``, object ``a``),
a query token ``Q(k)`` and an answer token ``A(a)``; a prompt is ``P(0, ..) ... P(n-1, ..) Q(k_q)``.
The residual stream holds one-hot features (index, name, object, query name, pointer, output).
Block 0's single head lets the query find the group with the same name (content attention in
the lowest RoPE frequencies, which barely rotate over 5 tokens). Then, by construction:

* ``mechanism="positional"``: block 0 copies the found group's *index* into a pointer feature;
  block 1 attends to the group of that index and copies its object to the output feature.
* ``mechanism="reflexive"``: block 0 copies the found group's *object* to the output feature;
  block 1 does nothing.

So patching block 1's input at the last token from a counterfactual moves the answer to the
positional (resp. reflexive) target, and patching block 0's input (the query token's embedding)
moves it to the lexical target, in both models. MLPs are zero.
"""

from __future__ import annotations

import torch

from attnkit_mixing_mechanisms.prompts import MECHANISMS, NAMES, OBJECTS, CounterfactualPair, EncodedPairs

N_GROUPS = 4
M = len(NAMES)  # names and objects per pool (both pools have this size)
assert len(OBJECTS) == M

# residual feature offsets
IDX, KEY, ANS, QKEY, PTR, OUT = 0, N_GROUPS, N_GROUPS + M, N_GROUPS + 2 * M, N_GROUPS + 3 * M, 2 * N_GROUPS + 3 * M
D = 2 * N_GROUPS + 4 * M  # 88
HALF = D // 2
SLOT0 = HALF - M  # q/k slots in the lowest RoPE frequencies: dims SLOT0 .. HALF-1
VOCAB_P = N_GROUPS * M * M
Q0 = VOCAB_P
A0 = VOCAB_P + M
VOCAB = A0 + M
SHARP = 12.0


def pair_token(i: int, k: int, a: int) -> int:
    return (i * M + k) * M + a


def build(mechanism: str) -> torch.nn.Module:
    import transformers

    if mechanism not in ("positional", "reflexive"):
        raise ValueError(mechanism)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=D,
        intermediate_size=8,
        num_hidden_layers=2,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=D,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():
        for prm in model.parameters():
            prm.zero_()
        for mod in model.modules():
            if mod.__class__.__name__.endswith("RMSNorm"):
                mod.weight.fill_(1.0)
        emb = model.model.embed_tokens.weight
        i, k, a = torch.meshgrid(torch.arange(N_GROUPS), torch.arange(M), torch.arange(M), indexing="ij")
        t = ((i * M + k) * M + a).flatten()  # pair_token(i, k, a)
        for offset, feature in ((IDX, i), (KEY, k), (ANS, a)):
            emb[t, offset + feature.flatten()] = 1.0
        for k in range(M):
            emb[Q0 + k, QKEY + k] = 1.0
        l0, l1 = (b.self_attn for b in model.model.layers)
        for k in range(M):  # block 0: query name matches the group's name
            l0.q_proj.weight[SLOT0 + k, QKEY + k] = SHARP
            l0.k_proj.weight[SLOT0 + k, KEY + k] = 1.0
        if mechanism == "positional":
            for i in range(N_GROUPS):
                l0.v_proj.weight[i, IDX + i] = 1.0
                l0.o_proj.weight[PTR + i, i] = 1.0
                l1.q_proj.weight[SLOT0 + i, PTR + i] = SHARP
                l1.k_proj.weight[SLOT0 + i, IDX + i] = 1.0
            for a in range(M):
                l1.v_proj.weight[a, ANS + a] = 1.0
                l1.o_proj.weight[OUT + a, a] = 1.0
        else:
            for a in range(M):
                l0.v_proj.weight[a, ANS + a] = 1.0
                l0.o_proj.weight[OUT + a, a] = 1.0
        for a in range(M):
            model.lm_head.weight[A0 + a, OUT + a] = 10.0
    model.set_attn_implementation("sdpa")
    return model.eval()


def _ids(names: tuple[str, ...], objects: tuple[str, ...], query: int) -> list[int]:
    ks = [NAMES.index(x) for x in names]
    os_ = [OBJECTS.index(x) for x in objects]
    return [pair_token(i, k, a) for i, (k, a) in enumerate(zip(ks, os_))] + [Q0 + ks[query]]


def encode(pairs: list[CounterfactualPair]) -> EncodedPairs:
    """The pairs in the planted model's vocabulary (candidates: the ``A(a)`` tokens)."""
    base = [_ids(p.base.names, p.base.objects, p.base.query) for p in pairs]
    cf = [_ids(p.cf.names, p.cf.objects, p.cf.query) for p in pairs]
    cand = [[A0 + OBJECTS.index(o) for o in p.base.objects] for p in pairs]
    cf_cand = [[A0 + OBJECTS.index(o) for o in p.cf.objects] for p in pairs]
    targets = [[p.targets[m] for m in MECHANISMS] for p in pairs]
    return EncodedPairs(
        torch.tensor(base), torch.tensor(cf), torch.tensor(cand), torch.tensor(cf_cand), torch.tensor(targets)
    )
