"""The attnkit analysis contract suite on ``thought_anchors``'s run-time object (a tiny random
transformers Llama under :func:`attnkit.patch`: declared sites, observing without changing the
model, determinism, parameter validation)."""

from __future__ import annotations

from attnkit_contract.analysis_checks import parametrize_with_analysis_contract
from attnkit_thought_anchors import THOUGHT_ANCHORS


@parametrize_with_analysis_contract([THOUGHT_ANCHORS])
def test_analysis_contract(spec: object, check: object) -> None:
    check(spec)  # type: ignore[operator]
