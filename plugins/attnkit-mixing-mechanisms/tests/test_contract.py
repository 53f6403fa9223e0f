"""The attnkit analysis contract suite on ``mixing_mechanisms`` (entry points resolve, parameters
validate; it declares no run-time factory: the interventions are the core's ActivationPatch)."""

from __future__ import annotations

from attnkit_contract.analysis_checks import parametrize_with_analysis_contract
from attnkit_mixing_mechanisms import MIXING_MECHANISMS


@parametrize_with_analysis_contract([MIXING_MECHANISMS])
def test_analysis_contract(spec: object, check: object) -> None:
    check(spec)  # type: ignore[operator]
