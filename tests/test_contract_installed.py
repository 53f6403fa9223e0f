"""The contract over every installed attention, module, cache and analysis spec: the tests of
:mod:`attnkit_contract.installed` (what ``attnkit check`` runs), collected here so ``nox -s
tests`` runs them with the rest (``-k neighborhood.numba`` etc. select; ``--attnkit-plugin
NAME`` keeps one plugin's specs; ``--attnkit-profile`` picks the profile)."""

from __future__ import annotations

from attnkit_contract import installed

# Only the kinds with an installed spec have a test there (no empty "[NOTSET]" tests).
globals().update({name: getattr(installed, name) for name in dir(installed) if name.startswith("test_")})
