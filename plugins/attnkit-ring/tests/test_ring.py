"""Behaviour of ``ring`` against independent oracles.

Single process: the spec computes dense attention locally (attnkit's float64 reference) and
the helpers are identities. Two gloo processes (``torchrun`` on 127.0.0.1 and a free port,
one launch for all the fast cases in ``_ring_cases.py``): each rank's shard result equals its
rows of single-process float64 attention, causal and not, MHA and GQA, even and uneven
shards, both rotate methods, gradients with ``rotate="allgather"``, and the refusals.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import attnkit
from attnkit.reference import attention as dense
from attnkit_ring import RING, RingParams
from attnkit_ring.distributed import (
    context_parallel_attention,
    gather_sequence,
    ring_attention_shards,
    shard_bounds,
    shard_sequence,
)

CASES = Path(__file__).with_name("_ring_cases.py")
WORLD = 2


def _qkv(tq=9, tk=9, hq=4, hkv=2, d=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, hq, tq, d, generator=g, dtype=dtype)
    k = torch.randn(2, hkv, tk, d, generator=g, dtype=dtype)
    v = torch.randn(2, hkv, tk, d, generator=g, dtype=dtype)
    return q, k, v


# ---------------------------------------------------------------------------------------------
# One process: computed locally
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize(("tq", "tk", "hq", "hkv"), [(9, 9, 4, 2), (4, 9, 4, 4), (9, 9, 6, 1)])
def test_without_process_group_equals_dense(is_causal, tq, tk, hq, hkv):
    q, k, v = _qkv(tq=tq, tk=tk, hq=hq, hkv=hkv)
    want, want_lse = dense(q, k, v, is_causal=is_causal, return_lse=True)
    for backend in ("distributed", "reference"):
        got, lse = RING(q, k, v, is_causal=is_causal, backend=backend, return_lse=True)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        torch.testing.assert_close(lse, want_lse, rtol=0, atol=1e-12)


def test_the_distributed_backend_is_chosen_and_runs_locally():
    spec = attnkit.get_spec("ring")
    call = attnkit.CallInfo(device=torch.device("cpu"), dtype=torch.float32, q_shape=(1, 2, 8, 8))
    assert spec.backend("distributed").reason_not_to_run(call) is None
    assert spec.backend("reference").auto is False


def test_helpers_are_identities_without_process_group():
    q, k, v = _qkv()
    assert shard_sequence(q) is q and gather_sequence(q) is q
    torch.testing.assert_close(context_parallel_attention(q, k, v, is_causal=True), dense(q, k, v, is_causal=True))
    out, _ = ring_attention_shards(q, k, v)
    torch.testing.assert_close(out, dense(q, k, v), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("length", "world"), [(16, 2), (13, 2), (10, 4), (3, 4)])
def test_shard_bounds_tile_the_sequence(length, world):
    bounds = [shard_bounds(length, world, r) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == length
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        shard_bounds(length, 2, 2)


def test_params_refuse_unknown_rotate():
    with pytest.raises(ValueError, match="rotate must be one of"):
        RingParams(rotate="alltoall")
    with pytest.raises(TypeError, match="rotate must be a str"):
        RingParams(rotate=1)


# ---------------------------------------------------------------------------------------------
# Two gloo processes
# ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(group: str, tmp_path: Path, timeout: float) -> list[dict]:
    """Run ``_ring_cases.py <group>`` on ``WORLD`` gloo ranks with torchrun; each rank's report."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc-per-node={WORLD}", "--master-addr=127.0.0.1", f"--master-port={_free_port()}",
        str(CASES), str(tmp_path), group,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0 and "address already in use" in (proc.stdout + proc.stderr).lower():
        # the free port was taken between probing it and torchrun binding it: try another
        cmd[5] = f"--master-port={_free_port()}"
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for r, rep in enumerate(reports):
        assert "error" not in rep, f"rank {r} raised:\n{rep['error']}"
        assert rep["world"] == WORLD
    return reports


@pytest.fixture(scope="module")
def fast_reports(tmp_path_factory):
    return _launch("fast", tmp_path_factory.mktemp("ring-fast"), timeout=300)


def _cases(reports, prefix):
    names = [n for n in reports[0] if n.startswith(prefix)]
    assert names, f"no case named {prefix}*"
    return [(r, n, rep[n]) for r, rep in enumerate(reports) for n in names]


@pytest.mark.parametrize("prefix", ["mha-", "gqa-", "uneven-", "cross-", "chunked-"])
def test_two_ranks_equal_single_process_float64(fast_reports, prefix):
    for rank, name, res in _cases(fast_reports, prefix):
        assert res["dtype"] == "torch.float64"
        assert res["out"] < 1e-12, f"rank {rank} {name}: out off by {res['out']:.2e}"
        assert res["lse"] < 1e-12, f"rank {rank} {name}: lse off by {res['lse']:.2e}"


def test_uneven_shards_are_split_as_documented(fast_reports):
    # 13 tokens over 2 ranks: rank 0 holds [0, 7), rank 1 holds [7, 13)
    assert [rep["uneven-causal-p2p"]["local_tokens"] for rep in fast_reports] == [7, 6]


def test_two_ranks_float32(fast_reports):
    for rank, name, res in _cases(fast_reports, "float32-"):
        assert res["dtype"] == "torch.float32"
        assert res["out"] < 2e-6 and res["lse"] < 2e-6, f"rank {rank} {name}: {res}"


def test_two_ranks_allgather_gradients(fast_reports):
    for rank, name, res in _cases(fast_reports, "grad-"):
        for which in "qkv":
            assert res[which] < 1e-12, f"rank {rank} {name}: d{which} off by {res[which]:.2e}"


def test_two_ranks_context_parallel_helper(fast_reports):
    for rank, _, res in _cases(fast_reports, "helper"):
        assert res["shape"] == [1, 6, 11, 8] and res["out"] < 1e-12, f"rank {rank}: {res}"


def test_two_ranks_bytes_sent_equal_the_closed_form(fast_reports):
    # 13 tokens over 2 ranks (7 + 6), B=2, Hkv=2, D=8, Dv=6, float32: one ring step per call
    for rank, rep in enumerate(fast_reports):
        res = rep["bytes"]
        assert res["sent"] == res["formula"] == [[7, 6][rank] * 2 * 2 * (8 + 6) * 4], f"rank {rank}: {res}"
        assert res["received"] == res["formula_received"] == [[6, 7][rank] * 2 * 2 * (8 + 6) * 4], res


def test_two_ranks_refusals(fast_reports):
    for rank, _, res in _cases(fast_reports, "refusals"):
        msg = res["causal_mismatch"]
        assert "query lengths [8, 9]" in msg and "key/value lengths [8, 8]" in msg, f"rank {rank}: {msg}"
        msg = res["p2p_grad"]
        assert "rotate='p2p' has no backward pass" in msg and "reference: runs only when asked" in msg, msg


@pytest.mark.slow
def test_tiny_llama_prefill_context_parallel_equals_single_process(tmp_path):
    """A tiny float64 Llama through attnkit.patch(attention="ring"), 2 ranks each feeding its
    shard of the prompt with global position ids: gathered logits equal single-process ones."""
    for rank, rep in enumerate(_launch("llama", tmp_path, timeout=300)):
        assert rep["local_tokens"] == 12
        assert rep["logits"] < 1e-10, f"rank {rank}: logits off by {rep['logits']:.2e}"
        # the control: attention over the own shard alone is far off
        assert rep["shard_alone"] > 1e-3, f"rank {rank}: the shard-local control is too close: {rep}"
