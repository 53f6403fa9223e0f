"""The FlexAttention backend against dense attention under the brute-force neighbourhood mask.

Compiling FlexAttention on CPU takes tens of seconds per input shape, so every compiled case
here shares one flattened shape ``(B=1, Hq=4, N=24, D=16)``, ``Hkv=2``, ``Dv=8``: dynamo
compiles once and the 1D, 2D and 3D cases reuse the graph (the geometry is in the mask).
"""

from __future__ import annotations

import math

import pytest
import torch

import attnkit
from attnkit import CallInfo
from attnkit.reference import attention
from attnkit_neighborhood.masks import brute_force_mask

flex_attention = pytest.importorskip("torch.nn.attention.flex_attention")

SPEC = attnkit.get_spec("neighborhood")
Q_HEADS, KV_HEADS, HEAD_DIM, VALUE_DIM = 4, 2, 16, 8

CASES = [
    pytest.param((24,), {"kernel_size": 5, "dilation": 2}, True, id="1d-causal-dilated"),
    pytest.param((24,), {"kernel_size": 4, "dilation": 3}, False, id="1d-even-kernel"),
    pytest.param((4, 6), {"kernel_size": (3, 2), "dilation": (1, 2)}, (False, True), id="2d-mixed-causal"),
    pytest.param((2, 3, 4), {"kernel_size": (2, 3, 3)}, False, id="3d"),
]


def _inputs(spatial: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, Q_HEADS, *spatial, HEAD_DIM, generator=gen)
    k = torch.randn(1, KV_HEADS, *spatial, HEAD_DIM, generator=gen)
    v = torch.randn(1, KV_HEADS, *spatial, VALUE_DIM, generator=gen)
    return q, k, v


@pytest.mark.parametrize(("spatial", "params", "is_causal"), CASES)
def test_flex_matches_brute_force_mask(spatial, params, is_causal):
    assert math.prod(spatial) == 24  # one compiled graph for every case (see module docstring)
    q, k, v = _inputs(spatial, seed=len(spatial))
    with torch.no_grad():
        got = SPEC(q, k, v, backend="flex", is_causal=is_causal, scale=0.3, **params)
    mask = brute_force_mask(SPEC.make_params(**params), q.shape, k.shape, is_causal)
    n = mask.shape[0]
    want = attention(
        q.double().reshape(1, Q_HEADS, n, HEAD_DIM),
        k.double().reshape(1, KV_HEADS, n, HEAD_DIM),
        v.double().reshape(1, KV_HEADS, n, VALUE_DIM),
        mask=mask,
        scale=0.3,
    ).reshape(got.shape)
    assert got.dtype == torch.float32
    assert got.shape == (1, Q_HEADS, *spatial, VALUE_DIM)
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=2e-5)


def test_mask_mod_equals_brute_force_mask_eagerly():
    # The mask_mod evaluated on a full index grid (no compile) is the brute-force mask.
    from attnkit_neighborhood.flex import mask_mod

    for spatial, ks, dl, causal in [
        ((13,), (5,), (2,), (False,)),
        ((13,), (5,), (2,), (True,)),
        ((6, 5), (3, 2), (2, 1), (True, False)),
        ((4, 3, 5), (2, 3, 2), (2, 1, 2), (False, True, False)),
    ]:
        params = SPEC.make_params(kernel_size=ks, dilation=dl)
        want = brute_force_mask(params, (1, 1, *spatial, 1), (1, 1, *spatial, 1), causal)
        n = want.shape[0]
        fn = mask_mod(spatial, ks, dl, causal)
        zero = torch.zeros((), dtype=torch.int64)
        got = fn(zero, zero, torch.arange(n)[:, None], torch.arange(n)[None, :])
        assert torch.equal(got, want), (spatial, ks, dl, causal)


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (CallInfo(device=torch.device("cpu"), dtype=torch.float32, requires_grad=True), "requires grad"),
        (CallInfo(device=torch.device("cpu"), dtype=torch.float32, return_lse=True), "log-sum-exp"),
        (CallInfo(device=torch.device("cpu"), dtype=torch.float64), "float64"),
    ],
    ids=["grad", "lse", "float64"],
)
def test_can_run_refuses_with_reason(call, needle):
    reason = SPEC.backend("flex").reason_not_to_run(call)
    assert reason is not None and needle in reason


def test_can_run_accepts_cpu_inference():
    assert SPEC.backend("flex").reason_not_to_run(CallInfo(device=torch.device("cpu"), dtype=torch.float32)) is None


def test_forced_flex_with_grad_raises_the_reason():
    q, k, v = _inputs((24,), seed=0)
    q.requires_grad_(True)
    with pytest.raises(RuntimeError, match="requires grad"):
        SPEC(q, k, v, backend="flex", kernel_size=3)


def test_flex_is_never_chosen_automatically():
    # auto=False: it runs only when asked for by name, so autograd callers never land on it.
    from attnkit import choose

    call = CallInfo(device=torch.device("cpu"), dtype=torch.float32, params=SPEC.make_params())
    assert choose(SPEC, call).name != "flex"
