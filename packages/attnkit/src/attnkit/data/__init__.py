"""Data the core's own jobs run on, generated locally and seeded: nothing is downloaded.

- :mod:`attnkit.data.needles`: needle-in-a-haystack prompts (``attnkit run``,
  ``attnkit bench cache``, and plugins that score retrieval).

Importing this package imports neither torch nor transformers.
"""

from __future__ import annotations

from attnkit.data.needles import NEEDLES, NeedleCase, find_needle_span, haystack_sentences, make_case, make_cases

__all__ = ["NEEDLES", "NeedleCase", "find_needle_span", "haystack_sentences", "make_case", "make_cases"]
