"""``attnkit eval``: evaluations of cache policies on the embedded model.

``attnkit eval cache`` (:mod:`attnkit.evaluate.cache`) runs any set of KV-cache policies and
budgets on generated needle cases (question-aware and question-agnostic), perplexity on long
real text, and a generated multi-step arithmetic set with long generations, and writes
``results.json`` and ``report.html``. Importing this package imports nothing heavy.
"""

from __future__ import annotations

__all__: list[str] = []
