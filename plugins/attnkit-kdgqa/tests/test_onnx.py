"""ONNX export of allocations the contract's first parameter set does not reach: KDGQA with
four KV heads (per-sample, several different allocations in one batch) and a trained DGQA."""

from __future__ import annotations

import pytest
import torch

from attnkit.modules import ModuleConfig, build_module

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

CFG = ModuleConfig(dim=32, heads=8, kv_heads=4)


def _export_and_compare(module: torch.nn.Module, tmp_path, xs) -> None:  # type: ignore[no-untyped-def]
    from attnkit.export.onnx import run_onnx, to_onnx

    path = tmp_path / "m.onnx"
    m32 = module_copy(module).float().eval()
    trace = torch.randn(2, 8, CFG.dim)
    to_onnx(m32, [trace], path, input_names=["x"], dynamic_axes=[{0: ("batch", 1, 64), 1: ("seq", 2, 4096)}])
    module.eval()
    for x in xs:
        (got,) = run_onnx(path, [x.float()])[:1]
        with torch.no_grad():
            want = module(x)
        err = float((torch.from_numpy(got).double() - want).abs().max())
        assert err <= 1e-4, err


def module_copy(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module)


def test_kdgqa_per_sample_allocations_export(tmp_path):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    m = build_module("kdgqa", CFG, min_queries=1).double().eval()
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(5, 6, 32, generator=gen, dtype=torch.float64) * torch.linspace(0.2, 3, 5).view(5, 1, 1)]
    xs.append(torch.randn(1, 13, 32, generator=gen, dtype=torch.float64))
    with torch.no_grad():
        m(xs[0])
    assert len({tuple(c) for c in m.last_counts.tolist()}) > 1  # the batch mixes allocations
    _export_and_compare(m, tmp_path, xs)


def test_trained_dgqa_exports_its_frozen_allocation(tmp_path):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    m = build_module("dgqa", CFG, form="ema", window=1).double().train()
    with torch.no_grad():
        # Blow up KV head 0's keys so the allocation leaves uniform.
        m.k_proj.weight[:8] *= 6
        m(torch.randn(4, 6, 32, dtype=torch.float64))
    assert m.counts.tolist() != [2, 2, 2, 2]
    gen = torch.Generator().manual_seed(2)
    _export_and_compare(
        m,
        tmp_path,
        [
            torch.randn(3, 5, 32, generator=gen, dtype=torch.float64),
            torch.randn(1, 13, 32, generator=gen, dtype=torch.float64),
        ],
    )
