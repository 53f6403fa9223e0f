"""The benchmark harness: timing protocol, failure rows, ratios, JSON. No timing is asserted
(performance is measured by benchmarks, never by tests); the clock is replaced where a value
must be exact."""

from __future__ import annotations

import io
import json

import pytest

from attnkit import bench
from attnkit.bench import Bench, Case, Skip, Variant, bench_parser, format_table, time_fn


def test_time_fn_warms_up_then_times_each_repeat(monkeypatch):
    calls = []
    ticks = iter([0.0, 3.0, 10.0, 11.0, 20.0, 22.0])  # three timed calls: 3 s, 1 s, 2 s
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(ticks))
    timing = time_fn(lambda: calls.append(1), warmup=2, repeat=3)
    assert len(calls) == 5
    assert timing.times == (3.0, 1.0, 2.0) and timing.median == 2.0 and timing.best == 1.0


def test_time_fn_validates():
    with pytest.raises(ValueError, match="repeat must be >= 1, got 0"):
        time_fn(lambda: None, repeat=0)
    with pytest.raises(ValueError, match="warmup must be >= 0, got -1"):
        time_fn(lambda: None, warmup=-1)


def test_matmul_probe_reports_its_size_and_rate():
    probe = bench.matmul_gflops(32, repeat=1)
    assert probe["size"] == 32 and probe["dtype"] == "float32"
    assert probe["gflops"] == pytest.approx(2 * 32**3 / probe["median_s"] / 1e9)


def test_environment_reports_threads_cpu_and_versions():
    import torch

    env = bench.environment()
    assert env["torch_threads"] == torch.get_num_threads()
    assert env["torch"] == torch.__version__ and env["cpu"]


def test_parser_has_the_shared_options():
    args = bench_parser("x").parse_args(
        ["--quick", "--repeat", "3", "--threads", "1", "--json", "o.json", "--only", "1d"]
    )
    assert (args.quick, args.repeat, args.threads, str(args.json), args.only) == (True, 3, 1, "o.json", "1d")


def _run(cases, argv, ratios=()):  # type: ignore[no-untyped-def]
    args = bench_parser("x").parse_args(["--no-progress", "--probe-size", "16", *argv])
    out = io.StringIO()
    b = Bench("toy", args, ratios=ratios, stream=out)
    b.run(cases)
    return b, out.getvalue()


def test_failures_and_skips_are_rows_not_crashes(tmp_path):
    def fails():  # type: ignore[no-untyped-def]
        raise ImportError("numba kernel not written yet")

    def skips():  # type: ignore[no-untyped-def]
        raise Skip("needs 8 GiB")

    def explodes_when_timed():  # type: ignore[no-untyped-def]
        def call():  # type: ignore[no-untyped-def]
            raise RuntimeError("boom\nsecond line")

        return call

    cases = [
        Case(
            "c1",
            flops=1e6,
            variants=[
                Variant("ok", lambda: lambda: None),
                Variant("fail", fails),
                Variant("skip", skips),
                Variant("boom", explodes_when_timed),
            ],
        )
    ]
    path = tmp_path / "r.json"
    b, text = _run(cases, ["--repeat", "1", "--json", str(path)])
    status = {r.variant: (r.status, r.error) for r in b.results}
    assert status["ok"] == ("ok", None)
    assert status["fail"] == ("failed", "ImportError: numba kernel not written yet")
    assert status["skip"] == ("skipped", "needs 8 GiB")
    assert status["boom"] == ("failed", "RuntimeError: boom")
    assert "failed: c1 / fail: ImportError: numba kernel not written yet" in text
    data = json.loads(path.read_text())
    assert [r["status"] for r in data["results"]] == ["ok", "failed", "skipped", "failed"]
    assert data["matmul_probe"]["size"] == 16 and "cpu" in data["environment"]
    assert b.exit_code == 0


def test_ratios_gflops_and_only():
    cases = [
        Case(
            "1d small",
            flops=4e9,
            variants=[Variant("fast", lambda: lambda: None), Variant("slow", lambda: lambda: None)],
        ),
        Case("2d small", flops=4e9, variants=[Variant("fast", lambda: lambda: None)]),
    ]
    b, text = _run(cases, ["--only", "1d", "--repeat", "1"], ratios=[("fast", "slow")])
    assert {r.case for r in b.results} == {"1d small"}
    fast, slow = b.results
    assert fast.gflops == pytest.approx(4.0 / fast.median_s)
    assert fast.matmul_fraction == pytest.approx(fast.gflops / b.probe["gflops"])
    (ratio,) = b.ratio_rows()
    assert ratio["ratio"] == "fast/slow" and ratio["value"] == pytest.approx(slow.median_s / fast.median_s)
    assert "fast/slow" in text
    with pytest.raises(ValueError, match="--only 'zzz' matches no case; cases: 1d small, 2d small"):
        _run(cases, ["--only", "zzz"])


def test_exit_code_is_one_when_nothing_ran():
    def fails():  # type: ignore[no-untyped-def]
        raise RuntimeError("no")

    b, _ = _run([Case("c", flops=0, variants=[Variant("x", fails)])], ["--repeat", "1"])
    assert b.exit_code == 1


def test_format_table_aligns_columns():
    text = format_table(["name", "ms"], [["a", "1.5"], ["longer", "10.25"]], right=(1,))
    lines = text.splitlines()
    assert lines[0] == "name       ms"
    assert lines[2] == "a         1.5"
    assert lines[3] == "longer  10.25"
    assert len({len(line) for line in lines}) == 1
