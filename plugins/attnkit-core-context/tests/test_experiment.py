"""The tiny-LM experiment's helpers (fast) and a tiny end-to-end run (slow)."""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from attnkit_core_context import experiment as ex


def test_split_files_is_a_partition_by_path_checksum():
    rels = [f"pkg{i}/mod{j}.py" for i in range(7) for j in range(11)]
    train, test = ex.split_files(rels, test_every=5)
    assert sorted(train + test) == sorted(rels) and not set(train) & set(test)
    assert test == [r for r in rels if zlib.crc32(r.encode()) % 5 == 0]
    # The split of a file does not depend on which other files are listed.
    assert ex.split_files(list(reversed(rels))[:20], 5)[1] == [r for r in reversed(rels[-20:]) if r in test]
    with pytest.raises(ValueError, match="test_every"):
        ex.split_files(rels, test_every=1)


def test_stdlib_files_hold_no_site_packages(tmp_path):
    for rel in ("a.py", "sub/b.py", "site-packages/c.py", "sub/d.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    base, rels = ex.stdlib_files(tmp_path)
    assert base == tmp_path and rels == ["a.py", "sub/b.py"]
    data = ex.load_bytes(base, rels)
    assert bytes(data.tolist()) == b"x = 1\n\nx = 1\n\n"


def test_random_windows_targets_are_the_next_bytes():
    data = torch.arange(200, dtype=torch.uint8)
    x, y = ex.random_windows(data, n=9, length=17, seed=3)
    assert x.shape == y.shape == (9, 17) and x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    assert torch.equal(x[:, 0] + 16, x[:, -1])  # contiguous slices of the data
    assert torch.equal(ex.random_windows(data, 9, 17, 3)[0], x)
    with pytest.raises(ValueError, match="fewer than"):
        ex.random_windows(data, 1, 200, 0)


def test_eval_windows_tile_the_data_and_longer_windows_cover_the_same_bytes():
    data = torch.arange(100, dtype=torch.uint8)
    long = ex.eval_windows(data, 16, 2)
    short = ex.eval_windows(data, 4, 8)
    assert long.shape == (2, 17) and short.shape == (8, 5)
    assert torch.equal(long[0, -1], long[1, 0]) and torch.equal(long[:, :-1].reshape(-1), torch.arange(32))
    assert torch.equal(short[:, :-1].reshape(-1), long[:, :-1].reshape(-1))
    assert torch.equal(short[:, 1:].reshape(-1), long[:, 1:].reshape(-1))
    with pytest.raises(ValueError, match="need 401"):
        ex.eval_windows(data, 100, 4)


def test_position_buckets_are_means_over_position_ranges():
    nll = torch.arange(24, dtype=torch.float64).reshape(2, 12)
    got = ex.position_buckets(nll, (0, 4, 10, 50))
    assert list(got) == ["0-4", "4-10", "10-12"]
    assert got["4-10"] == pytest.approx(float(nll[:, 4:10].mean()))


def test_cca_params_scale_the_window_with_the_training_context():
    assert ex.cca_params(256) == {"group_size": 16, "window": 64}
    assert ex.cca_params(4096) == {"group_size": 16, "window": 1024}  # the paper's
    with pytest.raises(ValueError, match="no core token"):
        ex.cca_params(16, group_size=16)


def test_models_share_their_initial_weights_and_have_no_positions():
    cfg = ex.Config(train_len=64, eval_lens=(128,), dim=16, layers=1, heads=2)
    dense, cca = ex.make_model(cfg, "dense"), ex.make_model(cfg, "core_context")
    assert not dense.pos_emb.requires_grad and not bool(dense.pos_emb.any())
    for (na, a), (nb, b) in zip(dense.state_dict().items(), cca.state_dict().items()):
        assert na == nb and torch.equal(a, b)
    # s = 16, g = 16: rows t < s + g - 1 = 31 see no core token (full causal attention, same
    # logits); from row 31 on the first group is pooled and the logits differ.
    x = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = cca(x), dense(x)
    torch.testing.assert_close(a[:, :31], b[:, :31], rtol=0, atol=1e-5)
    assert (a[:, 31:] - b[:, 31:]).abs().amax(-1).min() > 1e-4


@pytest.mark.slow
def test_tiny_experiment_runs_end_to_end(tmp_path):
    cfg = ex.Config(
        train_len=64, eval_lens=(128, 256), eval_windows=1, dim=16, layers=1, heads=2, steps=4,
        batch_size=2, group_size=4, repeats=1,
    )  # fmt: skip
    res = ex.run(cfg, out=tmp_path / "r.json")
    assert (tmp_path / "r.json").exists()
    for name in ("dense", "core_context"):
        ev = res["models"][name]["eval"]
        assert ev["128"]["tokens"] == ev["256"]["tokens"] == 256
        # A barely trained byte model is close to uniform over 256 bytes.
        assert 50 < ev["256"]["ppl"] < 2000 and math.isfinite(ev["128"]["nll"])
    assert res["corpus"]["files_test"] > 0 and res["config"]["cca_params"] == {"group_size": 4, "window": 16}
