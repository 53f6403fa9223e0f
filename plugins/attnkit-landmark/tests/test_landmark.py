"""``landmark`` and ``landmark.retrieval`` against the paper's two softmaxes written out per
query (tests/_landmark_oracle.py), closed forms, and a brute-force block selection; every
backend."""

import pytest
import torch
from _landmark_oracle import grouped_softmax_naive

import attnkit
from attnkit.kernels import KernelCall
from attnkit.reference import attention as dense
from attnkit_landmark import LANDMARK, RETRIEVAL, LandmarkParams, RetrievalParams
from attnkit_landmark.reference import grouped_logits
from attnkit_landmark.tokens import insert_landmarks, landmark_positions

BACKENDS = ["reference", "numba"]


def _qkv(tq=13, tk=13, hq=4, hkv=2, d=8, seed=0, dtype=torch.float64, b=2):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, tq, d, generator=g, dtype=dtype)
    k = torch.randn(b, hkv, tk, d, generator=g, dtype=dtype)
    v = torch.randn(b, hkv, tk, d, generator=g, dtype=dtype)
    return q, k, v


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("is_causal", [True, False])
@pytest.mark.parametrize(("tq", "tk", "bs"), [(13, 13, 4), (12, 12, 3), (5, 13, 4), (1, 11, 5), (16, 16, 2)])
def test_single_softmax_equals_the_papers_grouped_softmax(backend, is_causal, tq, tk, bs):
    q, k, v = _qkv(tq=tq, tk=tk)
    want, want_lse = grouped_softmax_naive(q, k, v, bs, is_causal)
    got, lse = LANDMARK(q, k, v, block_size=bs, is_causal=is_causal, backend=backend, return_lse=True)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("is_causal", [True, False])
@pytest.mark.parametrize(("tq", "tk", "bs", "top_k"), [(17, 17, 3, 1), (17, 17, 3, 2), (6, 20, 4, 2), (14, 14, 2, 3)])
def test_retrieval_equals_brute_force_selection(backend, is_causal, tq, tk, bs, top_k):
    q, k, v = _qkv(tq=tq, tk=tk, seed=3)
    want, want_lse = grouped_softmax_naive(q, k, v, bs, is_causal, top_k=top_k)
    got, lse = RETRIEVAL(q, k, v, block_size=bs, top_k=top_k, is_causal=is_causal, backend=backend, return_lse=True)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_retrieval_of_every_block_is_landmark_attention(backend):
    q, k, v = _qkv(tq=20, tk=20)
    want = LANDMARK(q, k, v, block_size=4, is_causal=True, backend="reference")
    got = RETRIEVAL(q, k, v, block_size=4, top_k=5, is_causal=True, backend=backend)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_weights_sum_to_one_and_landmarks_get_none():
    q, k, v = _qkv(tq=14, tk=14)
    call = KernelCall.from_inputs(q, k, v, params=LandmarkParams(block_size=4), is_causal=True, scale=8**-0.5)
    scores = call.grouped_q() @ call.k.unsqueeze(2).transpose(-1, -2) * call.scale
    logits, _, _ = grouped_logits(scores, 4, True)
    probs = torch.softmax(logits, dim=-1)
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1], dtype=torch.float64))
    assert (probs[..., landmark_positions(14, 4)] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_block_is_causal_softmax(backend):
    # No landmark seen (every query in the first block, whose landmark is past the end).
    q, k, v = _qkv(tq=7, tk=7)
    got = LANDMARK(q, k, v, block_size=8, is_causal=True, backend=backend)
    torch.testing.assert_close(got, dense(q, k, v, is_causal=True), rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_matches_float64(backend):
    q, k, v = _qkv(tq=40, tk=40, d=16)
    want = LANDMARK(q, k, v, block_size=6, is_causal=True, backend="reference")
    got = LANDMARK(q.float(), k.float(), v.float(), block_size=6, is_causal=True, backend=backend)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("spec", [LANDMARK, RETRIEVAL], ids=lambda s: s.name)
def test_numba_gradients_match_the_reference(spec):
    leaves = [x.requires_grad_() for x in _qkv(tq=15, tk=15)]
    out = spec(*leaves, block_size=3, is_causal=True, backend="numba")
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad((out * w).sum(), leaves)
    ref = [x.detach().clone().requires_grad_() for x in leaves]
    want = torch.autograd.grad((spec(*ref, block_size=3, is_causal=True, backend="reference") * w).sum(), ref)
    for got_g, want_g in zip(grads, want):
        torch.testing.assert_close(got_g, want_g, rtol=0, atol=1e-10)


def test_reference_gradcheck():
    q, k, v = (x.requires_grad_() for x in _qkv(tq=7, tk=7, hq=2, hkv=1, d=3, b=1))

    def f(q, k, v):
        return LANDMARK(q, k, v, block_size=3, is_causal=True, backend="reference", return_lse=True)

    assert torch.autograd.gradcheck(f, (q, k, v))


def test_gradients_reach_the_landmark_keys():
    # The gates are trained: the landmark's key gets a gradient though its value has weight 0.
    q, k, v = _qkv(tq=9, tk=9)
    k.requires_grad_()
    LANDMARK(q, k, v, block_size=3, is_causal=True).sum().backward()
    assert k.grad[:, :, 2].abs().sum() > 0


def test_insert_landmarks_puts_one_after_every_mem_freq_tokens():
    ids = torch.arange(10).reshape(1, 10)
    got = insert_landmarks(ids, block_size=4, landmark_id=-1)
    want = [0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9]
    assert got.tolist() == [want]
    assert landmark_positions(len(want), 4).tolist() == [3, 7, 11]


def test_registered_through_attnkit():
    attnkit.load_plugins()
    assert attnkit.get_spec("landmark").name == "landmark"
    assert attnkit.get_spec("landmark.retrieval").name == "landmark.retrieval"


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"block_size": 1}, ValueError, "block_size"),
        ({"block_size": 2.0}, TypeError, "block_size"),
        ({"block_size": True}, TypeError, "block_size"),
        ({"top_k": 0}, ValueError, "top_k"),
        ({"top_k": "2"}, TypeError, "top_k"),
    ],
)
def test_bad_params_name_the_parameter(kwargs, error, name):
    cls = RetrievalParams if "top_k" in kwargs else LandmarkParams
    with pytest.raises(error, match=name):
        cls(**kwargs)


@pytest.mark.parametrize("is_causal", [True, False])
def test_onnx_formulation_of_retrieval_equals_brute_force(is_causal):
    # The export path ranks with torch.topk instead of the stable sort: same blocks.
    q, k, v = _qkv(tq=17, tk=17, seed=5)
    want, _ = grouped_softmax_naive(q, k, v, 3, is_causal, top_k=2)
    got = RETRIEVAL(q, k, v, block_size=3, top_k=2, is_causal=is_causal, backend="onnx")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
