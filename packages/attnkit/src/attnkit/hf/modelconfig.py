"""What a kernel needs to know of a Hugging Face model config, read one way for every plugin.

Pure functions of the config object (no torch or transformers import), for the
``model_prefill`` entries of long-context kernels.
"""

from __future__ import annotations

from typing import Any

__all__ = ["require_trained_length", "rope_theta", "trained_length"]


def trained_length(config: Any) -> int:
    """``config.max_position_embeddings``.

    :raises ValueError: when the config does not say it.
    """
    value = getattr(config, "max_position_embeddings", None)
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"the model config gives no max_position_embeddings (got {value!r})")
    return value


def require_trained_length(kernel: str, config: Any, length: int) -> None:
    """Refuse a prompt longer than the model was trained on, for a kernel that does not
    re-index positions (its keys keep the model's own RoPE positions).

    :raises ValueError: naming the kernel, the prompt length and the trained length.
    """
    limit = trained_length(config)
    if length > limit:
        raise ValueError(
            f"{kernel} keeps the model's positions, so it does not extrapolate: prompt of {length} tokens "
            f"> max_position_embeddings={limit}"
        )


def rope_theta(config: Any) -> float:
    """The RoPE base of a model with plain (unscaled) rotary embeddings.

    transformers 5 keeps it in ``config.rope_parameters["rope_theta"]``, 4.x in
    ``config.rope_theta``.

    :raises ValueError: for a rope scaling other than ``"default"`` (linear, dynamic, yarn,
        llama3 change the frequencies, which a kernel re-rotating keys would have to follow).
    """
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise ValueError(f"the model uses rope scaling {kind!r}; only plain RoPE (rope_type 'default') is supported")
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if not isinstance(theta, (int, float)) or theta <= 0:
        raise ValueError(f"the model config gives no rope_theta (got {theta!r})")
    return float(theta)
