"""Capture run-time sites into memory, like TransformerLens' ``run_with_cache``.

>>> cap = Capture(["blocks.{l}.attn.hook_pattern@decode", "logits"])
>>> with attnkit.patch(model, analyses=[cap]):  # doctest: +SKIP
...     model.generate(**inputs, max_new_tokens=4)
>>> cap["blocks.0.attn.hook_pattern"]  # one tensor per decode step  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from attnkit.hookspecs import hookimpl

__all__ = ["Capture"]


class Capture:
    """Keep a detached copy of every value seen at ``sites``.

    :param sites: site names or patterns (``{l}`` / ``*`` wildcards, ``@prefill`` /
        ``@decode`` suffixes), see :mod:`attnkit.runtime.run`.
    :param to: device the copies are moved to (default: ``"cpu"``).
    :param dtype: cast copies to this dtype (default: keep).

    ``capture[site]`` is a list with one tensor per forward pass that reached the site (a
    prefill, then one per decode step); :meth:`last` and :meth:`first` pick one.
    """

    name = "capture"

    def __init__(self, sites: Iterable[str], *, to: Any = "cpu", dtype: torch.dtype | None = None) -> None:
        self.patterns = list(sites)
        if not self.patterns:
            raise ValueError("Capture needs at least one site")
        self.to, self.dtype = to, dtype
        self.values: dict[str, list[torch.Tensor]] = {}
        self.phases: dict[str, list[str]] = {}

    @hookimpl
    def attnkit_sites(self) -> list[str]:
        return self.patterns

    @hookimpl
    def attnkit_capture(self, site: str, layer: int | None, tensor: torch.Tensor, run: Any) -> None:
        copy = tensor.detach().to(self.to, dtype=self.dtype or tensor.dtype, copy=True)
        self.values.setdefault(site, []).append(copy)
        self.phases.setdefault(site, []).append(run.phase)

    def __getitem__(self, site: str) -> list[torch.Tensor]:
        try:
            return self.values[site]
        except KeyError:
            have = ", ".join(sorted(self.values)[:6]) or "nothing yet"
            raise KeyError(f"site {site!r} was not captured; captured: {have}") from None

    def __contains__(self, site: object) -> bool:
        return site in self.values

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def first(self, site: str) -> torch.Tensor:
        return self[site][0]

    def last(self, site: str) -> torch.Tensor:
        return self[site][-1]

    def clear(self) -> None:
        self.values.clear()
        self.phases.clear()

    def result(self) -> dict[str, int]:
        """How many values each site captured."""
        return {site: len(v) for site, v in self.values.items()}
