"""attnkit plugin for neighborhood attention.

Paper: "Faster Neighborhood Attention: Reducing the O(n^2) Cost of Self Attention at the
Threadblock Level" (Hassani, Ke, Wang, Hwu, Shi; arXiv:2403.04690). Semantics follow NATTEN:
per-axis windows of ``kernel_size`` keys that shift inward at the borders, dilation groups,
per-axis causal masking, even kernel sizes, GQA.

This module is the entry point: it only declares the spec. torch, numba and triton are
imported by the backend modules on first use.
"""

from __future__ import annotations

from attnkit import AttentionSpec, Paper, hookimpl
from attnkit.kernels import standard_backends
from attnkit_neighborhood.params import NeighborhoodParams

__all__ = ["NEIGHBORHOOD", "NeighborhoodParams"]

PAPER = Paper(
    title="Faster Neighborhood Attention: Reducing the O(n^2) Cost of Self Attention at the Threadblock Level",
    arxiv="2403.04690",
)

NEIGHBORHOOD = AttentionSpec(
    name="neighborhood",
    paper=PAPER,
    description="Each query attends to the kernel_size nearest keys per axis (1D/2D/3D), NATTEN border rule.",
    params=NeighborhoodParams,
    spatial_dims=(1, 2, 3),
    backends=standard_backends(
        "attnkit_neighborhood",
        "neighborhood_attention",
        numba="tiled numba CPU kernel, forward and backward",
        triton="Triton kernel, forward and backward (CUDA; CPU under TRITON_INTERPRET=1 for tests)",
        reference="plain torch gather of each query's window; float32/float64 math",
        flex=True,
        onnx="export-friendly formulation (index arithmetic on symbolic sizes); used while exporting",
    ),
    validate="attnkit_neighborhood.params:validate",
    mask="attnkit_neighborhood.masks:brute_force_mask",
    contract_params="attnkit_neighborhood.params:contract_params",
    bench="attnkit_neighborhood.bench:run",
)


@hookimpl
def attnkit_register_attention(register):  # type: ignore[no-untyped-def]
    register(NEIGHBORHOOD)
