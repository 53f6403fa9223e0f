"""The shared attnkit contract suite, run against this plugin's spec."""

import pytest

import attnkit_contract
from attnkit_core_context import CORE_CONTEXT


class TestCoreContextContract(attnkit_contract.AttentionContract):
    @pytest.fixture
    def impl(self):
        return CORE_CONTEXT
