"""Benchmark harness shared by every plugin's ``attnkit bench <name>``.

A plugin bench describes :class:`Case` objects, each with :class:`Variant` s (one per
backend); the harness times every variant the same way, in one process, and reports:

* the machine: thread count (after ``--threads``), CPU model from ``/proc/cpuinfo``, torch and
  numba versions;
* a float32 matmul GFLOP/s probe measured in the same run, so "fraction of matmul" compares
  against what this machine does right now, not a datasheet number;
* per variant the median of ``--repeat`` timed calls after warm-up (``time.perf_counter``),
  useful GFLOP/s and the fraction of the matmul probe; per case the ratios asked for. The
  variants of a case are timed interleaved: one call of each per round, ``--repeat`` rounds;
* an aligned table on the terminal, JSON with ``--json PATH``, a tqdm bar over cases.

A variant that fails (import error, unsupported shape, out of memory) becomes one ``failed``
row with its error; :class:`Skip` raised from a setup becomes a ``skipped`` row with the
reason. Nothing a variant does stops the run.

Performance is measured here, never in tests.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "Bench",
    "Case",
    "Result",
    "Skip",
    "Timing",
    "Variant",
    "add_bench_args",
    "bench_parser",
    "environment",
    "format_table",
    "matmul_gflops",
    "set_threads",
    "time_fn",
]


class Skip(Exception):
    """Raised by a variant's setup when it should not run here; the message is the reason."""


@dataclass(frozen=True)
class Timing:
    """Seconds per call: ``median`` (what is reported), ``best`` and every repeat."""

    median: float
    best: float
    times: tuple[float, ...]


def time_fn(fn: Callable[[], Any], *, warmup: int = 1, repeat: int = 5) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then time ``repeat`` calls one by one.

    Warm-up absorbs JIT / ``torch.compile`` work and first-touch allocation. The median is
    robust to one slow call from a noisy neighbour, which a mean is not.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Timing(median=statistics.median(times), best=min(times), times=tuple(times))


def matmul_gflops(size: int = 2048, *, repeat: int = 5) -> dict[str, Any]:
    """Measure float32 ``(size, size) @ (size, size)`` GFLOP/s (``2 * size**3`` per call)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen)
    b = torch.randn(size, size, generator=gen)
    out = torch.empty(size, size)
    timing = time_fn(lambda: torch.matmul(a, b, out=out), warmup=1, repeat=repeat)
    flops = 2.0 * size**3
    return {"size": size, "dtype": "float32", "median_s": timing.median, "gflops": flops / timing.median / 1e9}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine()


def set_threads(threads: int | None) -> None:
    """Apply ``--threads`` to torch and, when it is installed and allows that many, numba."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)
    try:
        import numba
    except ImportError:
        return
    # numba cannot grow its pool past NUMBA_NUM_THREADS (fixed at import): cap, don't fail.
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]


def environment() -> dict[str, Any]:
    """What the numbers depend on: threads, CPU, library versions."""
    import torch

    info: dict[str, Any] = {
        "torch_threads": None,
        "cpu_count": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numba": None,
        "numba_threads": None,
    }
    try:
        import numba

        info["numba"] = numba.__version__
        info["numba_threads"] = numba.get_num_threads()
    except ImportError:
        pass
    # Read after numba: starting numba's OpenMP threading layer can change the process's
    # OpenMP thread count, which torch reports.
    info["torch_threads"] = torch.get_num_threads()
    return info


@dataclass
class Variant:
    """One way of computing a case (usually one backend).

    :param name: short label (``"numba"``, ``"flex"``, ``"sdpa"``).
    :param setup: builds everything that must stay out of the timed region (inputs, masks,
        compiled functions) and returns the zero-argument callable to time. Raise
        :class:`Skip` to report the variant as skipped with a reason.
    :param note: how it was measured, printed under the table (e.g. "per head chunk").
    :param grad: time with autograd enabled (default: under ``torch.no_grad()``).
    :param flops: floating-point operations of one call when they differ from the case's
        useful FLOPs (a baseline doing a similar amount of other work, say).
    """

    name: str
    setup: Callable[[], Callable[[], Any]]
    note: str = ""
    grad: bool = False
    flops: float | None = None


@dataclass
class Case:
    """One problem size, timed for every variant side by side.

    :param name: label shown in the table; ``--only`` matches substrings of it.
    :param flops: useful floating-point operations of one call (for GFLOP/s).
    :param variants: the implementations to compare.
    :param info: extra fields copied into the JSON rows (shape, kernel size ...).
    """

    name: str
    flops: float
    variants: list[Variant]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    """One row: a variant of a case, ``status`` ``ok``, ``failed`` or ``skipped``."""

    case: str
    variant: str
    status: str
    median_s: float | None = None
    best_s: float | None = None
    times_s: list[float] = field(default_factory=list)
    gflops: float | None = None
    matmul_fraction: float | None = None
    error: str | None = None
    note: str = ""
    info: dict[str, Any] = field(default_factory=dict)


