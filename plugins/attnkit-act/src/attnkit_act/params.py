"""Parameters of the ``act`` analysis, and the parser of head lists.

Imported by the entry-point module, so it must not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from attnkit.paramcheck import check_float as _check_float
from attnkit.paramcheck import check_int as _check_int

__all__ = ["METRICS", "RULES", "SPARE", "TASKS", "ActParams", "parse_heads", "parse_layers"]

#: Sink rules: the released code's absolute threshold on the causal column mean, or the
#: paper's threshold relative to the uniform level ``1/N``.
RULES = ("absolute", "relative")
#: Which sink the calibration spares: the first token by position, or (the released code's
#: ``indices[1:]``) the first column above the threshold, whatever its position.
SPARE = ("first_token", "first_hit")
#: The head search's score on the calibration split.
METRICS = ("logprob", "accuracy")
#: Generated task families.
TASKS = ("mixed", "sentiment", "antonym")


def parse_heads(value: object, name: str = "heads") -> dict[int, tuple[int, ...]]:
    """``"3:0,5;7:2"`` (or ``{3: [0, 5]}``) to ``{3: (0, 5), 7: (2,)}``.

    :raises ValueError / TypeError: naming ``name`` and the bad entry.
    """
    if value is None or value == "":
        return {}
    out: dict[int, set[int]] = {}
    if isinstance(value, str):
        for part in value.replace(" ", "").split(";"):
            if not part:
                continue
            layer, sep, heads = part.partition(":")
            if not sep or not heads:
                raise ValueError(f"{name} must look like '3:0,5;7:2' (layer:head,head;...), got entry {part!r}")
            try:
                out.setdefault(int(layer), set()).update(int(h) for h in heads.split(",") if h)
            except ValueError:
                raise ValueError(f"{name}: layer and head indices must be ints, got entry {part!r}") from None
    elif isinstance(value, dict):
        for layer, heads in value.items():
            hs = [heads] if isinstance(heads, int) else list(heads)
            out.setdefault(layer, set()).update(hs)
    else:
        raise TypeError(f"{name} must be a string '3:0,5;7:2' or a dict {{layer: [head, ...]}}, got {value!r}")
    for layer, hs in out.items():
        for what, v in [("layer", layer), *(("head", h) for h in hs)]:
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}: {what} indices must be non-negative ints, got {v!r}")
    return {layer: tuple(sorted(hs)) for layer, hs in sorted(out.items()) if hs}


def parse_layers(value: object, name: str = "search_layers") -> tuple[int, ...]:
    """``"2-8"``, ``"2,5,8"``, ``"2-29:3"`` (start-stop:step, stop inclusive), an int or a
    sequence of ints to a sorted tuple of distinct layer indices."""
    if value is None or value == "" or value == ():
        return ()
    items: list[int] = []
    if isinstance(value, bool):
        raise TypeError(f"{name} must be layer indices, got {value!r}")
    if isinstance(value, int):
        items = [value]
    elif isinstance(value, str):
        try:
            for part in value.replace(" ", "").split(","):
                if not part:
                    continue
                rng, _, step = part.partition(":")
                lo, dash, hi = rng.partition("-")
                if dash:
                    items.extend(range(int(lo), int(hi) + 1, int(step or 1)))
                else:
                    items.append(int(lo))
        except ValueError:
            raise ValueError(f"{name} must look like '2-8', '2,5,8' or '2-29:3', got {value!r}") from None
    elif isinstance(value, (tuple, list)):
        items = list(value)
    else:
        raise TypeError(f"{name} must be layer indices ('2-8', (2, 5)), got {type(value).__name__} {value!r}")
    for x in items:
        if isinstance(x, bool) or not isinstance(x, int) or x < 0:
            raise ValueError(f"{name}: layer indices must be non-negative ints, got {x!r} in {value!r}")
    if not items:
        raise ValueError(f"{name}: {value!r} names no layer")
    return tuple(sorted(set(items)))


def _choice(name: str, value: object, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(options)}, got {value!r}")


@dataclass(frozen=True)
class ActParams:
    """Parameters of :data:`attnkit_act.ACT` (defaults: the released code's values where it
    has them, library choices otherwise).

    Sink detection and calibration:

    :param beta: share of a sink's attention that stays on it (0.4 in the released scripts);
        1 is the identity.
    :param thres: absolute threshold on the causal column mean (``THRES=0.1``).
    :param alpha: relative rule: a column is a sink when its causal mean exceeds
        ``alpha / N`` (``N`` real tokens of the sequence). Library default 5.
    :param rule: ``"absolute"`` (released code) or ``"relative"``: which rule the
        calibration uses (the analysis reports both).
    :param spare: ``"first_token"`` (the sink at the first real token is never reduced, as
        the paper intends) or ``"first_hit"`` (the released ``indices[1:]``: the first column
        above the threshold is spared, a hidden sink when token 0 is below it).
    :param min_queries: a column needs at least this many queries that see it to be a sink
        (1: the released rule, where the last tokens' means rest on one or two queries).
    :param heads: heads to calibrate, ``"3:0,5;7:2"``. With heads the factory builds the
        calibration editor and ``analyze`` skips the search; empty: the factory builds the
        sink scanner and ``analyze`` searches.

    Head search (``attnkit analyze act``):

    :param search_layers: layers searched, ``"2-29:3"`` / ``"4,8"``; empty: every third
        layer from 2 (``2, 5, ..., 29`` on SmolLM2).
    :param refine_top: the coarse pass calibrates each searched layer's heads together;
        this many best layers are then searched head by head.
    :param max_heads: most heads kept (those whose single-head calibration beat the
        unedited model on the calibration split, best first).
    :param search_metric: ``"logprob"`` (mean log-probability of the right label among the
        choices: less noisy on few items) or ``"accuracy"`` (the paper's).
    :param task: generated task family: ``"mixed"``, ``"sentiment"`` or ``"antonym"``.
    :param n_cal: calibration items (the search's).
    :param n_test: held-out items (the reported accuracy's).
    :param n_random: draws of random heads for the control (their mean is reported).
    :param batch_size: items per forward (left-padded).
    :param all_heads_control: also report calibrating every head of the searched layers.
    """

    beta: float = field(default=0.4, metadata={"contract_invalid": [-0.1, 1.5, "x"]})
    thres: float = field(default=0.1, metadata={"contract_invalid": [0.0, 1.5, "x"]})
    alpha: float = field(default=5.0, metadata={"contract_invalid": [0.0, -1.0, "x"]})
    rule: str = field(default="absolute", metadata={"contract_invalid": ["median"]})
    spare: str = field(default="first_token", metadata={"contract_invalid": ["none"]})
    min_queries: int = 1
    heads: str = ""
    search_layers: str = ""
    refine_top: int = 1
    max_heads: int = 8
    search_metric: str = field(default="logprob", metadata={"contract_invalid": ["f1"]})
    task: str = field(default="mixed", metadata={"contract_invalid": ["squad"]})
    n_cal: int = 40
    n_test: int = 80
    n_random: int = 2
    batch_size: int = 8
    all_heads_control: bool = True

    def __post_init__(self) -> None:
        _check_float("beta", self.beta, 0.0, 1.0)
        _check_float("thres", self.thres, 0.0, 1.0, open_lo=True)
        _check_float("alpha", self.alpha, 0.0, 1e6, open_lo=True)
        _choice("rule", self.rule, RULES)
        _choice("spare", self.spare, SPARE)
        _check_int("min_queries", self.min_queries, 1)
        parse_heads(self.heads)
        parse_layers(self.search_layers)
        _check_int("refine_top", self.refine_top, 1)
        _check_int("max_heads", self.max_heads, 1)
        _choice("search_metric", self.search_metric, METRICS)
        _choice("task", self.task, TASKS)
        _check_int("n_cal", self.n_cal, 1)
        _check_int("n_test", self.n_test, 1)
        _check_int("n_random", self.n_random, 1)
        _check_int("batch_size", self.batch_size, 1)
        if not isinstance(self.all_heads_control, bool):
            raise TypeError(f"all_heads_control must be a bool, got {self.all_heads_control!r}")

    @property
    def head_map(self) -> dict[int, tuple[int, ...]]:
        """:attr:`heads` parsed: ``{layer: (head, ...)}``."""
        return parse_heads(self.heads)

    def layers_for(self, n_layers: int) -> tuple[int, ...]:
        """The searched layers of an ``n_layers`` model.

        :raises ValueError: naming ``search_layers`` when one does not exist.
        """
        layers = parse_layers(self.search_layers) or tuple(range(2, n_layers, 3))
        bad = [x for x in layers if x >= n_layers]
        if bad:
            raise ValueError(f"search_layers {bad} do not exist in a model of {n_layers} layers")
        return layers
