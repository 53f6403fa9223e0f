"""A kernel spec's benchmark, declared: its shapes and the peers it is compared with.

A plugin's ``bench.py`` lists :class:`Shape` s and names the backends to time; the peers are
built here from the spec's own mask rule (:class:`attnkit.kernels.flex.MaskRule`, or the
brute-force ``mask`` of the spec when it has no flex backend), so every kernel plugin is
measured the same way:

* each named backend of the spec (``numba``, ``flex``, ``triton`` ...), called through the
  spec with ``backend=`` (the JIT compile, the BlockMask and the flex graph are built in the
  warm-up, outside the timed calls);
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` under the equivalent dense
  bool mask. Its math path materialises ``(heads, N, M)`` logits, so heads go through in
  chunks of at most ``sdpa_logits_budget`` bytes of logits and the time is the sum over the
  chunks: the same work, measured without running out of memory;
* ``matmul``: a float32 ``bmm`` doing the same useful FLOPs, every query against a dense
  block of ``W = pairs / N`` keys: the speed a kernel would have if its sparsity cost
  nothing (reported as an achieved-GFLOP/s ratio).

Useful FLOPs count only the allowed (query, key) pairs, ``4 * pairs * D`` summed over batch
and heads. The harness (:class:`attnkit.bench.Bench`) times the variants of a shape
interleaved in one process and prints the table and the ratios; ``--json`` writes them.

Shape legend: as in :mod:`attnkit.kernels.call`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from attnkit.bench import Bench, Case, Skip, Variant, bench_parser

__all__ = ["PEERS", "KernelBench", "Shape"]

#: Variants built by the harness rather than by the spec.
PEERS = ("sdpa", "matmul")


@dataclass(frozen=True)
class Shape:
    """One benchmark case: float32 ``q (batch, heads, *spatial, head_dim)``.

    :param label: shown in the table; ``--only`` matches substrings of it.
    :param spatial: the token axes ``S`` (self-attention: keys have the same axes).
    :param params: the spec's parameters.
    :param is_causal: as for the spec (a tuple gives one flag per axis).
    :param kv_heads: ``Hkv`` (default ``heads``: no GQA).
    """

    label: str
    spatial: tuple[int, ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    is_causal: bool | tuple[bool, ...] = False
    batch: int = 1
    heads: int = 8
    kv_heads: int | None = None
    head_dim: int = 64

    @property
    def tokens(self) -> int:
        return math.prod(self.spatial)

    def inputs(self) -> tuple[Any, Any, Any]:
        """Seeded standard-normal ``q, k, v`` (the same for every variant)."""
        import torch

        gen = torch.Generator().manual_seed(0)
        hkv = self.kv_heads or self.heads
        q = torch.randn(self.batch, self.heads, *self.spatial, self.head_dim, generator=gen)
        k = torch.randn(self.batch, hkv, *self.spatial, self.head_dim, generator=gen)
        v = torch.randn(self.batch, hkv, *self.spatial, self.head_dim, generator=gen)
        return q, k, v


@dataclass(frozen=True)
class KernelBench:
    """The benchmark of kernel spec ``spec``; ``attnkit bench <spec>`` calls :meth:`run`.

    :param spec: the spec's name.
    :param title: the table's title.
    :param shapes: the full run's cases.
    :param quick: the ``--quick`` cases (tiny: a smoke test, not a measurement).
    :param backends: the spec's backends to time; the first is the one the ratios compare
        (``numba`` against every other variant, say).
    :param peers: any of :data:`PEERS`.
    :param notes: per variant, how it was measured (defaults cover backends and peers).
    :param sdpa_logits_budget: bytes of float32 logits per SDPA call.
    """

    spec: str
    title: str
    shapes: Sequence[Shape]
    quick: Sequence[Shape]
    backends: tuple[str, ...] = ("numba", "flex")
    peers: tuple[str, ...] = PEERS
    notes: Mapping[str, str] = field(default_factory=dict)
    sdpa_logits_budget: int = 1 << 30

    def __post_init__(self) -> None:
        unknown = sorted(set(self.peers) - set(PEERS))
        if unknown:
            raise ValueError(f"{self.spec} bench: unknown peer(s) {unknown}; peers are {', '.join(PEERS)}")
        if not self.backends:
            raise ValueError(f"{self.spec} bench: name at least one backend to time")

    @property
    def variants(self) -> tuple[str, ...]:
        return (*self.backends, *self.peers)

    # -- masks -----------------------------------------------------------------------------

    def _spec(self) -> Any:
        import attnkit

        return attnkit.get_spec(self.spec, "attention")

    def dense_mask(self, shape: Shape, chunk: int = 1024) -> Any:
        """The allowed pairs of ``shape``: bool ``(H|1, N, N)``."""
        import torch

        spec = self._spec()
        rule = self._mask_rule(spec, shape)
        if rule is not None:
            from attnkit.kernels.flex import dense_mask

            return dense_mask(rule, shape.tokens, shape.tokens, chunk=chunk)
        if spec.mask is None:
            raise Skip(f"{self.spec} has neither a flex mask rule nor a brute-force mask to build the dense mask from")
        from attnkit.registry import resolve

        q_shape = (shape.batch, shape.heads, *shape.spatial, shape.head_dim)
        m = resolve(spec.mask)(spec.make_params(**shape.params), q_shape, q_shape, shape.is_causal)
        m = torch.as_tensor(m, dtype=torch.bool)
        return m.reshape(-1, shape.tokens, shape.tokens)

    def pairs(self, shape: Shape) -> int:
        """Allowed (query, key) pairs summed over batch and heads."""
        m = self.dense_mask(shape)
        return int(m.sum()) * (shape.heads // m.shape[0]) * shape.batch

    def _mask_rule(self, spec: Any, shape: Shape) -> Any:
        if "flex" not in [b.name for b in spec.backends]:
            return None
        rule = getattr(spec.backend("flex").load(), "mask_rule", None)
        if rule is None:
            return None
        import torch

        from attnkit.kernels.call import KernelCall

        # A rule reads sizes and parameters only: meta tensors carry them without memory.
        hkv = shape.kv_heads or shape.heads
        q = torch.empty(shape.batch, shape.heads, *shape.spatial, shape.head_dim, device="meta")
        k = v = torch.empty(shape.batch, hkv, *shape.spatial, shape.head_dim, device="meta")
        call = KernelCall.from_inputs(
            q, k, v, params=spec.make_params(**shape.params), is_causal=shape.is_causal, scale=shape.head_dim**-0.5
        )
        return rule(call)

    # -- variants --------------------------------------------------------------------------

    def _backend_variant(self, name: str, shape: Shape) -> Variant:
        def setup() -> Callable[[], Any]:
            spec = self._spec()
            q, k, v = shape.inputs()
            kw = dict(shape.params)
            return lambda: spec(q, k, v, backend=name, is_causal=shape.is_causal, **kw)

        default = f"the spec with backend={name!r}; compile / JIT / BlockMask in the warm-up"
        return Variant(name=name, setup=setup, note=self.notes.get(name, default))

    def _sdpa_variant(self, shape: Shape) -> Variant:
        n, h, b = shape.tokens, shape.heads, shape.batch
        chunk = max(1, min(h, self.sdpa_logits_budget // (4 * b * n * n)))

        def setup() -> Callable[[], Any]:
            import torch.nn.functional as F

            mask = self.dense_mask(shape)
            q, k, v = (x.reshape(b, x.shape[1], n, shape.head_dim) for x in shape.inputs())
            g = h // k.shape[1]
            k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
            scale = shape.head_dim**-0.5

            def call() -> None:
                for h0 in range(0, h, chunk):
                    m = mask[h0 : h0 + chunk] if mask.shape[0] > 1 else mask
                    sl = slice(h0, h0 + chunk)
                    F.scaled_dot_product_attention(q[:, sl], k[:, sl], v[:, sl], attn_mask=m, scale=scale)

            return call

        default = (
            f"dense SDPA with the equivalent (N, N) bool mask, heads in chunks of "
            f"<= {self.sdpa_logits_budget >> 20} MiB of logits"
        )
        return Variant(name="sdpa", setup=setup, note=self.notes.get("sdpa", default))

    def _matmul_variant(self, shape: Shape, pairs: int) -> Variant:
        rows = shape.batch * shape.heads
        n, d = shape.tokens, shape.head_dim
        width = max(1, pairs // (rows * n))

        def setup() -> Callable[[], Any]:
            import torch

            gen = torch.Generator().manual_seed(0)
            q = torch.randn(rows, n, d, generator=gen)
            kt = torch.randn(rows, d, width, generator=gen)
            v = torch.randn(rows, width, d, generator=gen)
            s = torch.empty(rows, n, width)
            o = torch.empty(rows, n, d)

            def call() -> None:
                torch.bmm(q, kt, out=s)
                torch.bmm(s, v, out=o)

            return call

        default = "float32 torch.bmm of the same useful FLOPs: (B*H, N, D) @ (D, W) then @ (W, D), W = pairs / N"
        return Variant(
            name="matmul", setup=setup, flops=4.0 * rows * n * width * d, note=self.notes.get("matmul", default)
        )

    def case(self, shape: Shape, variants: Sequence[str] | None = None) -> Case:
        """The harness case of ``shape`` with ``variants`` (default: backends + peers)."""
        pairs = self.pairs(shape)
        built = []
        for name in variants or self.variants:
            if name == "sdpa":
                built.append(self._sdpa_variant(shape))
            elif name == "matmul":
                built.append(self._matmul_variant(shape, pairs))
            else:
                built.append(self._backend_variant(name, shape))
        info = {
            "batch": shape.batch,
            "heads": shape.heads,
            "kv_heads": shape.kv_heads or shape.heads,
            "head_dim": shape.head_dim,
            "spatial": list(shape.spatial),
            "params": {k: list(v) if isinstance(v, tuple) else v for k, v in shape.params.items()},
            "is_causal": list(shape.is_causal) if isinstance(shape.is_causal, tuple) else shape.is_causal,
            "pairs": pairs,
            "dtype": "float32",
        }
        return Case(name=shape.label, flops=4.0 * pairs * shape.head_dim, variants=built, info=info)

    # -- command line ----------------------------------------------------------------------

    def run(self, argv: Sequence[str] | None = None) -> int:
        """Entry point of ``attnkit bench <spec>``; returns the exit code.

        :param argv: options after the spec name: the harness's (``--quick``, ``--repeat N``,
            ``--threads N``, ``--json PATH``, ``--only SUBSTRING`` ...) and ``--backends a,b``
            (a comma list of variants to time, default every backend and peer).
        """
        parser = bench_parser(f"attnkit bench {self.spec}", description=self.title)
        parser.add_argument(
            "--backends",
            default=",".join(self.variants),
            help=f"comma list of variants to time (default {','.join(self.variants)})",
        )
        args = parser.parse_args(list(argv) if argv is not None else None)
        chosen = [b.strip() for b in args.backends.split(",") if b.strip()]
        unknown = sorted(set(chosen) - set(self.variants))
        if unknown or not chosen:
            parser.error(
                f"--backends: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(self.variants)}"
            )
        shapes = list(self.quick if args.quick else self.shapes)
        selected = [s for s in shapes if not args.only or args.only in s.label]
        if not selected:
            parser.error(f"--only {args.only!r} matches no case; cases: {', '.join(s.label for s in shapes)}")
        lead = next((v for v in self.variants if v in chosen), chosen[0])
        ratios = [(lead, other) for other in chosen if other not in (lead, "matmul")]
        gflops_ratios = [(lead, "matmul")] if "matmul" in chosen and lead != "matmul" else []
        bench = Bench(self.title, args, ratios=ratios, gflops_ratios=gflops_ratios)
        bench.run([self.case(s, chosen) for s in selected])
        return bench.exit_code

    def with_shapes(self, shapes: Sequence[Shape], quick: Sequence[Shape] | None = None) -> KernelBench:
        """A copy with other shapes (a quick comparison script, say)."""
        return dataclasses.replace(self, shapes=tuple(shapes), quick=tuple(quick if quick is not None else shapes))
