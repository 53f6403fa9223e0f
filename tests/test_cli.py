"""The ``attnkit`` command, run as a subprocess the way a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest


def attnkit(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("ATTNKIT_LOAD_PLUGINS", None)
    env.pop("ATTNKIT_DISABLE_PLUGINS", None)
    env.pop("ATTNKIT_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "attnkit.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def test_version():
    import attnkit as ak

    proc = attnkit("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"attnkit {ak.__version__}"


def test_plugins_json_lists_builtins_and_neighborhood():
    from importlib.metadata import version

    proc = attnkit("plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    builtin = [r for r in rows.values() if r["builtin"]]
    assert builtin and all(r["distribution"] == "attnkit" and r["version"] == version("attnkit") for r in builtin)
    assert "dense" in [s["name"] for r in builtin for s in r["specs"]]
    nb = rows["neighborhood"]
    assert nb["distribution"] == "attnkit-neighborhood" and nb["version"] == version("attnkit-neighborhood")
    assert nb["kinds"] == ["attention"] and nb["error"] is None
    (spec,) = nb["specs"]
    assert spec["name"] == "neighborhood" and {"numba", "reference", "flex", "onnx"} <= set(spec["backends"])


def test_plugins_table_shows_builtins_unless_asked_not_to():
    proc = attnkit("plugins")
    assert proc.returncode == 0, proc.stderr
    assert "attnkit-neighborhood" in proc.stdout and "built-in" in proc.stdout
    hidden = attnkit("plugins", "--no-builtins").stdout
    assert "attnkit-neighborhood" in hidden and "built-in" not in hidden


def test_info_neighborhood():
    proc = attnkit("info", "neighborhood")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "arXiv:2403.04690" in out and "attnkit-neighborhood" in out
    assert "kernel_size: int | Axes = 7" in out and "dilation: int | Axes = 1" in out
    assert "reference" in out and "expected failed checks" in out
    data = json.loads(attnkit("info", "neighborhood", "--json").stdout)
    assert data["paper"]["arxiv"] == "2403.04690"
    assert {p["name"]: p["default"] for p in data["params"]} == {"kernel_size": 7, "dilation": 1}
    backends = {b["name"]: b for b in data["backends"]}
    assert backends["reference"]["can_run"] is True and backends["reference"]["reason"] is None
    # Every backend that cannot run says why.
    assert all(b["can_run"] or b["reason"] for b in backends.values())
    assert data["capabilities"]["spatial_dims"] == [1, 2, 3]


def test_info_unknown_name_lists_the_names():
    proc = attnkit("info", "neighbourhood")
    assert proc.returncode != 0
    assert "unknown spec 'neighbourhood'" in proc.stderr and "dense" in proc.stderr and "neighborhood" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_bench_unknown_name_lists_benchmarks():
    proc = attnkit("bench", "nope")
    assert proc.returncode != 0 and "benchmarks: cache" in proc.stderr and "neighborhood" in proc.stderr


def test_bench_neighborhood_quick(tmp_path: Path):
    # numba and dense SDPA only: compiled FlexAttention costs tens of seconds of CPU compile
    # per shape and is covered by plugins/attnkit-neighborhood/tests/test_flex.py.
    out = tmp_path / "bench.json"
    proc = attnkit(
        "bench",
        "neighborhood",
        "--quick",
        "--backends",
        "numba,sdpa",
        "--no-progress",
        "--repeat",
        "1",
        "--json",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert "matmul probe" in proc.stdout and "numba/sdpa" in proc.stdout
    data = json.loads(out.read_text())
    rows = data["results"]
    assert {r["variant"] for r in rows} == {"numba", "sdpa"} and len(rows) == 4
    # A backend may still fail while its kernel is being written, but only as a row.
    assert all(r["status"] in ("ok", "failed", "skipped") for r in rows)
    assert all(r["status"] == "ok" for r in rows if r["variant"] == "sdpa")
    for r in rows:
        info = r["info"]
        assert info["pairs"] > 0 and info["heads"] == 2
    assert data["environment"]["torch_threads"] >= 1 and data["matmul_probe"]["gflops"] > 0


def test_export_dense_runs_in_onnxruntime(tmp_path: Path):
    path = tmp_path / "dense.onnx"
    proc = attnkit("export", "dense", str(path), "--shape", "1,4,16,8", "--kv-heads", "2", "--causal")
    assert proc.returncode == 0, proc.stderr
    onnx.checker.check_model(str(path))
    lines = [line for line in proc.stdout.splitlines() if "max abs error" in line]
    assert len(lines) == 2 and "(1, 4, 16, 8)" not in "".join(lines)  # two other lengths
    assert all(float(line.rsplit(" ", 1)[1]) < 1e-4 for line in lines)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["export", "dense", "x.onnx", "--param", "window=3"], "unknown parameter(s) window"),
        (["export", "dense", "x.onnx", "--shape", "1,4,x,8"], "--shape must be comma-separated integers"),
        (["export", "dense", "x.onnx", "--kv-heads", "3"], "--kv-heads must divide the 4 query heads"),
    ],
    ids=["param", "shape", "kv-heads"],
)
def test_export_bad_arguments_fail_with_one_line(args, needle, tmp_path: Path):
    proc = attnkit(*[str(tmp_path / a) if a.endswith(".onnx") else a for a in args])
    assert proc.returncode != 0 and needle in proc.stderr and "Traceback" not in proc.stderr


def test_check_runs_or_says_how_to_install():
    proc = attnkit("check", "no-such-plugin")
    assert proc.returncode != 0
    try:
        import attnkit_contract  # noqa: F401
    except ImportError:
        assert proc.returncode == 2 and "pip install attnkit-contract" in proc.stderr
    else:
        assert "no-such-plugin" in proc.stderr and "Traceback" not in proc.stderr
