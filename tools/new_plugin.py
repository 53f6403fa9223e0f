"""Create a new attnkit plugin from tools/new-plugin-template/.

Usage::

    python tools/new_plugin.py SLUG --kind attention --paper "Title" --arxiv 2401.00001

writes ``plugins/attnkit-SLUG/``: a pyproject with the ``attnkit`` entry point (version 0.1.0,
``attnkit>=0.1,<0.2``), README, CHANGELOG, a light ``__init__.py`` registering an
``AttentionSpec``, a working reference backend (banded attention, a stand-in for the paper's
mechanism) with a brute-force mask, and tests that run the shared contract suite. The result
passes the contract as generated; ``nox -l`` lists its ``plugin-SLUG`` session at once, since
nox discovers plugins from ``plugins/*/pyproject.toml``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = Path(__file__).resolve().parent / "new-plugin-template"
KINDS = ("attention",)
SLUG_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
ARXIV_RE = re.compile(r"^\d{4}\.\d{4,5}(v\d+)?$")


def _py_str(text: str) -> str:
    """A Python string literal quoted the way ``ruff format`` would leave it."""
    if '"' in text and "'" not in text:
        return repr(text)
    # A JSON string literal is a valid Python literal, in the formatter's preferred double quotes.
    return json.dumps(text, ensure_ascii=False)


def tokens(slug: str, paper: str, arxiv: str | None) -> dict[str, str]:
    """Placeholder values for the template, each already quoted for where it is used."""
    snake = slug.replace("-", "_")
    return {
        "slug": slug,
        "snake": snake,
        "const": snake.upper(),
        "class": "".join(part.capitalize() for part in slug.split("-")),
        "title": paper,
        "title_py": _py_str(paper),
        # A TOML basic string accepts JSON's escapes for the characters a title can hold.
        "title_toml": json.dumps(f"attnkit plugin: {paper}"),
        "arxiv_py": json.dumps(arxiv) if arxiv else "None",
        "arxiv_md": f" ([arXiv:{arxiv}](https://arxiv.org/abs/{arxiv}))" if arxiv else "",
        "arxiv_doc": f" (arXiv:{arxiv})" if arxiv else "",
    }


def render(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    if "{{" in text:
        leftover = re.findall(r"\{\{\w+\}\}", text)
        raise RuntimeError(f"template placeholder(s) without a value: {sorted(set(leftover))}")
    return text


def generate(
    slug: str,
    *,
    kind: str = "attention",
    paper: str,
    arxiv: str | None = None,
    plugins_dir: Path | None = None,
    force: bool = False,
) -> Path:
    """Write ``<plugins_dir>/attnkit-<slug>/`` from the template; returns that directory.

    :raises ValueError: a bad slug, kind, paper title or arXiv id, or an existing target
        directory without ``force``.
    """
    if not SLUG_RE.match(slug):
        raise ValueError(f"slug must be lowercase words joined by '-', like 'sliding-window'; got {slug!r}")
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} has no template yet; available kinds: {', '.join(KINDS)}")
    if not paper.strip():
        raise ValueError("paper title must not be empty")
    if arxiv is not None and not ARXIV_RE.match(arxiv):
        raise ValueError(f"arxiv must look like 2401.00001, got {arxiv!r}")
    plugins_dir = Path(plugins_dir) if plugins_dir is not None else ROOT / "plugins"
    target = plugins_dir / f"attnkit-{slug}"
    if target.exists() and not force:
        raise ValueError(f"{target} already exists; pass --force to overwrite its generated files")
    values = tokens(slug, paper.strip(), arxiv)
    for src in sorted(TEMPLATE.rglob("*.tmpl")):
        rel = render(str(src.relative_to(TEMPLATE)), values).removesuffix(".tmpl")
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(render(src.read_text(encoding="utf-8"), values), encoding="utf-8")
    (target / "changelog.d").mkdir(exist_ok=True)
    (target / "changelog.d" / ".gitkeep").touch()
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Create plugins/attnkit-SLUG from the plugin template.")
    parser.add_argument("slug", help="paper slug: distribution attnkit-SLUG, module attnkit_SLUG, spec SLUG")
    parser.add_argument("--kind", default="attention", choices=KINDS, help="what the plugin registers")
    parser.add_argument("--paper", required=True, help="paper title")
    parser.add_argument("--arxiv", help="arXiv id, e.g. 2401.00001")
    parser.add_argument("--plugins-dir", type=Path, help="where to create the plugin (default: <repo>/plugins)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing plugin directory's files")
    args = parser.parse_args(argv)
    try:
        target = generate(
            args.slug,
            kind=args.kind,
            paper=args.paper,
            arxiv=args.arxiv,
            plugins_dir=args.plugins_dir,
            force=args.force,
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(f"created {target}")
    print(f"next: pip install -e {target}[test] && attnkit check attnkit-{args.slug}   (or: nox -s plugin-{args.slug})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
