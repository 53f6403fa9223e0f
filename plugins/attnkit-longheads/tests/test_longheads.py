"""Behaviour of ``longheads`` against independent oracles: a brute-force selection and an
explicit compact-position re-rotation written out here in Python loops (from the paper's
definition, sharing no code with the plugin) with attnkit's dense float64 reference, closed
forms (all chunks = causal dense, visited keys per length), and every backend."""

import math
import subprocess
import sys

import pytest
import torch

import attnkit
from attnkit.reference import attention as dense
from attnkit_longheads import LONGHEADS, LongheadsParams
from attnkit_longheads.positions import compact_positions
from attnkit_longheads.selection import chunk_keys, select


def _rope(x, pos, theta):
    """HF rotate_half RoPE of one vector ``x (D,)`` at integer position ``pos``, by hand."""
    d = x.shape[0]
    out = x.clone()
    for c in range(d // 2):
        ang = pos * theta ** (-2 * c / d)
        x1, x2 = float(x[c]), float(x[c + d // 2])
        out[c] = x1 * math.cos(ang) - x2 * math.sin(ang)
        out[c + d // 2] = x2 * math.cos(ang) + x1 * math.sin(ang)
    return out


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [x / sum(e) for x in e]


def brute_force_chunks(q, k, v, p, is_causal, scale, q0=None, k0=None):
    """``{(b, h, i): sorted chunk ids}`` from the definition. With ``rope_theta`` the scores use
    the un-rotated query ``q0`` and chunk keys with chunk-local RoPE built from ``k0``."""
    b_n, hq, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    w, g = p.chunk_size, hq // hkv
    n = -(-tk // w)
    off = tk - tq
    chosen = {}
    for b in range(b_n):
        for h in range(hq):
            kv = h // g
            reps = []
            for c in range(n):
                members = list(range(c * w, min(c * w + w, tk)))
                keys = [
                    k[b, kv, j] if p.rope_theta is None else _rope(k0[b, kv, j], j % w, p.rope_theta) for j in members
                ]
                if p.representation == "mean":
                    reps.append(sum(keys) / len(keys))
                    continue
                outs = []
                for t in members:
                    wts = _softmax([float(q[b, h, t] @ k[b, kv, j]) * scale for j in members])
                    outs.append(sum(wt * v[b, kv, j] for wt, j in zip(wts, members)))
                c_v = sum(outs) / len(outs)
                wts = _softmax([float(c_v @ key) / math.sqrt(d) for key in keys])
                reps.append(sum(wt * key for wt, key in zip(wts, keys)))
            for i in range(tq):
                pos = i + off
                cur = pos // w
                qq = q[b, h, i] if p.rope_theta is None else q0[b, h, i]
                allowed = [c for c in range(n) if not is_causal or c <= cur]
                forced = {c for c in allowed if c in (0, cur, cur - 1)}
                others = sorted((c for c in allowed if c not in forced), key=lambda c: (-float(qq @ reps[c]), c))
                chosen[b, h, i] = sorted(forced | set(others[: max(p.chunks - len(forced), 0)]))
    return chosen


def brute_force_mask(q, k, v, p, is_causal, scale=None, **kw):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    chosen = brute_force_chunks(q, k, v, p, is_causal, scale, **kw)
    b_n, hq, tq, _ = q.shape
    tk, w = k.shape[2], p.chunk_size
    mask = torch.zeros(b_n, hq, tq, tk, dtype=torch.bool)
    for (b, h, i), ids in chosen.items():
        for c in ids:
            for j in range(c * w, min(c * w + w, tk)):
                if not is_causal or j <= i + tk - tq:
                    mask[b, h, i, j] = True
    return mask


def _qkv(tq=13, tk=13, hq=4, hkv=2, d=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, hq, tq, d, generator=g, dtype=dtype)
    k = torch.randn(2, hkv, tk, d, generator=g, dtype=dtype)
    v = torch.randn(2, hkv, tk, d, generator=g, dtype=dtype)
    return q, k, v


PARAMS = [
    {"chunk_size": 2, "chunks": 3, "representation": "attention"},
    {"chunk_size": 3, "chunks": 4, "representation": "mean"},
    {"chunk_size": 2, "chunks": 4, "representation": "attention"},
]


@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("is_causal", [False, True])
def test_selection_matches_brute_force(params, is_causal):
    q, k, v = _qkv()
    p = LongheadsParams(**params)
    got = select(q, k, v, p, is_causal, 8**-0.5).dense(13, is_causal)
    assert torch.equal(got, brute_force_mask(q, k, v, p, is_causal))


@pytest.mark.parametrize("backend", ["reference", "numba", "onnx"])
@pytest.mark.parametrize("params", PARAMS[:2])
@pytest.mark.parametrize("is_causal", [False, True])
def test_backends_match_dense_under_brute_force_mask(backend, params, is_causal):
    q, k, v = _qkv()
    mask = brute_force_mask(q, k, v, LongheadsParams(**params), is_causal)
    want, want_lse = dense(q, k, v, mask=mask, return_lse=True)
    got, lse = LONGHEADS(q, k, v, is_causal=is_causal, backend=backend, return_lse=True, **params)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "numba", "onnx"])
def test_fewer_queries_than_keys_with_mean_chunks(backend):
    q, k, v = _qkv(tq=4, tk=13)
    params = PARAMS[1]
    want = dense(q, k, v, mask=brute_force_mask(q, k, v, LongheadsParams(**params), True))
    got = LONGHEADS(q, k, v, is_causal=True, backend=backend, **params)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_attention_chunks_need_the_chunks_queries():
    q, k, v = _qkv(tq=4, tk=13)
    with pytest.raises(ValueError, match=r"q_len 4 and kv_len 13"):
        LONGHEADS(q, k, v, is_causal=True, chunk_size=2, chunks=3)


def _rotated(seed=0, t=14, d=8, theta=50.0):
    q0, k0, v = _qkv(tq=t, tk=t, d=d, seed=seed)
    qa = torch.stack(
        [
            torch.stack([torch.stack([_rope(q0[b, h, i], i, theta) for i in range(t)]) for h in range(4)])
            for b in range(2)
        ]
    )
    ka = torch.stack(
        [
            torch.stack([torch.stack([_rope(k0[b, h, j], j, theta) for j in range(t)]) for h in range(2)])
            for b in range(2)
        ]
    )
    return q0, k0, qa, ka, v


def brute_force_compact(q0, k0, v, p, is_causal, chosen):
    """Each query over its chosen keys with keys and query re-rotated at compact positions."""
    b_n, hq, t, d = q0.shape
    w, g = p.chunk_size, hq // k0.shape[1]
    out = torch.zeros(b_n, hq, t, v.shape[-1], dtype=torch.float64)
    for (b, h, i), ids in chosen.items():
        keys, q_pos, slot = [], None, 0
        for c in ids:
            for j in range(c * w, min(c * w + w, t)):
                if c == i // w and j == i:
                    q_pos = slot
                if not is_causal or j <= i:
                    keys.append((j, slot))
                slot += 1
        qr = _rope(q0[b, h, i], q_pos, p.rope_theta)
        logits = [float(qr @ _rope(k0[b, h // g, j], s, p.rope_theta)) / math.sqrt(d) for j, s in keys]
        out[b, h, i] = sum(wt * v[b, h // g, j] for wt, (j, _) in zip(_softmax(logits), keys))
    return out


@pytest.mark.parametrize("backend", ["reference", "numba"])
@pytest.mark.parametrize("params", [PARAMS[0], PARAMS[1]])
@pytest.mark.parametrize("is_causal", [False, True])
def test_rope_reindexing_matches_explicit_compact_rerotation(backend, params, is_causal):
    q0, k0, qa, ka, v = _rotated()
    p = LongheadsParams(**params, rope_theta=50.0)
    chosen = brute_force_chunks(qa, ka, v, p, is_causal, 8**-0.5, q0=q0, k0=k0)
    want = brute_force_compact(q0, k0, v, p, is_causal, chosen)
    got = LONGHEADS(qa, ka, v, is_causal=is_causal, backend=backend, **params, rope_theta=50.0)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_compact_positions_keep_every_distance_inside_the_attended_length():
    q, k, v = _qkv(tq=40, tk=40)
    p = LongheadsParams(chunk_size=3, chunks=4, representation="mean")
    sel = select(q, k, v, p, True, 8**-0.5)
    key_pos, valid, q_pos = compact_positions(sel, 40, True)
    index, valid2 = sel.key_index(40, True)
    assert torch.equal(valid, valid2)
    dist = (q_pos[..., None] - key_pos)[valid]
    assert int(dist.min()) == 0 and int(dist.max()) < p.attended_length
    orig = (torch.arange(40)[:, None] - index)[valid]
    assert bool((dist <= orig).all())  # re-indexing only brings keys closer
    # Inside the query's own chunk the distances are the original ones.
    own = valid & (torch.div(index, 3, rounding_mode="floor") == (torch.arange(40) // 3)[:, None])
    assert torch.equal((q_pos[..., None] - key_pos)[own], (torch.arange(40)[:, None] - index)[own])


@pytest.mark.parametrize("rope_theta", [None, 50.0])
@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_all_chunks_selected_is_causal_dense_attention(backend, rope_theta):
    q, k, v = _qkv()
    got = LONGHEADS(q, k, v, is_causal=True, backend=backend, chunk_size=2, chunks=7, rope_theta=rope_theta)
    torch.testing.assert_close(got, dense(q, k, v, is_causal=True), rtol=0, atol=1e-12)


def test_first_and_local_chunks_always_kept_and_budget_respected():
    q, k, v = _qkv(tq=30, tk=30)
    p = LongheadsParams(chunk_size=3, chunks=4)
    sel = select(q, k, v, p, True, 8**-0.5)
    _, valid = sel.key_index(30, True)
    for i in range(30):
        c = i // 3
        must = {0, c, max(c - 1, 0)}
        for b in range(2):
            for h in range(4):
                ids = sel.ids[b, h, i][sel.valid[b, h, i]].tolist()
                assert must <= set(ids) and len(ids) == min(p.chunks, c + 1)
                assert ids == sorted(set(ids))
                assert int(valid[b, h, i].sum()) <= p.attended_length


def test_chunk_key_is_a_convex_combination_of_the_chunks_keys():
    q, k, v = _qkv(tq=12, tk=12)
    p = LongheadsParams(chunk_size=4, chunks=3)
    c_k = chunk_keys(q, k, v, p, 8**-0.5)  # (B, Hq, 3, D)
    chunks = k.repeat_interleave(2, dim=1).reshape(2, 4, 3, 4, 8)
    assert bool((c_k >= chunks.amin(3) - 1e-12).all()) and bool((c_k <= chunks.amax(3) + 1e-12).all())
    same = k[:, :, :1].expand(-1, -1, 12, -1)  # a chunk of copies of one key is that key
    torch.testing.assert_close(chunk_keys(q, same, v, p, 8**-0.5), same[:, :, :3].repeat_interleave(2, dim=1))


@pytest.mark.parametrize("rope_theta", [None, 50.0])
def test_cost_is_linear_in_length(rope_theta):
    # Keys visited by every query of one head (what the numba kernel loops over), against
    # the closed form: query p sees min(p + 1, (C - 1) w + p mod w + 1) keys. At three lengths,
    # beyond C w the count grows by the same amount per added chunk of queries.
    w, c = 4, 3
    counts = []
    for t in (48, 96, 192):
        q, k, v = _qkv(tq=t, tk=t, d=8, hq=2, hkv=2)
        p = LongheadsParams(chunk_size=w, chunks=c, representation="mean", rope_theta=rope_theta)
        _, valid = select(q, k, v, p, True, 8**-0.5).key_index(t, True)
        per_row = valid.sum(-1)
        want = torch.tensor([min(i + 1, (c - 1) * w + i % w + 1) for i in range(t)])
        assert torch.equal(per_row, want.expand_as(per_row))
        counts.append(int(per_row[0, 0].sum()))
    assert counts[2] - counts[1] == 2 * (counts[1] - counts[0])
    assert counts[2] < 192 * c * w


def test_float32_selects_what_float64_selects():
    q, k, v = _qkv(tq=29, tk=29, dtype=torch.float32)
    params = {"chunk_size": 3, "chunks": 4}
    mask = brute_force_mask(q.double(), k.double(), v.double(), LongheadsParams(**params), True)
    want = dense(q.double(), k.double(), v.double(), mask=mask)
    got = LONGHEADS(q, k, v, is_causal=True, backend="numba", **params)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-6)


def test_numba_gradients_recompute_the_reference():
    leaves = [x.requires_grad_() for x in _qkv(tq=11, tk=11)]
    out = LONGHEADS(*leaves, is_causal=True, backend="numba", **PARAMS[0])
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad((out * w).sum(), leaves)
    ref = [x.detach().clone().requires_grad_() for x in leaves]
    mask = brute_force_mask(*[x.detach() for x in ref], LongheadsParams(**PARAMS[0]), True)
    want = torch.autograd.grad((dense(*ref, mask=mask) * w).sum(), ref)
    for got_g, want_g in zip(grads, want):
        torch.testing.assert_close(got_g, want_g, rtol=0, atol=1e-10)


@pytest.mark.slow
def test_onnx_export_runs_in_onnxruntime_at_other_lengths(tmp_path):
    pytest.importorskip("onnxruntime")
    from attnkit.export import check_attention_export

    errors = check_attention_export(
        LONGHEADS, tmp_path / "longheads.onnx", trace_shape=(1, 2, 16, 8), test_shapes=[(2, 2, 9, 8), (1, 2, 23, 8)],
        kv_heads=1, is_causal=True, chunk_size=2, chunks=3,
    )  # fmt: skip
    assert set(errors) and all(err < 1e-4 for err in errors.values()), errors


def test_registered_through_attnkit():
    attnkit.load_plugins()
    assert attnkit.get_spec("longheads").name == "longheads"


def test_entry_point_imports_no_heavy_module():
    code = "import sys, attnkit_longheads; print(sorted(m for m in ('torch', 'numba', 'triton') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    ("field", "value", "error", "match"),
    [
        ("chunk_size", 0, ValueError, "chunk_size.*0"),
        ("chunks", 2, ValueError, "chunks.*2"),
        ("chunk_size", 2.5, TypeError, "chunk_size.*2.5"),
        ("chunks", True, TypeError, "chunks.*True"),
        ("representation", "max", ValueError, "representation.*max"),
        ("representation", 1, TypeError, "representation"),
        ("rope_theta", 0.5, ValueError, "rope_theta.*0.5"),
        ("rope_theta", "1e4", TypeError, "rope_theta"),
    ],
)
def test_bad_parameters_name_the_parameter_and_value(field, value, error, match):
    with pytest.raises(error, match=match):
        LongheadsParams(**{field: value})


def test_decode_reason_follows_the_representation():
    # The main job and patch(cache=...) ask decode_reason whether a spec can take one query
    # over a cache: "attention" chunk keys need the chunks' own queries, "mean" does not.
    from attnkit.hf.adapter import decode_reason

    spec = next(s for s in attnkit.list_specs("attention") if s.name == "longheads")
    why = decode_reason(spec, spec.make_params(chunk_size=4, chunks=3, representation="attention"))
    assert why is not None and "q_len 1 and kv_len 4" in why
    assert decode_reason(spec, spec.make_params(chunk_size=4, chunks=3, representation="mean")) is None
