"""tools/new_plugin.py writes a plugin that loads through attnkit's plugin machinery and passes
the shared contract suite as generated."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 has no tomllib; tomli is its backport
    tomllib = pytest.importorskip("tomli")

import attnkit
from attnkit.plugins import register_plugin, unregister_plugin

ROOT = Path(__file__).resolve().parent.parent
SCAFFOLD = ROOT / "tools" / "new_plugin.py"


def _scaffold(tmp_path: Path, slug: str, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(SCAFFOLD), slug, "--kind", "attention", "--plugins-dir", str(tmp_path), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("plugins")
    done = _scaffold(tmp, "scaffold-probe", "--paper", 'Probe "Attention" Paper', "--arxiv", "2401.00001")
    assert done.returncode == 0, done.stderr
    return tmp / "attnkit-scaffold-probe"


@pytest.fixture(scope="module")
def plugin_module(generated: Path):
    """The generated module, imported from its src/ and registered with attnkit for the module."""
    src = str(generated / "src")
    sys.path.insert(0, src)
    attnkit.load_plugins()
    name = "scaffold-probe-test"
    try:
        module = importlib.import_module("attnkit_scaffold_probe")
        info = register_plugin(module, name=name, distribution="attnkit-scaffold-probe", version="0.1.0")
        assert info.error is None, info.error
        yield module
    finally:
        unregister_plugin(name)
        sys.path.remove(src)
        for mod in [m for m in sys.modules if m.startswith("attnkit_scaffold_probe")]:
            del sys.modules[mod]


def test_writes_a_complete_plugin(generated: Path) -> None:
    for rel in (
        "pyproject.toml",
        "README.md",
        "CHANGELOG.md",
        "src/attnkit_scaffold_probe/__init__.py",
        "src/attnkit_scaffold_probe/params.py",
        "src/attnkit_scaffold_probe/masks.py",
        "src/attnkit_scaffold_probe/reference.py",
        "tests/test_contract.py",
        "tests/test_scaffold_probe.py",
    ):
        assert (generated / rel).is_file(), rel
    meta = tomllib.loads((generated / "pyproject.toml").read_text())["project"]
    assert meta["name"] == "attnkit-scaffold-probe"
    assert meta["version"] == "0.1.0"
    assert "attnkit>=0.1,<0.2" in meta["dependencies"]
    assert meta["entry-points"]["attnkit"] == {"scaffold-probe": "attnkit_scaffold_probe"}
    assert "attnkit-contract" in meta["optional-dependencies"]["test"]
    assert not list(generated.rglob("*.tmpl"))
    assert "{{" not in "".join(p.read_text() for p in generated.rglob("*") if p.is_file())


def test_entry_point_module_does_not_import_torch(generated: Path) -> None:
    code = "import sys, attnkit_scaffold_probe as m; print(m.SCAFFOLD_PROBE.name, 'torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(generated / "src"), "PATH": ""},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["scaffold-probe", "False"]


def test_spec_registers_with_paper(plugin_module) -> None:
    spec = attnkit.get_spec("scaffold-probe", "attention")
    assert spec.paper.title == 'Probe "Attention" Paper'
    assert spec.paper.arxiv == "2401.00001"
    assert spec.plugin == "attnkit-scaffold-probe"


def test_generated_plugin_passes_the_contract(plugin_module) -> None:
    contract = pytest.importorskip("attnkit_contract", reason="attnkit-contract is not installed")
    if not hasattr(contract, "check_spec"):
        pytest.skip("attnkit_contract has no check_spec yet")
    contract.check_spec(attnkit.get_spec("scaffold-probe", "attention"))


def test_generated_reference_matches_brute_force_mask(plugin_module) -> None:
    """Independent of the contract package: band reference == dense float64 attention under
    the brute-force mask, causal and not, with GQA and Tq < Tk."""
    import torch

    from attnkit.reference import attention as dense

    masks = importlib.import_module("attnkit_scaffold_probe.masks")
    spec = attnkit.get_spec("scaffold-probe", "attention")
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 5, 8, generator=g, dtype=torch.float64)
    k = torch.randn(1, 2, 11, 8, generator=g, dtype=torch.float64)
    v = torch.randn(1, 2, 11, 6, generator=g, dtype=torch.float64)
    for is_causal in (False, True):
        params = spec.make_params(window=2)
        mask = masks.brute_force_mask(params, tuple(q.shape), tuple(k.shape), is_causal)
        want = dense(q, k, v, mask=mask)
        got = spec(q, k, v, window=2, is_causal=is_causal)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("slug", "extra", "message"),
    [
        ("Bad_Slug", ("--paper", "T"), "slug must be"),
        ("ok", ("--paper", "T", "--arxiv", "24.1"), "arxiv must look like"),
        ("ok", ("--paper", "   "), "paper title"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, slug: str, extra: tuple[str, ...], message: str) -> None:
    done = _scaffold(tmp_path, slug, *extra)
    assert done.returncode != 0
    assert message in done.stderr
    assert not any(tmp_path.iterdir())


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    assert _scaffold(tmp_path, "twice", "--paper", "T").returncode == 0
    again = _scaffold(tmp_path, "twice", "--paper", "T")
    assert again.returncode != 0
    assert "already exists" in again.stderr
