"""The built-in policies: full (no eviction), sliding window, and sinks + window (StreamingLLM)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from attnkit.cache.params import SinkWindowParams, WindowParams, resolve_budget
from attnkit.cache.policy import CachePolicy, LayerState, oldest_after_sinks, sink_slots

__all__ = ["FullPolicy", "SinkWindowPolicy", "WindowPolicy", "build_full", "build_sink_window", "build_window"]


class FullPolicy(CachePolicy):
    """Keeps every token: the reference the other policies reduce to at a large budget."""

    name: ClassVar[str] = "full"

    def __init__(self) -> None:
        super().__init__(None)

    def always_kept(self, length: int, budget: int | None) -> list[int]:
        return list(range(length))


class WindowPolicy(CachePolicy):
    """Keeps the ``budget`` most recent tokens."""

    name: ClassVar[str] = "window"

    def always_kept(self, length: int, budget: int | None) -> list[int]:
        return list(range(max(0, length - (budget or length)), length))


class SinkWindowPolicy(CachePolicy):
    """StreamingLLM without the position shift: the first ``n_sink`` tokens plus the most
    recent ``budget - n_sink``. Sinks are counted from each row's first real token (a
    left-padded row's sinks are its own first tokens, not padding).

    :param budget: int >= 1 or a ratio of the prompt length; it must exceed ``n_sink`` once
        resolved.
    :param n_sink: leading tokens (attention sinks) always kept.
    """

    name: ClassVar[str] = "sink_window"

    def __init__(self, budget: int | float, n_sink: int = 4) -> None:
        super().__init__(budget)
        SinkWindowParams(budget=budget, n_sink=n_sink)
        self.n_sink = n_sink

    def resolve_budget(self, prompt_length: int) -> int | None:
        budget = resolve_budget(self.budget, prompt_length)  # type: ignore[arg-type]
        if budget <= self.n_sink:
            raise ValueError(
                f"budget {self.budget!r} resolves to {budget} tokens for a {prompt_length}-token prompt, which must exceed n_sink ({self.n_sink})"
            )
        return budget

    def forced(self, state: LayerState) -> torch.Tensor | None:
        return sink_slots(state, self.n_sink)

    def steady_victims(self, state: LayerState) -> torch.Tensor | None:
        return oldest_after_sinks(state, self.n_sink)

    def always_kept(self, length: int, budget: int | None) -> list[int]:
        budget = length if budget is None else budget
        sinks = set(range(min(self.n_sink, length)))
        recent = set(range(max(0, length - (budget - len(sinks))), length))
        return sorted(sinks | recent)


def build_full(params: Any = None) -> FullPolicy:
    return FullPolicy()


def build_window(params: WindowParams) -> WindowPolicy:
    if not isinstance(params, WindowParams):
        raise TypeError(f"params must be a WindowParams, got {type(params).__name__}")
    return WindowPolicy(params.budget)


def build_sink_window(params: SinkWindowParams) -> SinkWindowPolicy:
    if not isinstance(params, SinkWindowParams):
        raise TypeError(f"params must be a SinkWindowParams, got {type(params).__name__}")
    return SinkWindowPolicy(params.budget, n_sink=params.n_sink)
