"""The attnkit analysis contract suite on ``thinking_sparks``'s spec (entry points resolve,
parameters refuse bad values naming themselves)."""

from __future__ import annotations

from attnkit_contract.analysis_checks import parametrize_with_analysis_contract
from attnkit_thinking_sparks import THINKING_SPARKS


@parametrize_with_analysis_contract([THINKING_SPARKS])
def test_analysis_contract(spec: object, check: object) -> None:
    check(spec)  # type: ignore[operator]
