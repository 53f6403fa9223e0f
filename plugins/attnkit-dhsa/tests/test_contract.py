"""The shared attnkit contract suite at its full profile, run against this plugin's spec.

Slow tier (``nox -s plugin-dhsa``, ``nox -s slow``): compiled flex rebuilds its BlockMask and
graph for each data-dependent selection and the Triton interpreter pays per op, several
minutes on 2 cores. The default tier runs the installed-spec contract at the quick profile
(``attnkit check attnkit-dhsa``)."""

import pytest

import attnkit_contract
from attnkit_dhsa import DHSA

pytestmark = pytest.mark.slow


class TestDhsaContract(attnkit_contract.AttentionContract):
    @pytest.fixture
    def impl(self):
        return DHSA
