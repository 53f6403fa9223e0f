"""Peak and mean KV-cache size over a generation, for any attnkit cache policy.

A lagged policy (LazyEviction) holds its budget right after an eviction and up to ``W`` more
tokens just before the next one, so the size at the end of a run (what ``attnkit bench cache``
reports) says little: :class:`KVUsage` samples every layer at every forward instead::

    with KVUsage(cache) as usage:       # an AttnkitCache or a CachePolicy
        model.generate(..., past_key_values=cache)
    print(usage.summary())

For each forward and layer it records, per sequence and KV head, the slots attention used
(kept + new, before the eviction), the slots held after the eviction (real keys only), and the
bytes allocated by the whole cache (empty and spare slots included, :meth:`CachePolicy.nbytes`).
It wraps the policy's ``observe`` (every cache-aware attention calls it once per layer and
forward) on the instance, and unwraps it on exit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

__all__ = ["KVUsage", "LayerSample"]


@dataclass
class LayerSample:
    """One layer at one forward.

    :param forward: forward index (0: the prefill).
    :param layer: layer index.
    :param attended: ``(B, Hkv)`` real keys attention used at this forward (kept + new).
    :param held: ``(B, Hkv)`` real keys held after the eviction.
    :param slot_bytes: bytes of one slot's key and value (one sequence, one KV head).
    :param allocated_bytes: bytes the whole cache had allocated right after this layer.
    """

    forward: int
    layer: int
    attended: list[list[int]]
    held: list[list[int]]
    slot_bytes: int
    allocated_bytes: int


@dataclass
class KVUsage:
    """Records the KV slots a cache policy uses over a run (see the module docstring).

    :param cache: an :class:`~attnkit.cache.AttnkitCache` or a
        :class:`~attnkit.cache.CachePolicy`.
    """

    cache: Any
    samples: list[LayerSample] = field(default_factory=list)

    def __post_init__(self) -> None:
        from attnkit.cache.policy import CachePolicy

        policy = getattr(self.cache, "policy", self.cache)
        if not isinstance(policy, CachePolicy):
            raise TypeError(f"cache must be an attnkit AttnkitCache or CachePolicy, got {type(self.cache).__name__}")
        self.policy = policy
        self._forwards: dict[int, int] = {}

    def __enter__(self) -> KVUsage:
        if "observe" in vars(self.policy):
            raise RuntimeError("this policy is already being recorded by another KVUsage")
        original = self.policy.observe

        def observe(layer_idx: int, query: Any, scaling: float, mask: Any = None, *, attend: bool = False) -> Any:
            out = original(layer_idx, query, scaling, mask, attend=attend)
            self._record(layer_idx)
            return out

        self.policy.observe = observe  # type: ignore[method-assign]
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        vars(self.policy).pop("observe", None)

    def _record(self, layer_idx: int) -> None:
        state = self.policy.layers.get(layer_idx)
        if state is None:
            return
        forward = self._forwards.get(layer_idx, 0)
        self._forwards[layer_idx] = forward + 1
        attended = (self.policy.key_positions(layer_idx) >= 0).sum(-1)
        held = state.valid.sum(-1)
        slot = state.kbuf.shape[-1] * state.kbuf.element_size() + state.vbuf.shape[-1] * state.vbuf.element_size()
        self.samples.append(
            LayerSample(forward, layer_idx, attended.tolist(), held.tolist(), int(slot), int(self.policy.nbytes()))
        )

    # ------------------------------------------------------------------ reports
    def per_forward(self) -> list[dict[str, Any]]:
        """One row per forward: the largest ``attended`` and ``held`` of any layer, sequence and
        KV head, the mean ``held`` over them, the bytes of the real keys held (all layers,
        sequences and heads) and the bytes allocated after the forward's last layer."""
        rows: dict[int, dict[str, Any]] = {}
        for s in self.samples:
            row = rows.setdefault(
                s.forward, {"forward": s.forward, "attended_max": 0, "held_max": 0, "held": [], "held_bytes": 0}
            )
            flat_att = [x for r in s.attended for x in r]
            flat_held = [x for r in s.held for x in r]
            row["attended_max"] = max(row["attended_max"], max(flat_att, default=0))
            row["held_max"] = max(row["held_max"], max(flat_held, default=0))
            row["held"].extend(flat_held)
            row["held_bytes"] += sum(flat_held) * s.slot_bytes
            row["allocated_bytes"] = s.allocated_bytes
        out = []
        for f in sorted(rows):
            row = rows[f]
            held = row.pop("held")
            row["held_mean"] = sum(held) / len(held) if held else 0.0
            out.append(row)
        return out

    def summary(self, *, skip_prefill: bool = True) -> dict[str, Any]:
        """Peak and mean over the run.

        :param skip_prefill: leave the prefill forward out (decode-time figures: during the
            prefill every policy holds the whole prompt's keys at once).
        :returns: ``forwards`` (all of them); ``peak_attended_slots`` (the most keys one
            sequence's KV head attended to in one forward: the peak in memory),
            ``peak_held_slots`` (between forwards), ``mean_held_slots`` (mean over forwards,
            layers, sequences and KV heads), ``peak_held_bytes`` / ``mean_held_bytes`` (real
            keys of all layers), ``peak_allocated_bytes`` / ``mean_allocated_bytes`` (buffers,
            empty and spare slots included, after each forward).
        """
        rows = self.per_forward()
        if not rows:
            raise ValueError("nothing was recorded: run the model inside `with KVUsage(cache):`")
        first = 1 if skip_prefill and len(rows) > 1 else 0
        dec = [r for r in rows if r["forward"] >= first]
        samples = [s for s in self.samples if s.forward >= first]

        def mean(key: str) -> float:
            return sum(r[key] for r in dec) / len(dec)

        return {
            "forwards": len(rows),
            "peak_attended_slots": max(r["attended_max"] for r in dec),
            "peak_held_slots": max(r["held_max"] for r in dec),
            "mean_held_slots": mean("held_mean"),
            "peak_held_bytes": max(r["held_bytes"] for r in dec),
            "mean_held_bytes": mean("held_bytes"),
            "peak_allocated_bytes": max(s.allocated_bytes for s in samples),
            "mean_allocated_bytes": mean("allocated_bytes"),
        }
