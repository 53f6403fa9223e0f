"""The shared attnkit contract suite at its full profile (ONNX export in onnxruntime at two
lengths other than the traced one included), run against both specs.

Slow tier (``nox -s plugin-landmark``, ``nox -s slow``): the ONNX exports take several seconds
each. The default tier runs the installed-spec contract at the quick profile
(``attnkit check attnkit-landmark``)."""

import pytest

import attnkit_contract
from attnkit_landmark import LANDMARK, RETRIEVAL

pytestmark = pytest.mark.slow


class TestLandmarkContract(attnkit_contract.AttentionContract):
    @pytest.fixture
    def impl(self):
        return LANDMARK


class TestRetrievalContract(attnkit_contract.AttentionContract):
    @pytest.fixture
    def impl(self):
        return RETRIEVAL
