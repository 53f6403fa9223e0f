"""tools/new_plugin.py writes, for every kind of spec, a plugin that installs like a user's
install, loads through attnkit's plugin machinery and passes ``attnkit check`` as generated
(where the contract has checks for that kind: see ``CHECK_RC``).

Per kind: (a) the files and metadata it writes, (b) an entry module that imports no torch,
(c) the spec registering with its paper, (d) ``pip install --target`` of the generated plugin,
then ``attnkit check attnkit-<slug>`` in a subprocess with that directory on ``PYTHONPATH`` (so
``importlib.metadata`` finds its dist-info and entry point), and the generated plugin's own
behaviour tests run against that install.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 has no tomllib; tomli is its backport
    tomllib = pytest.importorskip("tomli")

import attnkit
from attnkit.plugins import register_plugin, unregister_plugin

ROOT = Path(__file__).resolve().parent.parent
SCAFFOLD = ROOT / "tools" / "new_plugin.py"
TEMPLATES = ROOT / "tools" / "new-plugin-template"
KINDS = ("attention", "module", "cache", "analysis")
PAPER = 'Probe "Attention" Paper'
ARXIV = "2401.00001"
#: Files of each kind besides pyproject.toml, README.md, CHANGELOG.md and the entry module.
KIND_FILES = {
    "attention": (
        "params.py",
        "masks.py",
        "reference.py",
        "cpu.py",
        "gpu.py",
        "_triton_kernels.py",
        "flex.py",
        "bench.py",
        "tests/conftest.py",
        "tests/test_contract.py",
    ),
    "module": ("params.py", "module.py", "tests/test_contract.py"),
    "cache": ("params.py", "policy.py", "tests/test_contract.py"),
    "analysis": ("params.py", "analysis.py", "tests/test_contract.py"),
}
#: The attention kind's install-and-check JIT-compiles numba, runs Triton's interpreter and
#: compiles flex in a fresh process (about 30 s on 2 cores): the slow tier. The other kinds
#: take seconds and stay in the default tier.
INSTALL_KINDS = [pytest.param(k, marks=pytest.mark.slow) if k == "attention" else k for k in KINDS]
#: Modules an entry-point module must not import (architecture.md: plugin listing stays fast).
HEAVY = ("torch", "numba", "triton", "transformers")


def slug(kind: str) -> str:
    return f"scaffold-{kind}"


def snake(kind: str) -> str:
    return slug(kind).replace("-", "_")


def package(kind: str) -> str:
    """The generated import package, ``attnkit_<snake>``."""
    return f"attnkit_{snake(kind)}"


def _scaffold(tmp_path: Path, name: str, *extra: str, kind: str = "attention") -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(SCAFFOLD), name, "--kind", kind, "--plugins-dir", str(tmp_path), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def plugins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Kind -> the generated plugin directory (every kind, generated once for the module)."""
    tmp = tmp_path_factory.mktemp("plugins")
    out = {}
    for kind in KINDS:
        done = _scaffold(tmp, slug(kind), "--paper", PAPER, "--arxiv", ARXIV, kind=kind)
        assert done.returncode == 0, done.stderr
        out[kind] = tmp / f"attnkit-{slug(kind)}"
    return out


@contextlib.contextmanager
def _registered(plugin_dir: Path, kind: str) -> Iterator[ModuleType]:
    """The generated entry module imported from its src/ and registered with attnkit."""
    src = str(plugin_dir / "src")
    sys.path.insert(0, src)
    attnkit.load_plugins()
    name = f"{slug(kind)}-test"
    try:
        module = importlib.import_module(package(kind))
        info = register_plugin(module, name=name, distribution=f"attnkit-{slug(kind)}", version="0.1.0")
        assert info.error is None, info.error
        yield module
    finally:
        unregister_plugin(name)
        sys.path.remove(src)
        for mod in [m for m in sys.modules if m == package(kind) or m.startswith(package(kind) + ".")]:
            del sys.modules[mod]


