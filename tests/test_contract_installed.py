"""The contract over every installed attention, module, cache and analysis spec: the tests of
:mod:`attnkit_contract.installed` (what ``attnkit check`` runs), collected here so ``nox -s
tests`` runs them with the rest (``-k neighborhood.numba`` etc. select; ``--attnkit-plugin
NAME`` keeps one plugin's specs; ``--attnkit-profile`` picks the profile)."""

from __future__ import annotations

from attnkit_contract.installed import (  # noqa: F401  (collected by pytest)
    test_analysis_contract,
    test_attention_contract,
    test_cache_contract,
    test_module_contract,
)
