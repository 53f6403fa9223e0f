"""Plain-torch reference attention: the oracle every faster backend is tested against."""

from attnkit.reference.dense import attention, causal_mask, merge_attention, softmax_rows

__all__ = ["attention", "causal_mask", "merge_attention", "softmax_rows"]
