"""The attnkit KV-cache contract suite on ``retrieval_heads_cache`` (its defaults name no
retrieval head, so the contract sees sinks + window capped by ``budget``)."""

from __future__ import annotations

from attnkit_contract.cache_checks import parametrize_with_cache_contract
from attnkit_retrieval_heads import RETRIEVAL_CACHE


@parametrize_with_cache_contract([RETRIEVAL_CACHE])
def test_cache_contract(spec: object, check: object) -> None:
    check(spec)  # type: ignore[operator]
