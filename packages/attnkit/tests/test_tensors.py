"""Every error path of attnkit.tensors names the argument and the sizes it saw."""

from __future__ import annotations

import pytest
import torch

from attnkit import tensors


def t(*shape, dtype=torch.float32):  # type: ignore[no-untyped-def]
    return torch.zeros(*shape, dtype=dtype)


def test_valid_gqa_shapes_are_read_off():
    s = tensors.check_qkv(t(2, 6, 5, 8), t(2, 3, 7, 8), t(2, 3, 7, 4))
    assert (s.batch, s.q_heads, s.kv_heads, s.group) == (2, 6, 3, 2)
    assert (s.q_spatial, s.kv_spatial, s.head_dim, s.value_dim) == ((5,), (7,), 8, 4)
    assert (s.q_len, s.kv_len, s.n_spatial) == (5, 7, 1)


def test_valid_spatial_shapes():
    s = tensors.check_qkv(t(1, 2, 3, 4, 8), t(1, 2, 3, 4, 8), t(1, 2, 3, 4, 8), spatial_dims=(1, 2, 3))
    assert s.q_spatial == (3, 4) and s.q_len == 12


@pytest.mark.parametrize(
    ("q", "k", "v", "kwargs", "exc", "pattern"),
    [
        ([1, 2, 3], t(1, 1, 2, 4), t(1, 1, 2, 4), {}, TypeError, r"q must be a torch.Tensor, got list"),
        (
            t(1, 1, 2, 4),
            t(1, 1, 2, 4, dtype=torch.int64),
            t(1, 1, 2, 4),
            {},
            TypeError,
            r"k must be a floating-point tensor, got dtype torch.int64",
        ),
        (
            t(2, 4, 8),
            t(2, 4, 8),
            t(2, 4, 8),
            {},
            ValueError,
            r"q must have shape \(B, H, T, D\); got 3 dims \(2, 4, 8\)",
        ),
        (
            t(1, 1, 2, 3, 4),
            t(1, 1, 6, 4),
            t(1, 1, 6, 4),
            {"spatial_dims": (1, 2)},
            ValueError,
            r"k must have as many dims as q; got k \(1, 1, 6, 4\) and q \(1, 1, 2, 3, 4\)",
        ),
        (
            t(1, 1, 2, 4),
            t(1, 1, 2, 4, dtype=torch.float64),
            t(1, 1, 2, 4),
            {},
            TypeError,
            r"share a dtype; got q torch.float32, k torch.float64, v torch.float32",
        ),
        (t(1, 1, 0, 4), t(1, 1, 2, 4), t(1, 1, 2, 4), {}, ValueError, r"q has an empty axis: \(1, 1, 0, 4\)"),
        (t(2, 1, 2, 4), t(3, 1, 2, 4), t(3, 1, 2, 4), {}, ValueError, r"batch sizes differ: q 2, k 3, v 3"),
        (t(1, 2, 2, 4), t(1, 2, 2, 4), t(1, 1, 2, 4), {}, ValueError, r"same number of heads; got k 2, v 1"),
        (t(1, 6, 2, 4), t(1, 4, 2, 4), t(1, 4, 2, 4), {}, ValueError, r"q has 6 heads and k/v have 4"),
        (
            t(1, 4, 2, 4),
            t(1, 2, 2, 4),
            t(1, 2, 2, 4),
            {"allow_gqa": False},
            ValueError,
            r"as many k/v heads as q heads; got q 4, k/v 2",
        ),
        (
            t(1, 1, 2, 4),
            t(1, 1, 3, 4),
            t(1, 1, 5, 4),
            {},
            ValueError,
            r"k and v must have the same token axes; got k \(3,\), v \(5,\)",
        ),
        (t(1, 1, 2, 4), t(1, 1, 2, 8), t(1, 1, 2, 8), {}, ValueError, r"same head dim; got q 4, k 8"),
        (
            t(1, 1, 2, 4),
            t(1, 1, 3, 4),
            t(1, 1, 3, 4),
            {"same_spatial": True},
            ValueError,
            r"same token axes here; got q \(2,\), k \(3,\)",
        ),
    ],
    ids=[
        "not-tensor",
        "int-dtype",
        "ndim",
        "k-ndim",
        "mixed-dtype",
        "empty",
        "batch",
        "kv-heads",
        "gqa-ratio",
        "no-gqa",
        "kv-tokens",
        "head-dim",
        "same-spatial",
    ],
)
def test_check_qkv_errors(q, k, v, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        tensors.check_qkv(q, k, v, **kwargs)


def test_check_qkv_names_allowed_spatial_forms():
    with pytest.raises(ValueError, match=r"\(B, H, T, D\) or \(B, H, X, Y, D\).*got 7 dims"):
        tensors.check_qkv(t(1, 1, 1, 1, 1, 1, 1), t(1, 1, 1, 1), t(1, 1, 1, 1), spatial_dims=(1, 2))


def test_to_canonical_layouts():
    q = torch.randn(2, 5, 3, 4)  # (B, T, H, D)
    cq, _, _ = tensors.to_canonical(q, q, q, layout="bthd")
    assert cq.shape == (2, 3, 5, 4)
    assert torch.equal(tensors.from_canonical(cq, "bthd"), q)
    assert tensors.lse_from_canonical(torch.zeros(2, 3, 5), "bthd").shape == (2, 5, 3)
    with pytest.raises(ValueError, match=r"layout must be one of \('bhtd', 'bthd'\), got 'bhdt'"):
        tensors.to_canonical(q, q, q, layout="bhdt")
    with pytest.raises(ValueError, match=r"k with layout='bthd' must be \(B, \*S, H, D\), got \(5, 4\)"):
        tensors.to_canonical(q, t(5, 4), q, layout="bthd")
    with pytest.raises(TypeError, match=r"v must be a torch\.Tensor, got NoneType"):
        tensors.to_canonical(q, q, None, layout="bthd")  # type: ignore[arg-type]


def test_check_is_causal():
    assert tensors.check_is_causal(True) is True
    assert tensors.check_is_causal((True, False), n_axes=2) == (True, False)
    assert tensors.check_is_causal([True], n_axes=1) is True
    with pytest.raises(TypeError, match="is_causal must be a bool, got int"):
        tensors.check_is_causal(1)
    with pytest.raises(ValueError, match=r"tuple of 2 bools .* got \(True,\)"):
        tensors.check_is_causal((True,), n_axes=2)
    with pytest.raises(ValueError, match="is_causal=True is not supported"):
        tensors.check_is_causal(True, supported=False)
    with pytest.raises(ValueError, match="is_causal=True is not supported"):
        tensors.check_is_causal((False, True), n_axes=2, supported=False)


def test_check_scale():
    assert tensors.check_scale(None, 16) == 0.25
    assert tensors.check_scale(2, 16) == 2.0
    with pytest.raises(TypeError, match="scale must be a float, got str"):
        tensors.check_scale("0.1", 16)
    with pytest.raises(TypeError, match="scale must be a float, got bool"):
        tensors.check_scale(True, 16)
    for bad in (0.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale must be finite and non-zero"):
            tensors.check_scale(bad, 16)


def test_check_mask():
    shapes = tensors.check_qkv(t(2, 4, 3, 8), t(2, 2, 5, 8), t(2, 2, 5, 8))
    assert tensors.check_mask(torch.ones(3, 5, dtype=torch.bool), shapes).shape == (1, 1, 3, 5)
    assert tensors.check_mask(torch.ones(2, 3, 5, dtype=torch.bool), shapes).shape == (2, 1, 3, 5)
    assert tensors.check_mask(torch.ones(1, 4, 3, 5, dtype=torch.bool), shapes).shape == (1, 4, 3, 5)
    with pytest.raises(TypeError, match=r"mask must be a torch\.Tensor of dtype bool, got list"):
        tensors.check_mask([[True]], shapes)
    with pytest.raises(TypeError, match=r"must have dtype torch\.bool .* got torch\.float32"):
        tensors.check_mask(torch.ones(3, 5), shapes)
    with pytest.raises(ValueError, match=r"2, 3 or 4 dims .* got \(5,\)"):
        tensors.check_mask(torch.ones(5, dtype=torch.bool), shapes)
    with pytest.raises(
        ValueError,
        match=r"mask of shape \(3, 4\) does not broadcast to \(B, Hq, Tq, Tk\) = \(2, 4, 3, 5\) \(axis Tk\)",
    ):
        tensors.check_mask(torch.ones(3, 4, dtype=torch.bool), shapes)
    with pytest.raises(ValueError, match=r"\(axis Hq\)"):
        tensors.check_mask(torch.ones(1, 2, 3, 5, dtype=torch.bool), shapes)


def test_spec_call_reports_validation_errors():
    import attnkit

    with pytest.raises(ValueError, match=r"q has 3 heads and k/v have 2"):
        attnkit.attention(t(1, 3, 4, 8), t(1, 2, 4, 8), t(1, 2, 4, 8))


@pytest.mark.parametrize(
    ("make", "arg", "pattern"),
    [
        (
            lambda: (t(1, 1, 2, 4).to(torch.float8_e4m3fn), t(1, 1, 2, 4), t(1, 1, 2, 4)),
            "q",
            r"q has dtype torch.float8_e4m3fn",
        ),
        (
            lambda: (t(1, 1, 2, 4), t(1, 1, 2, 4).to(torch.float8_e5m2), t(1, 1, 2, 4)),
            "k",
            r"k has dtype torch.float8_e5m2",
        ),
        (lambda: (t(1, 1, 2, 4), t(1, 1, 2, 4), t(1, 1, 2, 4).to(torch.complex64)), "v", r"v must be a floating-point"),
        (lambda: (t(1, 1, 2, 4), t(1, 1, 2, 4).to("meta"), t(1, 1, 2, 4)), "k", r"k is on the meta device"),
    ],
    ids=["float8-q", "float8-k", "complex-v", "meta-k"],
)
def test_check_qkv_refuses_dtypes_and_devices_kernels_cannot_take(make, arg, pattern):
    q, k, v = make()
    with pytest.raises(TypeError, match=pattern):
        tensors.check_qkv(q, k, v)
    import attnkit

    with pytest.raises(TypeError, match=pattern):  # before it reaches torch internals
        attnkit.get_spec("dense")(q, k, v)


@pytest.mark.parametrize("value", ["no", 1, None, torch.tensor(True)])
def test_return_lse_must_be_a_bool(value):
    import attnkit

    with pytest.raises(TypeError, match=r"return_lse must be a bool"):
        attnkit.get_spec("dense")(t(1, 1, 2, 4), t(1, 1, 2, 4), t(1, 1, 2, 4), return_lse=value)
    assert tensors.check_bool(True, "flag") is True
    with pytest.raises(TypeError, match=r"flag must be a bool"):
        tensors.check_bool(value, "flag")


def test_non_finite_rows_and_the_cheap_range_test():
    x = torch.zeros(2, 3, 4)
    x[0, 1, 2] = float("nan")
    x[1, 2, 0] = float("-inf")
    assert tensors.non_finite_rows(x).tolist() == [[False, True, False], [False, False, True]]
    q, k, v = t(1, 2, 3, 4) + 1, t(1, 1, 5, 4) + 1, t(1, 1, 5, 4)
    assert tensors.surely_in_range(q, k, v, 0.5)
    bound, limit = tensors.logit_bound(q, k, 0.5)
    assert bound.shape == (1, 2, 3) and torch.all(bound == 2.0) and limit == torch.finfo(torch.float32).max / 2
    assert not tensors.surely_in_range(q * float("nan"), k, v, 0.5)
    assert not tensors.surely_in_range(q * 1e20, k * 1e20, v, 0.5)  # logits could overflow
    assert not tensors.surely_in_range(q, k, v + float("inf"), 0.5)
    assert not tensors.surely_in_range(q.to("meta"), k.to("meta"), v.to("meta"), 0.5)  # no sync off the CPU
