"""The shared attnkit contract suite, run against this plugin's spec."""

import pytest

import attnkit_contract
from attnkit_ring import RING


class TestRingContract(attnkit_contract.AttentionContract):
    @pytest.fixture
    def impl(self):
        return RING
