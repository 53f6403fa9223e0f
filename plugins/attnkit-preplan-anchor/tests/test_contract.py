"""The attnkit analysis contract suite on ``preplan_anchor``'s run-time object."""

from __future__ import annotations

from attnkit_contract.analysis_checks import parametrize_with_analysis_contract
from attnkit_preplan_anchor import PREPLAN_ANCHOR


@parametrize_with_analysis_contract([PREPLAN_ANCHOR])
def test_analysis_contract(spec: object, check: object) -> None:
    check(spec)  # type: ignore[operator]
