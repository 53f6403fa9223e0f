"""The attnkit module contract on the ``moh`` spec (every check, every contract parameter set)."""

from __future__ import annotations

from attnkit_contract import parametrize_with_module_contract
from attnkit_moh import MOH


@parametrize_with_module_contract([MOH])
def test_moh_module_contract(spec, check):  # type: ignore[no-untyped-def]
    check(spec)