def add_bench_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options every plugin bench accepts to ``parser`` and return it."""
    parser.add_argument("--quick", action="store_true", help="tiny shapes: a smoke test, not a measurement")
    parser.add_argument(
        "--repeat", type=int, default=None, metavar="N", help="timed calls per variant (default 5, 2 with --quick)"
    )
    parser.add_argument("--warmup", type=int, default=1, metavar="N", help="untimed calls before timing (default 1)")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="torch (and numba) threads")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--only", default=None, metavar="SUBSTRING", help="run only cases whose name contains this")
    parser.add_argument(
        "--probe-size", type=int, default=None, metavar="N", help="matmul probe size (default 2048, 256 with --quick)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def bench_parser(prog: str, description: str = "") -> argparse.ArgumentParser:
    """An ``argparse`` parser with :func:`add_bench_args` already applied."""
    return add_bench_args(argparse.ArgumentParser(prog=prog, description=description))


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:300]


class Bench:
    """Runs cases with the options from :func:`bench_parser` and reports them.

    :param title: printed above the table and stored in the JSON.
    :param args: the parsed namespace (``quick``, ``repeat``, ``warmup``, ``threads``, ``json``,
        ``only``, ``probe_size``, ``no_progress``).
    :param ratios: ``(a, b)`` variant-name pairs; each case reports ``time(b) / time(a)``,
        i.e. how many times faster ``a`` is than ``b`` (printed as ``a/b``).
    :param gflops_ratios: ``(a, b)`` pairs; each case reports ``GFLOP/s(a) / GFLOP/s(b)``
        (printed as ``a:b GFLOP/s``), e.g. a kernel against a matmul of similar size.
    """

    def __init__(
        self,
        title: str,
        args: argparse.Namespace,
        *,
        ratios: Sequence[tuple[str, str]] = (),
        gflops_ratios: Sequence[tuple[str, str]] = (),
        stream: TextIO | None = None,
    ) -> None:
        self.title = title
        self.args = args
        self.ratios = list(ratios)
        self.gflops_ratios = list(gflops_ratios)
        self.stream = stream or sys.stdout
        self.repeat = args.repeat if args.repeat is not None else (2 if args.quick else 5)
        self.warmup = args.warmup
        self.probe_size = args.probe_size or (256 if args.quick else 2048)
        self.results: list[Result] = []
        self.probe: dict[str, Any] = {}
        self.env: dict[str, Any] = {}

    def _print(self, text: str = "") -> None:
        print(text, file=self.stream)

    def select(self, cases: Sequence[Case]) -> list[Case]:
        if not self.args.only:
            return list(cases)
        return [c for c in cases if self.args.only in c.name]

    def run(self, cases: Sequence[Case]) -> list[Result]:
        """Time every variant of every selected case; print the report; write the JSON."""
        set_threads(self.args.threads)
        self.env = environment()
        chosen = self.select(cases)
        if not chosen:
            names = ", ".join(c.name for c in cases)
            raise ValueError(f"--only {self.args.only!r} matches no case; cases: {names}")
        self.probe = matmul_gflops(self.probe_size, repeat=max(self.repeat, 3))
        from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no stubs

        bar = tqdm(chosen, desc=self.title, unit="case", disable=self.args.no_progress, file=sys.stderr, leave=False)
        for case in bar:
            bar.set_postfix_str(case.name)
            self.results.extend(self._run_case(case))
            gc.collect()  # drop this case's inputs / masks before the next one
        bar.close()
        self.report()
        if self.args.json is not None:
            self.write_json(self.args.json)
        return self.results

    def _run_case(self, case: Case) -> list[Result]:
        """Set every variant up and warm it, then time them in rounds, one call of each per
        round, starting each round one variant later: a slow spell of a shared machine then
        falls on every variant alike instead of on whichever ran during it."""
        import torch

        rows: list[Result] = []
        ready: list[tuple[Variant, Result, Callable[[], Any]]] = []
        for variant in case.variants:
            row = Result(case=case.name, variant=variant.name, status="ok", note=variant.note, info=dict(case.info))
            rows.append(row)
            try:
                with torch.set_grad_enabled(variant.grad):
                    fn = variant.setup()
                    for _ in range(self.warmup):
                        fn()
            except Skip as exc:
                row.status, row.error = "skipped", str(exc)
                continue
            except Exception as exc:  # one failed row, never a crashed benchmark
                row.status, row.error = "failed", _short(exc)
                continue
            ready.append((variant, row, fn))
        for r in range(self.repeat):
            shift = r % len(ready) if ready else 0
            for variant, row, fn in ready[shift:] + ready[:shift]:
                if row.status != "ok":
                    continue
                try:
                    with torch.set_grad_enabled(variant.grad):
                        t0 = time.perf_counter()
                        fn()
                        row.times_s.append(time.perf_counter() - t0)
                except Exception as exc:
                    row.status, row.error, row.times_s = "failed", _short(exc), []
        del ready
        for variant, row in zip(case.variants, rows):
            if row.status != "ok":
                continue
            row.median_s, row.best_s = statistics.median(row.times_s), min(row.times_s)
            flops = variant.flops if variant.flops is not None else case.flops
            if flops > 0:
                row.gflops = flops / row.median_s / 1e9
                if self.probe.get("gflops"):
                    row.matmul_fraction = row.gflops / self.probe["gflops"]
        return rows

    # -- reporting -----------------------------------------------------------------------

    def ratio_rows(self) -> list[dict[str, Any]]:
        """Per case and ratio pair: ``time(b) / time(a)`` where both ran."""
        out = []
        by_key = {(r.case, r.variant): r for r in self.results}
        for case in dict.fromkeys(r.case for r in self.results):
            for a, b in self.ratios:
                ra, rb = by_key.get((case, a)), by_key.get((case, b))
                value = None
                if ra and rb and ra.median_s and rb.median_s:
                    value = rb.median_s / ra.median_s
                out.append({"case": case, "ratio": f"{a}/{b}", "value": value})
            for a, b in self.gflops_ratios:
                ra, rb = by_key.get((case, a)), by_key.get((case, b))
                value = None
                if ra and rb and ra.gflops and rb.gflops:
                    value = ra.gflops / rb.gflops
                out.append({"case": case, "ratio": f"{a}:{b} GFLOP/s", "value": value})
        return out

    def report(self) -> None:
        env, probe = self.env, self.probe
        self._print(f"{self.title}")
        self._print(
            f"cpu: {env['cpu']} | torch threads {env['torch_threads']} | torch {env['torch']}"
            + (
                f" | numba {env['numba']} ({env['numba_threads']} threads)"
                if env.get("numba")
                else " | numba not installed"
            )
        )
        self._print(
            f"matmul probe: float32 {probe['size']}x{probe['size']} = {probe['gflops']:.1f} GFLOP/s | "
            f"median of {self.repeat} interleaved rounds after {self.warmup} warm-up"
        )
        headers = ["case", "variant", "status", "median ms", "GFLOP/s", "% matmul"]
        rows = []
        for r in self.results:
            rows.append(
                [
                    r.case,
                    r.variant,
                    r.status,
                    f"{r.median_s * 1e3:.3f}" if r.median_s is not None else "-",
                    _num(r.gflops),
                    _num(100 * r.matmul_fraction) if r.matmul_fraction is not None else "-",
                ]
            )
        self._print(format_table(headers, rows, right=(3, 4, 5)))
        ratio_rows = self.ratio_rows()
        if ratio_rows:
            names = [f"{a}/{b}" for a, b in self.ratios] + [f"{a}:{b} GFLOP/s" for a, b in self.gflops_ratios]
            table: dict[str, dict[str, str]] = {}
            for rr in ratio_rows:
                table.setdefault(rr["case"], {})[rr["ratio"]] = f"{rr['value']:.2f}x" if rr["value"] else "-"
            self._print("")
            self._print(
                "speed ratios (a/b = time of b / time of a; > 1 means a is faster;"
                " a:b GFLOP/s = achieved GFLOP/s of a over b's)"
            )
            self._print(
                format_table(
                    ["case", *names],
                    [[c, *(vals.get(n, "-") for n in names)] for c, vals in table.items()],
                    right=tuple(range(1, len(names) + 1)),
                )
            )
        problems = [r for r in self.results if r.status != "ok"]
        notes = dict.fromkeys(f"{r.variant}: {r.note}" for r in self.results if r.note)
        if problems or notes:
            self._print("")
        for r in problems:
            self._print(f"{r.status}: {r.case} / {r.variant}: {r.error}")
        for n in notes:
            self._print(f"note: {n}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "environment": self.env,
            "matmul_probe": self.probe,
            "repeat": self.repeat,
            "warmup": self.warmup,
            "quick": bool(self.args.quick),
            "results": [asdict(r) for r in self.results],
            "ratios": self.ratio_rows(),
        }

    def write_json(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=2) + "\n", encoding="utf-8")
        self._print(f"wrote {path}")

    @property
    def exit_code(self) -> int:
        """0 when at least one variant ran; 1 when every variant failed."""
        return 0 if any(r.status == "ok" for r in self.results) else 1


def _num(x: float | None) -> str:
    """Three significant digits for small numbers, fixed decimals for large ones."""
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()) -> str:
    """Aligned plain-text table; columns in ``right`` are right-aligned (numbers)."""
    cols = len(headers)
    widths = [len(h) for h in headers]
    for row in rows:
        for i in range(cols):
            widths[i] = max(widths[i], len(str(row[i])))

    def line(cells: Sequence[str]) -> str:
        parts = []
        for i in range(cols):
            cell = str(cells[i])
            parts.append(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]))
        return "  ".join(parts).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])
