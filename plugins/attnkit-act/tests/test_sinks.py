"""Known answers for sink detection and calibration (spec (d)), each against a brute-force
float64 loop written independently of :mod:`attnkit_act.sinks`."""

from __future__ import annotations

import pytest
import torch

from attnkit_act.sinks import calibrate, causal_column_mean, detect_sinks, first_real_key, sink_candidates


def _random_causal(b: int, h: int, t: int, seed: int = 0, pad: list[int] | None = None) -> torch.Tensor:
    """Softmax maps ``(B, H, T, T)`` float64, causal; ``pad[b]`` left-padding positions get
    zero rows and columns."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, h, t, t, generator=g, dtype=torch.float64) * 2
    allowed = torch.ones(t, t, dtype=torch.bool).tril().expand(b, h, t, t).clone()
    for i, p in enumerate(pad or []):
        allowed[i, :, :, :p] = False
        allowed[i, :, :p, :] = False
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.softmax(s, -1).nan_to_num(0.0)


def _loop_colmean(a: torch.Tensor) -> list[float]:
    """One square map ``(T, T)``: column sums over the rows with mass that see the column."""
    t = a.shape[0]
    rows = a.tolist()
    real = [sum(r) > 0 for r in rows]
    out = []
    for j in range(t):
        tot, n = 0.0, 0
        for i in range(t):
            if i >= j and real[i]:
                tot += rows[i][j]
                n += 1
        out.append(tot / n if n else 0.0)
    return out


def _loop_calibrate(a: torch.Tensor, sinks: list[int], beta: float) -> list[list[float]]:
    """ACT on one map with Python floats."""
    out = []
    for row in a.tolist():
        sink = sum(row[j] for j in sinks)
        rest = sum(x for j, x in enumerate(row) if j not in sinks)
        if sink == 0 or rest == 0:
            out.append(list(row))
            continue
        new = []
        for j, x in enumerate(row):
            new.append(beta * x if j in sinks else x + (1 - beta) * sink * x / rest)
        out.append(new)
    return out


def test_column_mean_matches_loop_with_padding():
    a = _random_causal(3, 2, 7, pad=[0, 2, 3])
    mean, _ = causal_column_mean(a)
    for b in range(3):
        for h in range(2):
            torch.testing.assert_close(mean[b, h], torch.tensor(_loop_colmean(a[b, h]), dtype=torch.float64))


def test_column_mean_of_a_decode_row_and_a_chunk():
    a = _random_causal(1, 1, 6, seed=3)
    # the last 2 query rows of a 6-key prefill are a 2-query chunk after a 4-key cache
    chunk = a[:, :, 4:, :]
    mean, counts = causal_column_mean(chunk)
    assert counts[0, 0].tolist() == [2, 2, 2, 2, 2, 1]
    want = [(float(a[0, 0, 4, j]) + float(a[0, 0, 5, j])) / 2 for j in range(5)] + [float(a[0, 0, 5, 5])]
    torch.testing.assert_close(mean[0, 0], torch.tensor(want, dtype=torch.float64))


def test_planted_mid_sequence_sink_is_found_exactly():
    t = 12
    a = torch.zeros(1, 1, t, t, dtype=torch.float64)
    for i in range(t):
        a[0, 0, i, : i + 1] = 1.0 / (i + 1)
        if i >= 5:  # every query that sees key 5 gives it 0.3, the rest spread uniformly
            a[0, 0, i, : i + 1] = 0.7 / i
            a[0, 0, i, 5] = 0.3
    # with min_queries=4 the last keys (few queries) cannot qualify; key 0's mean is far
    # above 0.1 (the initial sink), key 5's is exactly 0.3
    mean = _loop_colmean(a[0, 0])
    assert abs(mean[5] - 0.3) < 1e-12
    found = detect_sinks(a, thres=0.25, min_queries=4)
    assert found[0, 0].nonzero().flatten().tolist() == [5]
    # the loop's answer: columns above 0.25 seen by >= 4 queries, minus column 0
    want = [j for j in range(1, t) if mean[j] > 0.25 and (t - j) >= 4]
    assert want == [5]


def test_relative_rule_uses_alpha_over_real_tokens():
    a = _random_causal(2, 1, 8, seed=5, pad=[0, 3])
    hits = sink_candidates(a, rule="relative", alpha=1.5)
    for b, n_real in ((0, 8), (1, 5)):
        mean = _loop_colmean(a[b, 0])
        want = [j for j in range(8) if mean[j] > 1.5 / n_real]
        assert hits[b, 0].nonzero().flatten().tolist() == want


def test_first_real_token_is_spared_even_when_not_first_hit():
    # row 0 gives key 0 all its mass, so key 0's mean is >= 1/T: T = 16 lets it fall below 0.1
    t = 16
    a = torch.zeros(1, 1, t, t, dtype=torch.float64)
    for i in range(t):
        a[0, 0, i, : i + 1] = 1.0 / (i + 1)
    a[0, 0, 3:, :] *= 0.5
    a[0, 0, 3:, 3] += 0.5  # key 3 is a strong hidden sink
    a[0, 0, 0, 0] = 1.0
    mean = _loop_colmean(a[0, 0])
    hits = [j for j in range(t) if mean[j] > 0.1]
    assert 0 in hits  # token 0 is a sink here too: both rules spare it
    assert detect_sinks(a, spare="first_token")[0, 0, 0].item() is False
    # lower token 0 below the threshold: "first_token" still spares position 0 and keeps 3;
    # the released indices[1:] ("first_hit") drops key 3, the hidden sink
    b = a.clone()
    b[0, 0, 1:, 0] = 0.0
    b[0, 0, 1:] /= b[0, 0, 1:].sum(-1, keepdim=True)
    b[0, 0, 0, 0] = 1.0
    mean_b = _loop_colmean(b[0, 0])
    hits_b = [j for j in range(t) if mean_b[j] > 0.1]
    assert mean_b[0] <= 0.1 and hits_b[0] == 1 and 3 in hits_b
    first_token = detect_sinks(b, spare="first_token")[0, 0].nonzero().flatten().tolist()
    first_hit = detect_sinks(b, spare="first_hit")[0, 0].nonzero().flatten().tolist()
    assert first_token == hits_b
    assert first_hit == hits_b[1:]


def test_first_real_key_with_left_padding():
    a = _random_causal(3, 2, 6, pad=[0, 1, 4])
    assert first_real_key(a).tolist() == [0, 1, 4]


@pytest.mark.parametrize("beta", [0.0, 0.4, 0.9])
def test_calibration_against_loop(beta):
    a = _random_causal(2, 3, 9, seed=7, pad=[0, 2])
    sinks = detect_sinks(a, thres=0.08)
    assert sinks.any()
    got = calibrate(a, sinks, beta)
    for b in range(2):
        for h in range(3):
            s = sinks[b, h].nonzero().flatten().tolist()
            want = torch.tensor(_loop_calibrate(a[b, h], s, beta), dtype=torch.float64)
            torch.testing.assert_close(got[b, h], want, rtol=0, atol=1e-12)


def test_row_sums_beta_scaling_first_token_and_ratios():
    a = _random_causal(2, 4, 10, seed=11, pad=[0, 3])
    beta = 0.4
    sinks = detect_sinks(a, thres=0.1)
    out = calibrate(a, sinks, beta)
    first = first_real_key(a)
    for b in range(2):
        for h in range(4):
            s = set(sinks[b, h].nonzero().flatten().tolist())
            assert int(first[b]) not in s
            for i in range(10):
                row, new = a[b, h, i].tolist(), out[b, h, i].tolist()
                assert abs(sum(new) - sum(row)) < 1e-12  # 1, or 0 for a padding row
                sink_mass = sum(row[j] for j in s)
                rest = [j for j in range(10) if j not in s and row[j] > 0]
                if sink_mass == 0 or not rest:
                    assert new == row
                    continue
                for j in s:
                    assert abs(new[j] - beta * row[j]) < 1e-15
                # the first real token is never reduced
                assert new[int(first[b])] >= row[int(first[b])] - 1e-15
                # non-sink keys keep their ratios
                r0 = rest[0]
                for j in rest[1:]:
                    assert abs(new[j] / new[r0] - row[j] / row[r0]) < 1e-9


def test_beta_one_and_empty_sinks_are_identity():
    a = _random_causal(2, 2, 7, seed=2)
    sinks = detect_sinks(a, thres=0.1)
    assert torch.equal(calibrate(a, sinks, 1.0), a)
    assert torch.equal(calibrate(a, torch.zeros_like(sinks), 0.4), a)


def test_row_without_non_sink_mass_stays_finite_and_unchanged():
    a = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    a[0, 0, 0, 0] = 1.0
    a[0, 0, 1, 1] = 1.0  # all of row 1's mass is on key 1
    a[0, 0, 2] = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    sinks = torch.tensor([[[False, True, False]]])
    out = calibrate(a, sinks, 0.4)
    assert torch.isfinite(out).all()
    assert out[0, 0, 1].tolist() == [0.0, 1.0, 0.0]
    torch.testing.assert_close(out[0, 0, 2], torch.tensor([0.2 + 0.3 * 0.4, 0.2, 0.3 + 0.3 * 0.6], dtype=torch.float64))


def test_bad_inputs_name_the_argument_and_sizes():
    a = _random_causal(1, 2, 5)
    with pytest.raises(ValueError, match=r"pattern.*\(2, 5, 5\)"):
        calibrate(a[0], torch.zeros(1, 2, 5, dtype=torch.bool), 0.4)
    with pytest.raises(ValueError, match=r"sinks.*\(1, 2, 5\).*\(1, 2, 4\)"):
        calibrate(a, torch.zeros(1, 2, 4, dtype=torch.bool), 0.4)
    with pytest.raises(ValueError, match="beta"):
        calibrate(a, torch.zeros(1, 2, 5, dtype=torch.bool), 1.5)
    with pytest.raises(ValueError, match="Tq=5 > Tk=3"):
        causal_column_mean(a[..., :3])
    with pytest.raises(ValueError, match="rule"):
        sink_candidates(a, rule="median")
    with pytest.raises(ValueError, match="spare"):
        detect_sinks(a, spare="none")
