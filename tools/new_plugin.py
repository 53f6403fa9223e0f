"""Create a new attnkit plugin from tools/new-plugin-template/.

Usage::

    python tools/new_plugin.py SLUG --kind KIND --paper "Title" --arxiv 2401.00001

writes ``plugins/attnkit-SLUG/`` for one of the four kinds of spec the registration hooks take:

* ``attention``: an ``AttentionSpec`` (a kernel, ``q, k, v -> out``): banded attention with a
  brute-force mask and the usual backends on attnkit's backend kit (:mod:`attnkit.kernels`):
  numba, Triton, a plain-torch reference (also the ONNX export path) and flex, plus a
  declared benchmark;
* ``module``: an ``AttentionModuleSpec`` (own projections and parameters): multi-head
  attention whose head outputs are scaled by a learned per-token gate, ``strength=0`` being
  plain multi-head attention (the reduction the module contract checks);
* ``cache``: a ``KVCacheSpec`` (a ``CachePolicy``): the ``recent`` newest tokens plus the
  older keys of smallest L2 norm, ``budget`` in all;
* ``analysis``: an ``AnalysisSpec`` over run-time sites: the mean attention entropy of every
  query head, from ``blocks.{l}.attn.hook_pattern``.

Every kind gets a pyproject with the ``attnkit`` entry point (version 0.1.0,
``attnkit>=0.1,<0.2``), README, CHANGELOG, ``changelog.d/``, a light ``__init__.py`` that only
declares the spec (torch loads on first use), a working implementation of the stand-in, and
tests against an independent reference plus the shared contract of its kind. The result
passes ``attnkit check attnkit-SLUG`` as generated; ``nox -l`` lists its ``plugin-SLUG``
session at once, since nox discovers plugins from ``plugins/*/pyproject.toml``.

Templates: ``tools/new-plugin-template/<kind>/`` over ``tools/new-plugin-template/common/``
(a file of the kind's folder replaces the common file of the same path).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = Path(__file__).resolve().parent / "new-plugin-template"
#: Files every kind gets unless its own folder has a file of the same path.
COMMON = TEMPLATES / "common"
SLUG_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
ARXIV_RE = re.compile(r"^\d{4}\.\d{4,5}(v\d+)?$")


@dataclass(frozen=True)
class Kind:
    """One kind of plugin the scaffold writes.

    :param spec_type: the spec class the plugin registers.
    :param hook: the registration hook it implements.
    :param standin: what the generated implementation computes, for help texts and the CHANGELOG.
    """

    spec_type: str
    hook: str
    standin: str


#: Kind name -> what the scaffold writes for it; one template folder per kind.
KINDS: dict[str, Kind] = {
    "attention": Kind(
        "AttentionSpec",
        "attnkit_register_attention",
        "banded attention with a brute-force mask and numba, Triton, reference and flex backends on attnkit's backend kit",
    ),
    "module": Kind(
        "AttentionModuleSpec",
        "attnkit_register_attention",
        "multi-head attention with per-token head gates, plain MHA at strength 0",
    ),
    "cache": Kind(
        "KVCacheSpec",
        "attnkit_register_caches",
        "a recent window plus the older keys of smallest L2 norm",
    ),
    "analysis": Kind(
        "AnalysisSpec",
        "attnkit_register_analyses",
        "mean attention entropy per query head over blocks.{l}.attn.hook_pattern",
    ),
}


def _py_str(text: str) -> str:
    """A Python string literal quoted the way ``ruff format`` would leave it."""
    if '"' in text and "'" not in text:
        return repr(text)
    # A JSON string literal is a valid Python literal, in the formatter's preferred double quotes.
    return json.dumps(text, ensure_ascii=False)


def tokens(slug: str, paper: str, arxiv: str | None, kind: str = "attention") -> dict[str, str]:
    """Placeholder values for the template, each already quoted for where it is used."""
    snake = slug.replace("-", "_")
    return {
        "slug": slug,
        "snake": snake,
        "const": snake.upper(),
        "class": "".join(part.capitalize() for part in slug.split("-")),
        "kind": kind,
        "spec_type": KINDS[kind].spec_type,
        "standin": KINDS[kind].standin,
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


def template_files(kind: str) -> dict[str, Path]:
    """Relative output path (placeholders unrendered, ``.tmpl`` kept) -> template file, the
    kind's own files replacing the common ones."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} has no template; available kinds: {', '.join(KINDS)}")
    files: dict[str, Path] = {}
    for base in (COMMON, TEMPLATES / kind):
        for src in sorted(base.rglob("*.tmpl")):
            files[src.relative_to(base).as_posix()] = src
    return files


def generate(
    slug: str,
    *,
    kind: str = "attention",
    paper: str,
    arxiv: str | None = None,
    plugins_dir: Path | None = None,
    force: bool = False,
) -> Path:
    """Write ``<plugins_dir>/attnkit-<slug>/`` from the ``kind`` template; returns that directory.

    :raises ValueError: a bad slug, kind, paper title or arXiv id, or an existing target
        directory without ``force``.
    """
    if not SLUG_RE.match(slug):
        raise ValueError(f"slug must be lowercase words joined by '-', like 'sliding-window'; got {slug!r}")
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} has no template; available kinds: {', '.join(KINDS)}")
    if not paper.strip():
        raise ValueError("paper title must not be empty")
    if arxiv is not None and not ARXIV_RE.match(arxiv):
        raise ValueError(f"arxiv must look like 2401.00001, got {arxiv!r}")
    plugins_dir = Path(plugins_dir) if plugins_dir is not None else ROOT / "plugins"
    target = plugins_dir / f"attnkit-{slug}"
    if target.exists() and not force:
        raise ValueError(f"{target} already exists; pass --force to overwrite its generated files")
    values = tokens(slug, paper.strip(), arxiv, kind)
    for rel, src in template_files(kind).items():
        dest = target / render(rel, values).removesuffix(".tmpl")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(render(src.read_text(encoding="utf-8"), values), encoding="utf-8")
    (target / "changelog.d").mkdir(exist_ok=True)
    (target / "changelog.d" / ".gitkeep").touch()
    return target


def main(argv: list[str] | None = None) -> int:
    kinds_help = "; ".join(f"{name}: {k.spec_type}, stand-in {k.standin}" for name, k in KINDS.items())
    parser = argparse.ArgumentParser(description="Create plugins/attnkit-SLUG from the plugin template.")
    parser.add_argument("slug", help="paper slug: distribution attnkit-SLUG, module attnkit_SLUG, spec SLUG")
    parser.add_argument(
        "--kind",
        default="attention",
        choices=list(KINDS),
        help=f"what the plugin registers (default: attention) -- {kinds_help}".replace("%", "%%"),
    )
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
    print(f"created {target} ({KINDS[args.kind].spec_type} {args.slug!r})")
    check = f"attnkit check attnkit-{args.slug}   (or: nox -s plugin-{args.slug})"
    print(f"next: pip install -e {target}[test] && {check}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
