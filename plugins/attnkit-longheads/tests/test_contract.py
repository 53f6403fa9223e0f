"""The shared attnkit contract suite at its full profile, run against this plugin's spec.

Slow tier (``nox -s plugin-longheads``, ``nox -s slow``); the default tier runs the
installed-spec contract at the quick profile (``attnkit check attnkit-longheads``)."""

import pytest

import attnkit_contract
from attnkit_longheads import LONGHEADS

pytestmark = pytest.mark.slow


class TestLongheadsContract(attnkit_contract.AttentionContract):
    @pytest.fixture
    def impl(self):
        return LONGHEADS
