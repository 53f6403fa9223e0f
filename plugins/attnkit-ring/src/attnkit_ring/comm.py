"""Communication volume of ring attention: the closed form, and a counter of what is sent.

With ``rotate="p2p"`` rank ``r`` of ``W`` sends, at ring step ``s = 0 .. W-2``, the key and
value block it holds, i.e. the block of rank ``(r - s) mod W`` (its own block first), to rank
``r + 1``: ``B * Hkv * T_src * (D + Dv) * bytes`` per step. For an even split of ``T`` tokens
and ``Dv = D`` that is ``2 * B * Hkv * (T / W) * D * bytes`` per step and ``W - 1`` times that
per rank per attention call. It receives the same amounts (the block of rank ``r - s - 1``).

:func:`ring_send_bytes` is that formula; :func:`count_sent_bytes` counts the tensors that the
ring actually posts with ``torch.distributed.batch_isend_irecv`` so the two can be compared
(the tests and ``python -m attnkit_ring.bench`` do).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SentBytes", "count_sent_bytes", "ring_send_bytes"]


def ring_send_bytes(
    lengths: Sequence[int],
    rank: int,
    *,
    batch: int,
    kv_heads: int,
    head_dim: int,
    v_head_dim: int | None = None,
    element_size: int = 4,
) -> list[int]:
    """Bytes rank ``rank`` sends at each of the ``W - 1`` steps of the p2p ring.

    :param lengths: every rank's key/value shard length ``T_0 .. T_{W-1}`` (``W = len``).
    :param rank: the sending rank, ``0 <= rank < W``.
    :param element_size: bytes per element of the K/V tensors (4 for float32).
    :returns: ``[bytes at step 0, ..., bytes at step W-2]`` (empty for ``W = 1``).
    :raises ValueError: an empty ``lengths``, a rank outside it, or a negative size.
    """
    world = len(lengths)
    if world < 1:
        raise ValueError("lengths must name at least one rank's shard length; got an empty sequence")
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}) for {world} shard lengths; got rank={rank}")
    dv = head_dim if v_head_dim is None else v_head_dim
    sizes = {"batch": batch, "kv_heads": kv_heads, "head_dim": head_dim, "v_head_dim": dv, "element_size": element_size}
    bad = {name: n for name, n in sizes.items() if n < 0} | {f"lengths[{i}]": n for i, n in enumerate(lengths) if n < 0}
    if bad:
        raise ValueError(f"sizes must be >= 0; got {bad}")
    per_token = batch * kv_heads * (head_dim + dv) * element_size
    return [lengths[(rank - step) % world] * per_token for step in range(world - 1)]


@dataclass
class SentBytes:
    """What :func:`count_sent_bytes` saw: one entry per ``batch_isend_irecv`` call."""

    sent: list[int] = field(default_factory=list)  #: bytes of the ``isend`` tensors of each call
    received: list[int] = field(default_factory=list)  #: bytes of the ``irecv`` tensors of each call

    @property
    def total_sent(self) -> int:
        return sum(self.sent)


@contextlib.contextmanager
def count_sent_bytes() -> Iterator[SentBytes]:
    """Within the block, record the bytes of every tensor posted to
    ``torch.distributed.batch_isend_irecv`` (the p2p ring's only transport), per call.

    The ring module calls it as ``dist.batch_isend_irecv``, so wrapping that attribute of
    ``torch.distributed`` for the duration sees exactly the tensors the ring sends; the
    original is put back on exit. Not thread-safe (it patches a module attribute).
    """
    import torch.distributed as dist

    seen = SentBytes()
    original = dist.batch_isend_irecv

    def counting(ops: list[Any]) -> Any:
        sent = received = 0
        for op in ops:
            nbytes = op.tensor.numel() * op.tensor.element_size()
            if op.op in (dist.isend, dist.send):
                sent += nbytes
            else:
                received += nbytes
        seen.sent.append(sent)
        seen.received.append(received)
        return original(ops)

    dist.batch_isend_irecv = counting
    try:
        yield seen
    finally:
        dist.batch_isend_irecv = original
