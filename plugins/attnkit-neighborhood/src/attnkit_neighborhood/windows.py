"""Window indices in torch, written with shape arithmetic only so ``torch.export`` can trace
them with symbolic sizes (the ONNX path) and the reference can use them at any size.
"""

from __future__ import annotations

import torch


def axis_window(
    n: int, kernel: int, dilation: int, causal: bool, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Key indices ``(n, kernel)`` along one axis of length ``n`` and their validity.

    Non-causal windows are always full. Causal windows near the start are shorter: their
    missing slots point at a valid key and are marked invalid.
    """
    i = torch.arange(n, device=device)
    g = i % dilation
    ii = torch.div(i, dilation, rounding_mode="floor")
    n_g = torch.div(n - g + dilation - 1, dilation, rounding_mode="floor")
    offs = torch.arange(kernel, device=device)
    if causal:
        jj = ii[:, None] - (kernel - 1) + offs[None, :]
        valid = jj >= 0
        jj = torch.clamp(jj, min=0)
    else:
        before = kernel // 2
        after = kernel // 2 + kernel % 2 - 1
        center = torch.minimum(torch.clamp(ii, min=before), n_g - 1 - after)
        jj = (center - before)[:, None] + offs[None, :]
        valid = torch.ones_like(jj, dtype=torch.bool)
    return jj * dilation + g[:, None], valid


def flat_windows(
    spatial: tuple[int, ...],
    kernel: tuple[int, ...],
    dilation: tuple[int, ...],
    causal: tuple[bool, ...],
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened (row-major) key indices ``(N, prod(kernel))`` of every query and their validity."""
    idx: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    for n, kk, d, c in zip(spatial, kernel, dilation, causal):
        a_idx, a_valid = axis_window(n, kk, d, c, device)
        if idx is None:
            idx, valid = a_idx, a_valid
            continue
        assert valid is not None
        # (N_prev, K_prev) x (n, kk) -> (N_prev, n, K_prev, kk) -> (N_prev * n, K_prev * kk)
        idx = (idx[:, None, :, None] * n + a_idx[None, :, None, :]).reshape(idx.shape[0] * n, -1)
        valid = (valid[:, None, :, None] & a_valid[None, :, None, :]).reshape(valid.shape[0] * n, -1)
    assert idx is not None and valid is not None
    return idx, valid
