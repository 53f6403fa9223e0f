"""Execute the ```python code blocks of Markdown pages so documented examples cannot rot.

Usage: ``python tools/run_doc_examples.py README.md docs/user-guide.md``.

The blocks of one page run in order in one namespace (a later block may use names an earlier
one defined), each page in a fresh namespace and a temporary working directory. Only blocks
whose info string is exactly ``python`` run; write ``py`` or ``pycon`` for a snippet that must
not run (a fragment, or something needing a GPU). Exits non-zero naming the page and the line
of the first block that fails.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(first line number, source)`` of every ```python block in ``text``."""
    blocks = []
    for m in FENCE.finditer(text):
        if m.group("info").strip() == "python":
            line = text.count("\n", 0, m.start("body")) + 1
            blocks.append((line, m.group("body")))
    return blocks


def run_page(path: Path) -> int:
    """Run the page's blocks; returns how many ran. Raises ``RuntimeError`` on the first failure."""
    blocks = python_blocks(path.read_text(encoding="utf-8"))
    namespace: dict[str, object] = {"__name__": "__doc_example__"}
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="attnkit-doc-") as tmp:
        # Examples may write files (ONNX exports, plots); keep them out of the checkout.
        os.chdir(tmp)
        try:
            for line, source in blocks:
                code = compile(source, f"{path}:{line}", "exec")
                try:
                    exec(code, namespace)
                except Exception as exc:
                    detail = "".join(traceback.format_exception(exc))
                    raise RuntimeError(f"{path}: the python block at line {line} failed:\n{detail}") from exc
        finally:
            os.chdir(cwd)
    return len(blocks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="+", type=Path, help="Markdown files")
    args = parser.parse_args(argv)
    for page in args.pages:
        if not page.exists():
            parser.error(f"no such page: {page}")
    for page in args.pages:
        t0 = time.perf_counter()
        try:
            n = run_page(page.resolve())
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"{page}: {n} python block(s) ran in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
