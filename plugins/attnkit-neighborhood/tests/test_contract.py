"""The attnkit contract suite on neighborhood attention, every backend."""

from __future__ import annotations

import pytest

from attnkit_contract import AttentionContract
from attnkit_neighborhood import NEIGHBORHOOD


class TestNeighborhoodContract(AttentionContract):
    @pytest.fixture
    def impl(self):  # type: ignore[no-untyped-def]
        return NEIGHBORHOOD
