"""``graph_khop`` inside a model through ``attnkit.patch`` (a tiny random Llama, seeded):
windows that hide nothing reproduce dense logits exactly; a window changes only what it may."""

from __future__ import annotations

import torch

import attnkit
from attnkit.testing import TINY_VOCAB, tiny_causal_lm

SPANS = ((3, 5, 0), (6, 7, 1), (8, 10, 2), (11, 12, 3), (13, 14, 0))
EDGES = ((0, 1), (1, 2), (2, 3))


def _logits(model, ids, attention="dense", **params):  # type: ignore[no-untyped-def]
    kwargs = {"attention_params": params} if params else {}
    with torch.no_grad(), attnkit.patch(model, attention, **kwargs):
        return model(ids).logits


def test_window_hiding_nothing_is_dense_and_k1_changes_only_later_node_rows() -> None:
    model = tiny_causal_lm(seed=0)
    ids = torch.randint(3, TINY_VOCAB, (2, 18), generator=torch.Generator().manual_seed(0))
    want = _logits(model, ids)
    got = _logits(model, ids, "graph_khop", spans=SPANS, edges=EDGES, hops=3)  # diameter 3: nothing hidden
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    k1 = _logits(model, ids, "graph_khop", spans=SPANS, edges=EDGES, hops=1)
    # The first hidden pair is node 2 (position 8) -> node 0 (positions 3, 4): rows before 8 are
    # untouched (causal), row 8 changes.
    torch.testing.assert_close(k1[:, :8], want[:, :8], rtol=0, atol=1e-5)
    assert (k1[:, 8] - want[:, 8]).abs().max() > 1e-4
