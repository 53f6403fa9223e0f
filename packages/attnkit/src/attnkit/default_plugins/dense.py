"""Built-in dense softmax attention: the reference and torch's SDPA, one spec."""

from __future__ import annotations

from attnkit.hookspecs import hookimpl
from attnkit.registry import AttentionSpec, Backend

DENSE = AttentionSpec(
    name="dense",
    description="Softmax attention over every key (optionally masked / causal), GQA without copying k/v.",
    backends=(
        Backend(
            name="sdpa",
            impl="attnkit.default_plugins.dense_impl:sdpa",
            traceable=True,
            supports_lse=False,
            supports_mask=True,
            description="torch.nn.functional.scaled_dot_product_attention",
        ),
        Backend(
            name="reference",
            impl="attnkit.default_plugins.dense_impl:reference",
            traceable=True,
            supports_mask=True,
            description="plain-torch math in float32/float64 (attnkit.reference.attention)",
        ),
    ),
    contract_params="attnkit.default_plugins.dense_impl:contract_params",
    mask="attnkit.default_plugins.dense_impl:brute_force_mask",
)


@hookimpl
def attnkit_register_attention(register):  # type: ignore[no-untyped-def]
    register(DENSE)
