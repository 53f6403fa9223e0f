"""The shared attnkit contract suite on both specs: the attention contract on ``graph_khop``
(every backend) and the analysis contract on ``graph_attention``'s run-time object."""

from __future__ import annotations

import pytest

import attnkit_contract
from attnkit_graph_attention import GRAPH_ATTENTION, GRAPH_KHOP


class TestGraphKhopContract(attnkit_contract.AttentionContract):
    @pytest.fixture
    def impl(self):  # type: ignore[no-untyped-def]
        return GRAPH_KHOP


@attnkit_contract.parametrize_with_analysis_contract([GRAPH_ATTENTION])
def test_graph_attention_analysis_contract(spec: object, check: object) -> None:
    check(spec)  # type: ignore[operator]