def _env(site: Path | None = None) -> dict[str, str]:
    """This environment with ``site`` first on ``PYTHONPATH``, attnkit's plugin filters unset,
    and one intra-op thread (the checks' tensors are tiny; on a shared 2-core machine more
    threads only wait for each other)."""
    env = {k: v for k, v in os.environ.items() if k not in ("ATTNKIT_LOAD_PLUGINS", "ATTNKIT_DISABLE_PLUGINS")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


@pytest.fixture(scope="module")
def install(plugins: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``install(kind)``: a directory the generated plugin was ``pip install --target``-ed into,
    laid out as a user's ``pip install`` would (installed once per kind)."""
    if importlib.util.find_spec("hatchling") is None:
        pytest.skip("installing the generated plugin needs hatchling, its build backend: pip install 'attnkit[test]'")
    sites: dict[str, Path] = {}

    def site_of(kind: str) -> Path:
        if kind not in sites:
            site = tmp_path_factory.mktemp(f"site-{kind}")
            done = subprocess.run(pip_install_command(plugins[kind], site), capture_output=True, text=True, check=False)
            assert done.returncode == 0, (
                f"pip install of the generated {kind} plugin failed:\n{done.stdout}{done.stderr}"
            )
            sites[kind] = site
        return sites[kind]

    return site_of


def pip_install_command(plugin_dir: Path, site: Path) -> list[str]:
    """No dependencies (attnkit and torch are already here), no build isolation (hatchling is
    here too: no index is asked)."""
    return [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--disable-pip-version-check",
        "--target",
        str(site),
        str(plugin_dir),
    ]


def attnkit_command(*args: str) -> list[str]:
    """The ``attnkit`` console script of this interpreter's environment (what a user runs), or
    the function it calls where there is none (an interpreter outside a virtualenv)."""
    script = shutil.which("attnkit", path=str(Path(sys.executable).parent))
    if script is not None:
        return [script, *args]
    return [sys.executable, "-c", "import sys; from attnkit.cli import main; sys.exit(main())", *args]


# ---------------------------------------------------------------------------------------------
# The scaffold itself
# ---------------------------------------------------------------------------------------------


def test_every_kind_has_a_template_folder() -> None:
    spec = importlib.util.spec_from_file_location("new_plugin", SCAFFOLD)
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    sys.modules["new_plugin"] = tool  # dataclasses look their module up there
    try:
        spec.loader.exec_module(tool)
    finally:
        del sys.modules["new_plugin"]
    assert tuple(tool.KINDS) == KINDS
    folders = {p.name for p in TEMPLATES.iterdir() if p.is_dir()}
    assert folders == {*KINDS, "common"}
    for kind in KINDS:
        assert (TEMPLATES / kind / "README.md.tmpl").is_file(), kind
        assert any((TEMPLATES / kind / "src").rglob("__init__.py.tmpl")), kind


# ---------------------------------------------------------------------------------------------
# (a) files, (b) light entry module, (c) registration: every kind
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_writes_a_complete_plugin(plugins: dict[str, Path], kind: str) -> None:
    generated = plugins[kind]
    pkg = f"src/{package(kind)}"
    for rel in (
        "pyproject.toml",
        "README.md",
        "CHANGELOG.md",
        "changelog.d/.gitkeep",
        f"{pkg}/__init__.py",
        f"tests/test_{snake(kind)}.py",
        *(f if f.startswith("tests/") else f"{pkg}/{f}" for f in KIND_FILES[kind]),
    ):
        assert (generated / rel).is_file(), rel
    written = {p.relative_to(generated).as_posix() for p in generated.rglob("*") if p.is_file()}
    assert len(written) == 5 + len(KIND_FILES[kind]) + 1, sorted(written)  # nothing unexpected
    meta = tomllib.loads((generated / "pyproject.toml").read_text())["project"]
    assert meta["name"] == f"attnkit-{slug(kind)}"
    assert meta["version"] == "0.1.0"
    assert "attnkit>=0.1,<0.2" in meta["dependencies"]
    assert meta["entry-points"]["attnkit"] == {slug(kind): package(kind)}
    assert "attnkit-contract" in meta["optional-dependencies"]["test"]
    assert not list(generated.rglob("*.tmpl"))
    assert "{{" not in "".join(p.read_text() for p in generated.rglob("*") if p.is_file())
    readme = (generated / "README.md").read_text()
    assert f"attnkit check attnkit-{slug(kind)}" in readme
    assert "```python" in readme  # a runnable example (tools/run_doc_examples.py runs these)
    changelog = (generated / "CHANGELOG.md").read_text()
    assert "## [0.1.0]" in changelog
    assert "## Reproduction" in readme
    assert "Nothing is reproduced yet" in readme
    assert f"--kind {kind}" in changelog


@pytest.mark.parametrize("kind", KINDS)
def test_entry_point_module_imports_nothing_heavy(plugins: dict[str, Path], kind: str) -> None:
    const = snake(kind).upper()
    code = (
        f"import sys, {package(kind)} as m; "
        f"print(m.{const}.name, m.{const}.kind, *sorted(x for x in {HEAVY!r} if x in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(plugins[kind] / "src"), "PATH": ""},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [slug(kind), kind]


@pytest.mark.parametrize("kind", KINDS)
def test_spec_registers_with_paper(plugins: dict[str, Path], kind: str) -> None:
    with _registered(plugins[kind], kind):
        spec = attnkit.get_spec(slug(kind), kind)
        assert spec.paper.title == PAPER
        assert spec.paper.arxiv == ARXIV
        assert spec.plugin == f"attnkit-{slug(kind)}"
        assert spec.description


# ---------------------------------------------------------------------------------------------
# (d) installed with pip, checked with `attnkit check`, and its own tests
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", INSTALL_KINDS)
def test_installed_plugin_passes_attnkit_check(install: Callable[[str], Path], kind: str, tmp_path: Path) -> None:
    pytest.importorskip("attnkit_contract", reason="attnkit check needs attnkit-contract")
    site = install(kind)
    dist_info = site / f"{package(kind)}-0.1.0.dist-info"
    assert f"{slug(kind)} = {package(kind)}" in (dist_info / "entry_points.txt").read_text()
    # cwd outside the checkout: no conftest.py or rootdir of this repository applies
    done = subprocess.run(
        attnkit_command("check", f"attnkit-{slug(kind)}"),
        capture_output=True,
        text=True,
        env=_env(site),
        cwd=tmp_path,
        check=False,
        timeout=600,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"attnkit check attnkit-{slug(kind)} exited {done.returncode}:\n{out}"
    # attnkit check ends with its counts, then what the quick profile left out.
    summary = [line for line in done.stdout.splitlines() if line.startswith("attnkit check: ") and " in " in line]
    assert summary and re.search(r"\b[1-9]\d* passed\b", summary[-1]) and "failed" not in summary[-1], out


@pytest.mark.parametrize("kind", INSTALL_KINDS)
def test_generated_tests_pass_against_the_install(
    plugins: dict[str, Path], install: Callable[[str], Path], kind: str, tmp_path: Path
) -> None:
    """The plugin's behaviour tests (tests/test_<slug>.py, against its independent oracle);
    tests/test_contract.py is what ``attnkit check`` already ran."""
    own = plugins[kind] / "tests" / f"test_{snake(kind)}.py"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--import-mode=importlib", str(own)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(install(kind)), cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout and "skipped" not in done.stdout.splitlines()[-1], done.stdout


# ---------------------------------------------------------------------------------------------
# The attention kind, in process
# ---------------------------------------------------------------------------------------------


def test_generated_reference_matches_brute_force_mask(plugins: dict[str, Path]) -> None:
    """Independent of the contract package: band reference == dense float64 attention under
    the brute-force mask, causal and not, with GQA and Tq < Tk."""
    import torch

    from attnkit.reference import attention as dense

    with _registered(plugins["attention"], "attention"):
        masks = importlib.import_module(f"{package('attention')}.masks")
        spec = attnkit.get_spec(slug("attention"), "attention")
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


# ---------------------------------------------------------------------------------------------
# Lint and refusals
# ---------------------------------------------------------------------------------------------


def test_generated_plugins_are_ruff_clean(plugins: dict[str, Path]) -> None:
    """With the repository's ruff.toml, as `nox -s lint` will see them under plugins/ (there,
    ``src = plugins/*/src`` makes ``attnkit_<slug>`` first party; here the option says so)."""
    ruff = shutil.which("ruff") or shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:
        pytest.skip("ruff is not installed here (nox -s lint installs it)")
    dirs = [str(p) for p in plugins.values()]
    first_party = ["--config", "lint.isort.known-first-party = ['attnkit*']"]
    config = ["--config", str(ROOT / "ruff.toml")]
    check = subprocess.run([ruff, "check", *config, *first_party, *dirs], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = subprocess.run([ruff, "format", "--check", *config, *dirs], capture_output=True, text=True, check=False)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


@pytest.mark.parametrize(
    ("name", "extra", "message"),
    [
        ("Bad_Slug", ("--paper", "T"), "slug must be"),
        ("ok", ("--paper", "T", "--arxiv", "24.1"), "arxiv must look like"),
        ("ok", ("--paper", "   "), "paper title"),
        ("ok", ("--paper", "T", "--kind", "kernel"), "invalid choice: 'kernel'"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, name: str, extra: tuple[str, ...], message: str) -> None:
    done = _scaffold(tmp_path, name, *extra)
    assert done.returncode != 0
    assert message in done.stderr
    assert not any(tmp_path.iterdir())


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    assert _scaffold(tmp_path, "twice", "--paper", "T").returncode == 0
    again = _scaffold(tmp_path, "twice", "--paper", "T", kind="cache")
    assert again.returncode != 0
    assert "already exists" in again.stderr
