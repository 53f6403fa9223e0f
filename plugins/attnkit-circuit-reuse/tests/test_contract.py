"""The shared attnkit analysis contract, run against this plugin's spec."""

from __future__ import annotations

from attnkit_circuit_reuse import CIRCUIT_REUSE
from attnkit_contract.analysis_checks import parametrize_with_analysis_contract


@parametrize_with_analysis_contract([CIRCUIT_REUSE])
def test_analysis_contract(spec: object, check: object) -> None:
    check(spec)  # type: ignore[operator]
