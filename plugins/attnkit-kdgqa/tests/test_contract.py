"""The attnkit module contract on the three specs of this plugin."""

from __future__ import annotations

from attnkit_contract import parametrize_with_module_contract
from attnkit_kdgqa import DGQA, KDGQA, PGQA


@parametrize_with_module_contract([KDGQA, DGQA, PGQA])
def test_module_contract(spec, check):  # type: ignore[no-untyped-def]
    check(spec)
