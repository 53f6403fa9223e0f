"""Parameter dataclass of the ``preplan_anchor`` analysis. Imports no torch: the entry point
imports this module when attnkit loads plugins."""

from __future__ import annotations

from dataclasses import dataclass

from attnkit.paramcheck import check_float as _check_float
from attnkit.paramcheck import check_int as _check_int

__all__ = ["PreplanAnchorParams"]


@dataclass(frozen=True)
class PreplanAnchorParams:
    """Parameters of the ``preplan_anchor`` analysis (defaults: the paper's v2 values where it
    gives them, library choices otherwise).

    :param window: WAAD clipping window ``W`` (10 in the paper).
    :param q_head: share of heads in the local (bottom) and the global (top) group by head span
        (0.3: "bottom/top 30%").
    :param h_lo: FAI horizon start: query ``t`` counts for key ``s`` when ``t >= s + h_lo``.
    :param h_hi: FAI horizon end (``t <= s + h_hi``); 0 means "to the end of the response"
        (the paper's analysis setting; its RL setting is ``h_lo=10, h_hi=100``).
    :param q: share of response tokens amplified by each credit strategy (0.4 in the paper).
    :param gamma_amp: credit amplification ``gamma`` (1.5 in the paper).
    :param alpha: share of an anchor's extra credit moved to its introducing token when the
        anchor is locally dominated (library choice: the paper gives no value).
    :param k: look-back of the coupled strategy (paper: k in {1, 2, 3}).
    :param layers: layers whose attention is used; empty: five evenly spaced layers of the
        middle third ``[L//3, 2L//3]`` (the paper's RL setting).
    :param n_prompts: generated samples (``--quick`` uses 2).
    :param max_new_tokens: tokens generated per sample (``--quick`` uses 32).
    :param temperature: sampling temperature; 0 is greedy.
    """

    window: int = 10
    q_head: float = 0.3
    h_lo: int = 1
    h_hi: int = 0
    q: float = 0.4
    gamma_amp: float = 1.5
    alpha: float = 0.5
    k: int = 3
    layers: tuple[int, ...] = ()
    n_prompts: int = 6
    max_new_tokens: int = 128
    temperature: float = 0.7

    def __post_init__(self) -> None:
        _check_int("window", self.window, 1)
        _check_float("q_head", self.q_head, 0.0, 0.5, open_lo=True)
        _check_int("h_lo", self.h_lo, 1)
        _check_int("h_hi", self.h_hi, 0)
        if self.h_hi and self.h_hi < self.h_lo:
            raise ValueError(f"h_hi ({self.h_hi}) must be 0 (to the end) or >= h_lo ({self.h_lo})")
        _check_float("q", self.q, 0.0, 1.0, open_lo=True)
        _check_float("gamma_amp", self.gamma_amp, 0.0, 100.0)
        _check_float("alpha", self.alpha, 0.0, 1.0)
        _check_int("k", self.k, 1)
        layers = self.layers
        if isinstance(layers, str):
            layers = tuple(int(x) for x in layers.replace(" ", "").split(",") if x)
        if isinstance(layers, int) and not isinstance(layers, bool):
            layers = (layers,)
        if not isinstance(layers, (tuple, list)):
            raise TypeError(f"layers must be a tuple of layer indices, got {type(self.layers).__name__}")
        for x in layers:
            _check_int("layers[i]", x, 0)
        object.__setattr__(self, "layers", tuple(sorted({int(x) for x in layers})))
        _check_int("n_prompts", self.n_prompts, 1)
        _check_int("max_new_tokens", self.max_new_tokens, 2)
        _check_float("temperature", self.temperature, 0.0, 10.0)
