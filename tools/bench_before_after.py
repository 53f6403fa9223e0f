"""Time a kernel plugin's backends before and after a change, side by side in one process.

Usage::

    python tools/bench_before_after.py neighborhood --before 8979322 [--backends numba,flex]
        [--only SUBSTRING] [--repeat N] [--threads N] [--json PATH] [--quick]

The plugin's package as it was at ``--before`` (``git archive`` of ``plugins/attnkit-SLUG/src``)
is written to a temporary folder under another import name (``attnkit_SLUG_before``), so the
old and the installed backend functions load together; for every shape of the spec's declared
benchmark (:class:`attnkit.kernels.bench.KernelBench`) each backend runs as ``<name>@before``
and ``<name>@after``, called directly with the same inputs and interleaved by the harness
(:class:`attnkit.bench.Bench`), and the table reports ``after / before`` time ratios per
backend (> 1: the change made it faster). The old code runs against today's core: a rebase
that moved glue into the core is measured with the core it now uses for both sides where the
old code still imports it.
"""

from __future__ import annotations

import argparse
import importlib
import io
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: Backend name -> module of the plugin package that holds it.
MODULES = {"numba": "cpu", "triton": "gpu", "reference": "reference", "flex": "flex", "onnx": "onnx"}


def old_package(slug: str, rev: str, dest: Path) -> str:
    """Write the plugin's package at ``rev`` to ``dest`` as ``attnkit_<slug>_before``; its name."""
    package = f"attnkit_{slug.replace('-', '_')}"
    renamed = f"{package}_before"
    src = f"plugins/attnkit-{slug}/src/{package}"
    data = subprocess.run(["git", "-C", str(ROOT), "archive", rev, src], capture_output=True, check=True).stdout
    word = re.compile(rf"\b{package}\b")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            if not member.isfile() or not member.name.endswith(".py"):
                continue
            fh = tar.extractfile(member)
            assert fh is not None
            rel = Path(member.name).relative_to(src)
            out = dest / renamed / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(word.sub(renamed, fh.read().decode("utf-8")), encoding="utf-8")
    return renamed


def _impl(package: str, backend: str, function: str) -> Callable[..., Any]:
    return getattr(importlib.import_module(f"{package}.{MODULES[backend]}"), function)


def main(argv: list[str] | None = None) -> int:
    from attnkit.bench import Bench, Case, Variant, add_bench_args

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slug", help="plugin slug: plugins/attnkit-SLUG")
    parser.add_argument("--before", required=True, metavar="REV", help="git revision of the 'before' code")
    parser.add_argument("--spec", help="spec name (default: the slug)")
    parser.add_argument("--backends", default="numba,flex", help="comma list of backends (default numba,flex)")
    add_bench_args(parser)
    args = parser.parse_args(argv)

    import torch

    import attnkit
    from attnkit.kernels.bench import KernelBench
    from attnkit.registry import resolve

    spec = attnkit.get_spec(args.spec or args.slug, "attention")
    declared = getattr(resolve(spec.bench), "__self__", None)  # bench = "<module>:BENCH.run"
    if not isinstance(declared, KernelBench):
        parser.error(f"{spec.name}'s benchmark is not a declared KernelBench ({spec.bench})")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    function = {b: spec.backend(b).impl.rpartition(":")[2] for b in backends}
    tmp = Path(tempfile.mkdtemp(prefix="attnkit-before-"))
    before_pkg = old_package(args.slug, args.before, tmp)
    sys.path.insert(0, str(tmp))
    after_pkg = spec.backend(backends[0]).impl.partition(".")[0]

    def variant(backend: str, package: str, label: str, shape: Any) -> Variant:
        def setup() -> Callable[[], Any]:
            fn = _impl(package, backend, function[backend])
            q, k, v = shape.inputs()
            kw = {
                "params": spec.make_params(**shape.params),
                "is_causal": shape.is_causal,
                "scale": shape.head_dim**-0.5,
                "return_lse": False,
            }
            return lambda: fn(q, k, v, **kw)

        return Variant(name=f"{backend}@{label}", setup=setup, note=f"{package}.{MODULES[backend]}:{function[backend]}")

    shapes = declared.quick if args.quick else declared.shapes
    cases = []
    for shape in shapes:
        if args.only and args.only not in shape.label:
            continue
        variants = [
            variant(b, pkg, label, shape)
            for b in backends
            for pkg, label in ((before_pkg, "before"), (after_pkg, "after"))
        ]
        cases.append(Case(name=shape.label, flops=4.0 * declared.pairs(shape) * shape.head_dim, variants=variants))
    ratios = [(f"{b}@after", f"{b}@before") for b in backends]
    bench = Bench(f"{spec.name}: before ({args.before}) and after, float32 forward", args, ratios=ratios)
    with torch.no_grad():
        bench.run(cases)
    return bench.exit_code


if __name__ == "__main__":
    sys.exit(main())
