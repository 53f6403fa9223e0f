"""Render an ``attnkit bench ... --json`` result as Markdown tables (for docs/benchmarks.md).

Usage: ``python tools/bench_table.py results.json``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _speed(nb: dict, other: dict | None) -> str:
    """How many times faster numba is than ``other``."""
    o = other or {}
    if nb.get("median_s") and o.get("median_s"):
        return f"{o['median_s'] / nb['median_s']:.1f}x"
    return "-"


def render(data: dict) -> str:
    env, probe = data["environment"], data["matmul_probe"]
    rows = {}
    for r in data["results"]:
        rows.setdefault(r["case"], {})[r["variant"]] = r
    variants = list(dict.fromkeys(r["variant"] for r in data["results"]))
    lines = [
        f"{data['title']}; CPU `{env['cpu']}`, {env['cpu_count']} cores, torch {env['torch']} "
        f"({env['torch_threads']} threads), numba {env.get('numba')} ({env.get('numba_threads')} threads), "
        f"Python {env['python']}; median of {data['repeat']} after {data['warmup']} warm-up. "
        f"Square float32 matmul probe {probe['size']}x{probe['size']}: {probe['gflops']:.1f} GFLOP/s.",
        "",
        "| case | " + " | ".join(f"{v} ms" for v in variants) + " | numba GFLOP/s | numba/flex | numba/sdpa "
        "| numba : similar matmul GFLOP/s | numba : square matmul GFLOP/s |",
        "|---|" + "---:|" * (len(variants) + 5),
    ]
    for case, by in rows.items():
        cells = []
        for v in variants:
            r = by.get(v)
            cells.append(f"{r['median_s'] * 1e3:.1f}" if r and r["median_s"] else (r["status"] if r else "-"))
        nb = by.get("numba") or {}

        mm = by.get("matmul") or {}
        frac = f"{nb['gflops'] / mm['gflops']:.2f}" if nb.get("gflops") and mm.get("gflops") else "-"
        sq = f"{nb['gflops'] / probe['gflops']:.2f}" if nb.get("gflops") else "-"
        g = f"{nb['gflops']:.1f}" if nb.get("gflops") else "-"
        lines.append(
            f"| {case} | "
            + " | ".join(cells)
            + f" | {g} | {_speed(nb, by.get('flex'))} | {_speed(nb, by.get('sdpa'))} | {frac} | {sq} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    print(render(json.loads(Path(argv[0]).read_text(encoding="utf-8"))), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
