"""Backend availability for ``attnkit info`` / ``attnkit plugins``: the modules a backend
declares in ``requires`` are looked up, never imported, and ``can_run`` keeps its call-time
meaning."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
import textwrap

import pytest
import torch

from attnkit import Backend, CallInfo
from attnkit.kernels import availability, standard_backends


def _fn(q, k, v, **_):  # type: ignore[no-untyped-def]
    return q


def _call(device: str = "cpu") -> CallInfo:
    return CallInfo(device=torch.device(device), dtype=torch.float32)


def _never(call):  # type: ignore[no-untyped-def]
    raise AssertionError("can_run must not be called for a backend that declares requires")


def test_find_reports_presence_and_version_without_importing(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # A module that fails if imported, installed as distribution "heavymod" 1.2.3.
    (tmp_path / "heavymod.py").write_text("raise RuntimeError('heavymod was imported')\n")
    info = tmp_path / "heavymod-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: heavymod\nVersion: 1.2.3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    status = availability.find("heavymod")
    assert (status.found, status.version, str(status)) == (True, "1.2.3", "heavymod 1.2.3")
    assert "heavymod" not in sys.modules
    assert availability.reason_unavailable(("heavymod",), "cpu") is None


def test_info_for_numba_and_triton_backends_imports_neither() -> None:
    code = textwrap.dedent(
        """
        import sys, torch
        from attnkit import CallInfo
        from attnkit.kernels import availability, standard_backends
        call = CallInfo(device=torch.device("cpu"), dtype=torch.float32)
        for b in standard_backends("attnkit_missing_plugin", "f", numba=True, triton=True):
            availability.reason_here(b, call)
        print(sorted(m for m in ("numba", "triton", "scipy", "llvmlite") if m in sys.modules))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_find_a_missing_module() -> None:
    status = availability.find("attnkit_no_such_module_xyz")
    assert (status.found, status.version) == (False, None)
    assert str(status) == "attnkit_no_such_module_xyz (not installed)"
    # A dotted name whose parent is missing is "not installed", not an exception.
    assert availability.find("no_such_parent_xyz.child").found is False


def test_reason_unavailable_names_the_missing_modules() -> None:
    assert availability.reason_unavailable(("pluggy",), "cpu") is None
    assert availability.reason_unavailable(("nope_a", "pluggy"), "cpu") == "nope_a is not installed"
    assert availability.reason_unavailable(("nope_a", "nope_b"), "cpu") == "nope_a, nope_b are not installed"


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
@pytest.mark.parametrize(
    ("env", "device", "ok"),
    [(None, "cpu", False), ("0", "cpu", False), ("1", "cpu", True), ("TRUE", "cpu", True), (None, "cuda", True)],
)
def test_triton_on_cpu_needs_the_interpreter(monkeypatch: pytest.MonkeyPatch, env, device, ok) -> None:  # type: ignore[no-untyped-def]
    if env is None:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    else:
        monkeypatch.setenv("TRITON_INTERPRET", env)
    reason = availability.reason_unavailable(("triton",), device)
    assert (reason is None) == ok
    if not ok:
        assert "TRITON_INTERPRET=1" in reason


def test_reason_here_looks_up_requires_instead_of_calling_can_run() -> None:
    missing = Backend("numba", _fn, can_run=_never, requires=("attnkit_no_such_module_xyz",))
    assert availability.reason_here(missing, _call()) == "attnkit_no_such_module_xyz is not installed"
    present = Backend("numba", _fn, can_run=_never, requires=("pluggy",))
    assert availability.reason_here(present, _call()) is None
    # The declared fields still rule calls out first.
    cpu_only = Backend("numba", _fn, can_run=_never, requires=("pluggy",), devices=("cpu",))
    assert availability.reason_here(cpu_only, _call("meta")) == "runs on cpu, not meta"


def test_reason_here_asks_can_run_when_nothing_is_declared() -> None:
    backend = Backend("custom", _fn, can_run=lambda call: f"not on {call.device.type}")
    assert availability.reason_here(backend, _call()) == "not on cpu"


def test_can_run_still_decides_a_call() -> None:
    backend = Backend("numba", _fn, can_run=lambda call: "numba is broken here", requires=("pluggy",))
    assert backend.reason_not_to_run(_call()) == "numba is broken here"
    assert backend.declared_reason(_call()) is None


def test_requires_must_be_a_tuple_of_names() -> None:
    with pytest.raises(TypeError, match="requires must be a tuple of module names, got 'numba'"):
        Backend("numba", _fn, requires="numba")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="requires must be a tuple"):
        Backend("numba", _fn, requires=("",))


def test_standard_backends_declare_what_numba_and_triton_need() -> None:
    by_name = {b.name: b for b in standard_backends("p", "f", numba=True, triton=True, flex=True, onnx=True)}
    assert by_name["numba"].requires == ("numba", "scipy")
    assert by_name["triton"].requires == ("triton",)
    assert by_name["reference"].requires == by_name["flex"].requires == by_name["onnx"].requires == ()
