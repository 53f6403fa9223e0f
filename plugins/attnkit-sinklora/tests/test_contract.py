"""The attnkit contract suite on SF-Attn.

Every backend except ``flex``: compiled FlexAttention recompiles for each of the suite's
shapes, about ten minutes for the whole suite on a 2-core CPU. It is covered here by
``test_flex.py`` against the same float64 oracle, and by ``attnkit check attnkit-sinklora``,
which runs the full suite on every backend. ``triton`` runs under the Triton interpreter
without CUDA (about a minute).
"""

from __future__ import annotations

import pytest

from attnkit_contract import AttentionContract
from attnkit_sinklora import SF_ATTN


class TestSFAttnContract(AttentionContract):
    @pytest.fixture
    def impl(self):  # type: ignore[no-untyped-def]
        return SF_ATTN

    @pytest.fixture
    def backends(self, impl):  # type: ignore[no-untyped-def]
        return [b.name for b in impl.backends if b.name != "flex"]
