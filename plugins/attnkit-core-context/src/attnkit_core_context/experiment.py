"""Tiny byte-level GPT on the Python standard library's own sources: CCA against full attention.

CCA-Attention (arXiv:2412.12465) claims that replacing full causal attention with core tokens
(one per group of ``g``) plus a local window of ``s`` keeps language-model perplexity close to
full attention while costing about ``L/g + s`` keys per query instead of ``L``. This module
measures that on a model small enough for one CPU thread:

* **Text**: every ``*.py`` file of the running interpreter's standard library
  (``sysconfig.get_paths()["stdlib"]``, ``site-packages`` excluded), read as bytes (vocabulary
  256). Files are split by a CRC-32 of their relative path: one in ``test_every`` is held out,
  so no test byte comes from a file seen in training.
* **Models**: :class:`attnkit.models.TinyGPT`, identical except for the attention of every
  layer: ``"dense"`` (causal full attention, SDPA) or ``"core_context"`` (the paper's
  ``g = 16`` and ``s`` a quarter of the training context, as the paper's ``s = 1024`` is a
  quarter of LLaMA-2's 4K). Same initialisation seed, same batches, same steps.
* **Positions**: none (NoPE): the learned position table of ``TinyGPT`` is zeroed and frozen,
  so both models run at any length, 16K included, with nothing untrained; causal attention
  alone carries order. A learned table would leave rows past the training context untrained.
* **Evaluation**: the first ``eval_windows`` non-overlapping 16K-byte windows of the held-out
  text; the same bytes cut into 4K windows for the 4K figure. Mean next-byte NLL (nats),
  perplexity ``exp(NLL)`` and bits per byte, overall and per position bucket.
* **Speed**: seconds of one forward pass of each whole model (batch 1) at 4K and 16K, best
  of ``repeats``, with ``threads`` torch / numba threads.

Run: ``python -m attnkit_core_context.experiment --out results/tiny_lm.json`` (``--help``
for the sizes). The JSON records the configuration, the corpus, the losses and the timings.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import sysconfig
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Config",
    "cca_params",
    "eval_windows",
    "load_bytes",
    "main",
    "make_model",
    "position_buckets",
    "random_windows",
    "run",
    "split_files",
    "stdlib_files",
]


@dataclass(frozen=True)
class Config:
    """Sizes of one run (the defaults are the committed run's)."""

    train_len: int = 256
    eval_lens: tuple[int, ...] = (4096, 16384)
    eval_windows: int = 4
    dim: int = 64
    layers: int = 2
    heads: int = 4
    steps: int = 400
    batch_size: int = 8
    lr: float = 3e-3
    seed: int = 0
    group_size: int = 16
    window: int | None = None  # None: train_len // 4
    test_every: int = 10
    threads: int = 1
    repeats: int = 2
    buckets: tuple[int, ...] = field(default=(0, 256, 1024, 4096))

    def attention_params(self) -> dict[str, int]:
        return cca_params(self.train_len, self.group_size, self.window)


def cca_params(train_len: int, group_size: int = 16, window: int | None = None) -> dict[str, int]:
    """The paper's ``g`` and ``s`` scaled to a model trained at ``train_len`` tokens:
    ``g`` as given (paper: 16), ``s = train_len // 4`` unless given (paper: 1024 for a 4K model).

    :raises ValueError: when the window leaves no complete group before the training context ends.
    """
    for name, value in (("train_len", train_len), ("group_size", group_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    s = train_len // 4 if window is None else window
    if s + group_size > train_len:
        raise ValueError(
            f"window={s} + group_size={group_size} exceeds train_len={train_len}: no core token would be trained"
        )
    return {"group_size": group_size, "window": s}


def stdlib_files(root: str | Path | None = None) -> tuple[Path, list[str]]:
    """``(root, relative paths)`` of every ``*.py`` file under the standard library (sorted,
    ``site-packages`` excluded)."""
    base = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    rels = sorted(
        p.relative_to(base).as_posix()
        for p in base.rglob("*.py")
        if "site-packages" not in p.relative_to(base).parts and p.is_file()
    )
    return base, rels


def split_files(rels: Sequence[str], test_every: int = 10) -> tuple[list[str], list[str]]:
    """``(train, test)``: a file is held out when ``crc32(path) % test_every == 0``
    (deterministic, independent of the file list's order and of Python's hash seed)."""
    if isinstance(test_every, bool) or not isinstance(test_every, int) or test_every < 2:
        raise ValueError(f"test_every must be an int >= 2, got {test_every!r}")
    test = [r for r in rels if zlib.crc32(r.encode()) % test_every == 0]
    held = set(test)
    return [r for r in rels if r not in held], test


def load_bytes(base: Path, rels: Sequence[str]) -> Any:
    """The files' bytes, concatenated with one ``\\n`` after each, as a ``uint8`` tensor."""
    import torch

    data = b"".join(Path(base, r).read_bytes() + b"\n" for r in rels)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def random_windows(data: Any, n: int, length: int, seed: int) -> tuple[Any, Any]:
    """``n`` windows of ``length + 1`` bytes at seeded random offsets, as ``(inputs, targets)``
    int64 ``(n, length)``, ``targets`` the inputs shifted by one."""
    import torch

    if data.numel() < length + 1:
        raise ValueError(f"data has {data.numel()} bytes, fewer than length + 1 = {length + 1}")
    gen = torch.Generator().manual_seed(seed)
    start = torch.randint(0, data.numel() - length, (n,), generator=gen)
    rows = data[start[:, None] + torch.arange(length + 1)[None, :]].long()
    return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


def eval_windows(data: Any, length: int, count: int) -> Any:
    """The first ``count`` non-overlapping windows of ``length + 1`` bytes, int64
    ``(count, length + 1)`` (each window's last byte is the next window's first)."""
    need = count * length + 1
    if data.numel() < need:
        raise ValueError(f"data has {data.numel()} bytes; {count} windows of {length} need {need}")
    return data[:need].long().unfold(0, length + 1, length)[:count].contiguous()


def position_buckets(nll: Any, edges: Sequence[int]) -> dict[str, float]:
    """Mean of ``nll (B, T)`` over positions ``[edges[i], edges[i + 1])`` (the last up to
    ``T``), keyed ``"a-b"``; edges at or past ``T`` are dropped."""
    t = nll.shape[-1]
    cuts = [e for e in edges if e < t] + [t]
    return {f"{a}-{b}": float(nll[..., a:b].mean()) for a, b in itertools.pairwise(cuts)}


def make_model(cfg: Config, attention: str) -> Any:
    """A NoPE :class:`~attnkit.models.TinyGPT` (position table zeroed and frozen) seeded by
    ``cfg.seed``, so both attentions start from the same weights."""
    import torch

    from attnkit.models.tiny import TinyGPT

    params = cfg.attention_params() if attention == "core_context" else None
    torch.manual_seed(cfg.seed)
    model = TinyGPT(
        256, dim=cfg.dim, layers=cfg.layers, heads=cfg.heads, max_len=max((cfg.train_len, *cfg.eval_lens)),
        attention=attention, attention_params=params,
    )  # fmt: skip
    with torch.no_grad():
        model.pos_emb.zero_()
    model.pos_emb.requires_grad_(False)
    return model


def _nll(model: Any, windows: Any) -> Any:
    """Next-byte NLL ``(B, T)`` of ``windows (B, T + 1)``, one row at a time."""
    import torch
    import torch.nn.functional as F

    rows = []
    with torch.no_grad():
        for w in windows:
            logits = model(w[None, :-1])[0]
            rows.append(F.cross_entropy(logits, w[1:], reduction="none"))
    return torch.stack(rows)


def _forward_seconds(model: Any, length: int, repeats: int) -> float:
    import torch

    x = torch.randint(0, 256, (1, length), generator=torch.Generator().manual_seed(1))
    best = math.inf
    with torch.no_grad():
        model(x[:, :64])  # JIT / first-call costs outside the timing
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - t0)
    return best


def _summary(nll: Any, edges: Sequence[int]) -> dict[str, Any]:
    mean = float(nll.mean())
    return {
        "tokens": int(nll.numel()),
        "nll": mean,
        "ppl": math.exp(mean),
        "bits_per_byte": mean / math.log(2),
        "nll_by_position": position_buckets(nll, edges),
    }


def run(cfg: Config, out: str | Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Train both models, evaluate and time them; write JSON to ``out`` after each model."""
    import numba
    import torch

    from attnkit.models.train import train

    torch.set_num_threads(cfg.threads)
    numba.set_num_threads(min(cfg.threads, numba.config.NUMBA_NUM_THREADS))
    base, rels = stdlib_files()
    train_files, test_files = split_files(rels, cfg.test_every)
    train_bytes, test_bytes = load_bytes(base, train_files), load_bytes(base, test_files)
    data = random_windows(train_bytes, cfg.steps * cfg.batch_size, cfg.train_len, cfg.seed)
    longest = max(cfg.eval_lens)
    windows = eval_windows(test_bytes, longest, cfg.eval_windows)
    result: dict[str, Any] = {
        "config": {**asdict(cfg), "cca_params": cfg.attention_params()},
        "corpus": {
            "source": f"Python {sys.version.split()[0]} standard library *.py ({base})",
            "files_train": len(train_files),
            "files_test": len(test_files),
            "bytes_train": int(train_bytes.numel()),
            "bytes_test": int(test_bytes.numel()),
            "eval_bytes": int(windows.shape[0] * longest),
        },
        "positions": "NoPE: TinyGPT's position table zeroed and frozen (no positional encoding)",
        "models": {},
    }
    for attention in ("dense", "core_context"):
        model = make_model(cfg, attention)
        tr = train(model, data, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, progress=progress)
        model.eval()
        entry: dict[str, Any] = {
            "train_final_loss": tr.final_loss,
            "train_seconds": tr.wall_time_s,
            "eval": {},
            "forward_seconds": {},
        }
        for length in cfg.eval_lens:
            # The same held-out bytes at every length: the long windows cut into pieces.
            nll = _nll(model, eval_windows(test_bytes, length, cfg.eval_windows * longest // length))
            entry["eval"][str(length)] = _summary(nll, cfg.buckets)
        for length in cfg.eval_lens:
            entry["forward_seconds"][str(length)] = _forward_seconds(model, length, cfg.repeats)
        result["models"][attention] = entry
        if out is not None:
            _write(result, out)
    d, c = result["models"]["dense"], result["models"]["core_context"]
    result["comparison"] = {
        str(n): {
            "ppl_dense": d["eval"][str(n)]["ppl"],
            "ppl_cca": c["eval"][str(n)]["ppl"],
            "ppl_ratio_cca_over_dense": c["eval"][str(n)]["ppl"] / d["eval"][str(n)]["ppl"],
            "forward_speedup_dense_over_cca": d["forward_seconds"][str(n)] / c["forward_seconds"][str(n)],
        }
        for n in cfg.eval_lens
    }
    if out is not None:
        _write(result, out)
    return result


def _write(result: dict[str, Any], out: str | Path) -> None:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    d = Config()
    p = argparse.ArgumentParser(prog="python -m attnkit_core_context.experiment", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="results/tiny_lm.json", help="JSON output path")
    p.add_argument("--train-len", type=int, default=d.train_len)
    p.add_argument("--eval-lens", default=",".join(map(str, d.eval_lens)), help="comma list; each divides the last")
    p.add_argument("--eval-windows", type=int, default=d.eval_windows, help="held-out windows of the longest length")
    p.add_argument("--dim", type=int, default=d.dim)
    p.add_argument("--layers", type=int, default=d.layers)
    p.add_argument("--heads", type=int, default=d.heads)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--group-size", type=int, default=d.group_size)
    p.add_argument("--window", type=int, default=None, help="default: train_len // 4")
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--progress", action="store_true")
    a = p.parse_args(argv)
    lens = tuple(int(x) for x in a.eval_lens.split(",") if x.strip())
    if not lens or any(max(lens) % n for n in lens):
        p.error(f"--eval-lens: every length must divide the longest, got {lens}")
    cfg = Config(
        train_len=a.train_len, eval_lens=lens, eval_windows=a.eval_windows, dim=a.dim, layers=a.layers,
        heads=a.heads, steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed, group_size=a.group_size,
        window=a.window, threads=a.threads, repeats=a.repeats,
    )  # fmt: skip
    res = run(cfg, out=a.out, progress=a.progress)
    print(json.dumps(res["comparison"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
