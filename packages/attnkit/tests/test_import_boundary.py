"""The core never imports a plugin: no module under ``packages/attnkit/src`` names an
``attnkit_*`` module, at module level or lazily inside a function, through an ``import``
statement, ``importlib.import_module`` / ``__import__`` / ``find_spec``, or a lazy
``"attnkit_x.module:attribute"`` reference string. Plugins reach the core through entry
points; the core only learns about them through the registry.

The one exception is the contract suite (``attnkit_contract``, not a plugin), imported on
demand by ``attnkit check`` in ``cli.py``; :data:`ALLOWED` names it and a test keeps that
entry from going stale.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: ``(path under src/, module)`` pairs the core may import, each only inside a function.
ALLOWED = {("attnkit/cli.py", "attnkit_contract")}

#: Calls whose first argument names a module to import (or to look for, which is the first
#: step of importing it).
IMPORT_CALLS = {"import_module", "__import__", "find_spec", "import_string"}

#: A whole string that is a module path or a ``"module:attribute"`` reference into an
#: ``attnkit_*`` module; hook names such as ``"attnkit_register_attention"`` have neither a
#: dot nor a colon and do not match.
REFERENCE = re.compile(r"(attnkit_\w+)(?:\.[\w.]+)?:[\w.]+|(attnkit_\w+)\.[\w.]+")


@dataclass(frozen=True)
class Reference:
    """One place a source names an ``attnkit_*`` module."""

    line: int
    module: str  # the top-level package named, e.g. ``attnkit_neighborhood``
    how: str  # "import", "from-import", "call to import_module", "reference string"
    lazy: bool  # inside a function (imported on first use) rather than at module level

    def __str__(self) -> str:
        return f"line {self.line}: {self.how} of {self.module}{' (inside a function)' if self.lazy else ''}"


def _top(name: str) -> str | None:
    top = name.split(".")[0]
    return top if top.startswith("attnkit_") else None


def _call_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def plugin_references(source: str, filename: str = "<source>") -> list[Reference]:
    """Every place ``source`` names an ``attnkit_*`` module, at any depth.

    :param source: Python source text.
    :param filename: for syntax errors.
    :returns: the references in source order.
    """
    tree = ast.parse(source, filename=filename)
    found: list[Reference] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if top := _top(alias.name):
                    found.append(Reference(node.lineno, top, "import", lazy))
        elif isinstance(node, ast.ImportFrom):
            # Relative imports (level > 0) stay inside attnkit.
            if node.level == 0 and node.module and (top := _top(node.module)):
                found.append(Reference(node.lineno, top, "from-import", lazy))
        elif isinstance(node, ast.Call) and _call_name(node.func) in IMPORT_CALLS and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and (top := _top(arg.value)):
                found.append(Reference(node.lineno, top, f"call to {_call_name(node.func)}", lazy))
                return  # its string argument is this reference, not a second one
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            m = REFERENCE.fullmatch(node.value.strip())
            if m:
                found.append(Reference(node.lineno, m.group(1) or m.group(2), "reference string", lazy))
        inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return sorted(found, key=lambda r: r.line)


def _core_sources() -> list[Path]:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20, f"expected the core's modules under {SRC}, found {len(files)}"
    return files


def _violations() -> tuple[list[str], set[tuple[str, str]]]:
    bad: list[str] = []
    used: set[tuple[str, str]] = set()
    for path in _core_sources():
        rel = path.relative_to(SRC).as_posix()
        for ref in plugin_references(path.read_text(encoding="utf-8"), str(path)):
            if (rel, ref.module) in ALLOWED and ref.lazy:
                used.add((rel, ref.module))
                continue
            bad.append(f"{rel} {ref}")
    return bad, used


def test_core_never_imports_a_plugin() -> None:
    bad, _ = _violations()
    assert not bad, "the core must not import plugins (use the registry / entry points):\n" + "\n".join(bad)


def test_the_contract_suite_exception_is_still_needed_and_lazy() -> None:
    # An ALLOWED entry nobody uses any more should be deleted, not kept as a loophole; and the
    # one in use must stay inside a function, so `attnkit plugins` works without the suite.
    _, used = _violations()
    assert used == ALLOWED
    refs = plugin_references((SRC / "attnkit/cli.py").read_text(encoding="utf-8"))
    assert refs and all(r.module == "attnkit_contract" and r.lazy for r in refs)


@pytest.mark.parametrize(
    ("source", "want"),
    [
        ("import attnkit_neighborhood", [(1, "attnkit_neighborhood", "import", False)]),
        ("import attnkit_moh.gpu as g", [(1, "attnkit_moh", "import", False)]),
        ("from attnkit_sinklora.cpu import f", [(1, "attnkit_sinklora", "from-import", False)]),
        (
            "def f():\n    from attnkit_retrieval_heads.needle import make_case\n",
            [(2, "attnkit_retrieval_heads", "from-import", True)],
        ),
        (
            "class C:\n    def m(self):\n        if x:\n            import attnkit_kdgqa\n",
            [(4, "attnkit_kdgqa", "import", True)],
        ),
        (
            "import importlib\nmod = importlib.import_module('attnkit_moh.cpu')",
            [(2, "attnkit_moh", "call to import_module", False)],
        ),
        ("m = __import__('attnkit_moh')", [(1, "attnkit_moh", "call to __import__", False)]),
        ("f = lambda: find_spec('attnkit_moh')", [(1, "attnkit_moh", "call to find_spec", True)]),
        ("IMPL = 'attnkit_neighborhood.cpu:run'", [(1, "attnkit_neighborhood", "reference string", False)]),
        ("IMPL = 'attnkit_neighborhood:SPEC'", [(1, "attnkit_neighborhood", "reference string", False)]),
        ("def f():\n    return resolve('attnkit_x.y.z')", [(2, "attnkit_x", "reference string", True)]),
        # Not plugin references:
        ("import attnkit\nfrom attnkit.cache import policy\nfrom . import registry", []),
        ("from .attnkit_local import x", []),  # relative: inside the package
        ("HOOKS = ('attnkit_register_attention', 'attnkit_sites')", []),  # hook names
        ("'''Docstring naming attnkit_retrieval_heads.needle in prose.'''", []),
        ("x = getattr(model, '_attnkit_session', None)", []),
    ],
)
def test_plugin_references_finds_every_form(source: str, want: list[tuple[int, str, str, bool]]) -> None:
    got = [(r.line, r.module, r.how, r.lazy) for r in plugin_references(source)]
    assert got == want


def test_a_plugin_import_in_the_core_would_fail_the_check(tmp_path: Path) -> None:
    # The check itself can fail: the same scan over a core module with a lazy plugin import
    # added (the way mainjob.py used to get its needles) reports it.
    source = (SRC / "attnkit/mainjob.py").read_text(encoding="utf-8")
    assert plugin_references(source) == []
    patched = source.replace(
        "    from attnkit.data.needles import make_case\n",
        "    from attnkit_retrieval_heads.needle import make_case\n",
        1,
    )
    assert patched != source
    assert [(r.module, r.lazy) for r in plugin_references(patched)] == [("attnkit_retrieval_heads", True)]


def test_importing_core_modules_loads_no_plugin() -> None:
    # The static scan above, checked at run time for the modules that used to reach into a
    # plugin: importing them (not loading plugins) must leave every attnkit_* module unloaded.
    code = (
        "import sys\n"
        "import attnkit.cache.bench, attnkit.cli, attnkit.cliargs, attnkit.data.needles, attnkit.mainjob, "
        "attnkit.testing\n"
        "print(sorted(m for m in sys.modules if m.startswith('attnkit_')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
