"""Meta-tests (datasette's): every hook is documented in docs/hooks.md as ``name(arg, ...)``
and has a ``test_hook_<name>`` test in this directory."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from attnkit import hookspecs

TESTS = Path(__file__).resolve().parent
DOCS = TESTS.parents[2] / "docs" / "hooks.md"


def _hooks() -> dict[str, list[str]]:
    """Hook name -> argument names, from the registration hooks and :class:`RuntimeSpecs`."""
    found = {}
    candidates = [*vars(hookspecs).items(), *vars(hookspecs.RuntimeSpecs).items()]
    for name, fn in candidates:
        if callable(fn) and hasattr(fn, "attnkit_spec"):
            args = [p for p in inspect.signature(fn).parameters if p != "self"]
            found[name] = args
    return found


HOOKS = _hooks()


def test_the_hook_list_is_what_the_design_names():
    assert sorted(HOOKS) == sorted(
        [
            "attnkit_register_attention",
            "attnkit_register_caches",
            "attnkit_register_analyses",
            "attnkit_sites",
            "attnkit_capture",
            "attnkit_edit",
        ]
    )


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_hook_is_documented(hook):
    if not DOCS.exists():
        pytest.skip(f"{DOCS} does not exist yet")
    signature = f"{hook}({', '.join(HOOKS[hook])})"
    assert signature in DOCS.read_text(encoding="utf-8"), f"docs/hooks.md has no section with {signature}"


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_hook_has_a_test(hook):
    sources = "\n".join(p.read_text(encoding="utf-8") for p in TESTS.rglob("test_*.py"))
    assert f"def test_hook_{hook}(" in sources, f"no test_hook_{hook} under {TESTS}"
