"""The shared attnkit analysis contract, run against this plugin's spec (a tiny random
transformers Llama under :func:`attnkit.patch`: declared sites, observing without changing the
model, determinism, parameter validation)."""

import attnkit_contract
from attnkit_act import ACT


@attnkit_contract.parametrize_with_analysis_contract([ACT])
def test_act_analysis_contract(spec, check):
    check(spec)
