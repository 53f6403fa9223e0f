"""The contract checks for attention *module* specs (:class:`~attnkit.AttentionModuleSpec`).

Each check is ``check_module_<name>(spec, case=None) -> None``: it builds the module with
:func:`attnkit.modules.build_module` at tiny sizes (float64 where the module allows), for each
parameter set of the spec's ``contract_params`` and for an encoder and a decoder (causal)
GQA config, and raises ``AssertionError`` naming the spec, config and parameters when the
module breaks the contract. ``pytest.skip`` only when a check does not apply to the spec.

:func:`parametrize_with_module_contract` makes one pytest test per ``(spec, check)`` with ids
``<spec>-<check>``; a spec's ``expected_failed_checks`` become strict xfails, as for kernels.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch

from attnkit.modules import ModuleConfig, aux_loss, build_module
from attnkit.registry import AttentionModuleSpec, resolve
from attnkit_contract.harness import ContractCase, default_case

__all__ = ["MODULE_CHECKS", "module_contract_params", "parametrize_with_module_contract"]

F = TypeVar("F", bound=Callable[..., Any])

#: The ``backend`` module checks are filed under in ``expected_failed_checks`` keys
#: (``"check_module_x"`` or ``"module:check_module_x"``).
MODULE_BACKEND = "module"

#: Encoder and decoder, both grouped-query (Hq=4, Hkv=2), E=16, D=4.
CONFIGS = (
    ModuleConfig(dim=16, heads=4, kv_heads=2, causal=False),
    ModuleConfig(dim=16, heads=4, kv_heads=2, causal=True),
)
BATCH, SEQ = 3, 7
#: float64 agreement with a reference whose math is the same up to summation order.
F64_TOL = 1e-10


def _check_spec(spec: Any) -> AttentionModuleSpec:
    if not isinstance(spec, AttentionModuleSpec):
        raise TypeError(f"spec must be an attnkit.AttentionModuleSpec, got {type(spec).__name__}")
    return spec


def _param_sets(spec: AttentionModuleSpec) -> list[dict[str, Any]]:
    if spec.contract_params is None:
        return [{}]
    sets = list(resolve(spec.contract_params)())
    if not sets:
        raise AssertionError(f"{spec.name}: contract_params returned no parameter sets")
    return [dict(s) for s in sets]


def _cases(spec: AttentionModuleSpec) -> Iterator[tuple[ModuleConfig, dict[str, Any], str]]:
    for params in _param_sets(spec):
        for config in CONFIGS:
            ptxt = ", ".join(f"{k}={v!r}" for k, v in params.items())
            yield config, params, f"{spec.name} (causal={config.causal}{', ' + ptxt if ptxt else ''})"


def _build(
    spec: AttentionModuleSpec, config: ModuleConfig, params: dict[str, Any], case: ContractCase, seed: int = 0
) -> torch.nn.Module:
    """The module with seeded weights, in float64 when it converts (else float32)."""
    torch.manual_seed(case.seed + seed)
    module = build_module(spec, config, **params).to(case.device)
    try:
        return module.double()
    except (RuntimeError, TypeError):  # a module pinned to a lower precision
        return module


def _dtype(module: torch.nn.Module) -> torch.dtype:
    p = next(module.parameters(), None)
    return p.dtype if p is not None and p.is_floating_point() else torch.float64


def _x(
    config: ModuleConfig, module: torch.nn.Module, case: ContractCase, batch: int = BATCH, seq: int = SEQ, seed: int = 0
) -> torch.Tensor:
    g = torch.Generator().manual_seed(case.seed + 1000 + seed)
    return torch.randn(batch, seq, config.dim, generator=g, dtype=torch.float64).to(case.device, _dtype(module))


def _worst(got: torch.Tensor, want: torch.Tensor) -> str:
    diff = (got.double() - want.double()).abs()
    idx = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
    return f"max abs difference {float(diff.max()):.3g} at {idx}"


def check_module_output_shape_dtype(spec: Any, case: ContractCase | None = None) -> None:
    """``module(x (B, T, E))`` is ``(B, T, E)`` in ``x.dtype``, finite, in train and eval."""
    spec, case = _check_spec(spec), case or default_case()
    for config, params, label in _cases(spec):
        module = _build(spec, config, params, case)
        x = _x(config, module, case)
        for mode in ("train", "eval"):
            module.train(mode == "train")
            out = module(x)
            assert isinstance(out, torch.Tensor), f"{label}: forward returned {type(out).__name__}, not a tensor"
            assert tuple(out.shape) == tuple(x.shape), (
                f"{label} [{mode}]: output shape {tuple(out.shape)}, expected (B, T, E) = {tuple(x.shape)}"
            )
            assert out.dtype == x.dtype, f"{label} [{mode}]: output dtype {out.dtype}, input {x.dtype}"
            assert torch.isfinite(out).all(), f"{label} [{mode}]: output has non-finite values"


def check_module_reduction(spec: Any, case: ContractCase | None = None) -> None:
    """Where the paper defines a reduction to multi-head attention, the module in that
    configuration equals the equivalent :class:`~attnkit.modules.MultiHeadAttention`
    (float64, eval, within 1e-10)."""
    spec, case = _check_spec(spec), case or default_case()
    if spec.reduction is None:
        pytest.skip(f"{spec.name} declares no reduction to multi-head attention")
    fn = resolve(spec.reduction)
    for config in CONFIGS:
        torch.manual_seed(case.seed)
        module, reference = fn(config)
        module = module.to(case.device).double().eval()
        reference = reference.to(case.device).double().eval()
        x = _x(config, module, case)
        with torch.no_grad():
            got, want = module(x), reference(x)
        assert got.shape == want.shape, f"{spec.name}: reduction output {tuple(got.shape)} vs {tuple(want.shape)}"
        assert torch.allclose(got, want, atol=F64_TOL, rtol=F64_TOL), (
            f"{spec.name} (causal={config.causal}): reducing configuration differs from multi-head attention: "
            f"{_worst(got, want)} (bound {F64_TOL:g})"
        )


def check_module_gradients(spec: Any, case: ContractCase | None = None) -> None:
    """Every trainable parameter (and ``x``) gets a finite gradient from a loss on the
    output plus :func:`~attnkit.modules.aux_loss`, non-zero for at least one of three inputs."""
    spec, case = _check_spec(spec), case or default_case()
    for config, params, label in _cases(spec):
        module = _build(spec, config, params, case).train()
        trainable = {n: p for n, p in module.named_parameters() if p.requires_grad}
        assert trainable, f"{label}: module has no trainable parameters"
        reached: set[str] = set()
        for trial in range(3):
            module.zero_grad(set_to_none=True)
            x = _x(config, module, case, seed=trial).requires_grad_(True)
            out = module(x)
            # A random projection, not out.sum(): softmax rows sum to one, so some sums have
            # identically zero gradient for correct modules.
            g = torch.Generator().manual_seed(case.seed + 2000 + trial)
            w = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device, out.dtype)
            ((out * w).sum() + aux_loss(module)).backward()
            assert x.grad is not None and torch.isfinite(x.grad).all(), f"{label}: gradient wrt x missing or non-finite"
            for name, p in trainable.items():
                if p.grad is None:
                    continue
                assert torch.isfinite(p.grad).all(), f"{label}: gradient of {name} {tuple(p.shape)} is not finite"
                if p.grad.abs().max() > 0:
                    reached.add(name)
        missing = sorted(set(trainable) - reached)
        assert not missing, f"{label}: no gradient (None or all zero over 3 inputs) reaches parameter(s) {missing}"


def check_module_state_dict(spec: Any, case: ContractCase | None = None) -> None:
    """``state_dict`` saved and loaded (``torch.load(weights_only=True)``) into a freshly
    built module with other initial weights gives bit-identical eval outputs."""
    spec, case = _check_spec(spec), case or default_case()
    for config, params, label in _cases(spec):
        module = _build(spec, config, params, case).eval()
        x = _x(config, module, case)
        with torch.no_grad():
            want = module(x)
        buf = io.BytesIO()
        torch.save(module.state_dict(), buf)
        buf.seek(0)
        state = torch.load(buf, weights_only=True)
        fresh = _build(spec, config, params, case, seed=1)
        fresh.load_state_dict(state, strict=True)
        fresh.eval()
        with torch.no_grad():
            got = fresh(x)
        assert torch.equal(got, want), f"{label}: outputs change after a state_dict round trip: {_worst(got, want)}"


def check_module_train_eval(spec: Any, case: ContractCase | None = None) -> None:
    """Outputs in ``train()`` and ``eval()`` agree (within 1e-10, float64) unless the spec
    declares ``train_eval_differ``."""
    spec, case = _check_spec(spec), case or default_case()
    if spec.train_eval_differ:
        pytest.skip(f"{spec.name} declares train_eval_differ=True")
    for config, params, label in _cases(spec):
        module = _build(spec, config, params, case)
        x = _x(config, module, case)
        with torch.no_grad():
            train_out = module.train()(x)
            eval_out = module.eval()(x)
        tol = F64_TOL if x.dtype == torch.float64 else 1e-5
        assert torch.allclose(train_out, eval_out, atol=tol, rtol=tol), (
            f"{label}: train and eval outputs differ ({_worst(train_out, eval_out)}) but the spec does not "
            "declare train_eval_differ=True"
        )


def check_module_deterministic(spec: Any, case: ContractCase | None = None) -> None:
    """Two eval calls on the same input give bit-identical outputs."""
    spec, case = _check_spec(spec), case or default_case()
    for config, params, label in _cases(spec):
        module = _build(spec, config, params, case).eval()
        x = _x(config, module, case)
        with torch.no_grad():
            a, b = module(x), module(x)
        assert torch.equal(a, b), f"{label}: two eval calls differ: {_worst(a, b)}"


def check_module_batch_independence(spec: Any, case: ContractCase | None = None) -> None:
    """In eval, each batch row's output equals running that row alone, and changing one row
    leaves the others unchanged (float64, 1e-10)."""
    spec, case = _check_spec(spec), case or default_case()
    for config, params, label in _cases(spec):
        module = _build(spec, config, params, case).eval()
        x = _x(config, module, case)
        tol = F64_TOL if x.dtype == torch.float64 else 1e-5
        with torch.no_grad():
            full = module(x)
            for i in range(x.shape[0]):
                alone = module(x[i : i + 1])
                assert torch.allclose(full[i : i + 1], alone, atol=tol, rtol=tol), (
                    f"{label}: batch row {i} differs from running it alone: {_worst(full[i : i + 1], alone)}"
                )
            y = x.clone()
            y[-1] = y[-1] * -3.0 + 1.0
            changed = module(y)
        assert torch.allclose(changed[:-1], full[:-1], atol=tol, rtol=tol), (
            f"{label}: changing the last batch row changed the others: {_worst(changed[:-1], full[:-1])}"
        )


def check_module_onnx_export(spec: Any, case: ContractCase | None = None) -> None:
    """The eval module exports through :func:`attnkit.export.to_onnx` (float32, traced at
    ``(2, 8, E)``, dynamic batch and sequence) and onnxruntime at ``(3, 5, E)`` and
    ``(1, 13, E)`` matches the float64 module within 1e-4. Encoder and decoder, first
    parameter set."""
    spec, case = _check_spec(spec), case or default_case()
    if not spec.onnx:
        pytest.skip(f"{spec.name} declares onnx=False")
    for module_name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(
            module_name, reason=f"check_module_onnx_export needs {module_name} (pip install 'attnkit-contract[onnx]')"
        )
    from attnkit.export.onnx import run_onnx, to_onnx

    params = _param_sets(spec)[0]
    with tempfile.TemporaryDirectory(prefix="attnkit-contract-module-onnx-") as tmp:
        for config in CONFIGS:
            label = f"{spec.name} (causal={config.causal}, {params})"
            module64 = _build(spec, config, params, case).eval()
            module32 = _build(spec, config, params, case).float().eval()
            path = Path(tmp) / f"{spec.name}-causal{int(config.causal)}.onnx"
            trace = _x(config, module32, case, batch=2, seq=8)
            try:
                to_onnx(
                    module32,
                    [trace],
                    path,
                    input_names=["x"],
                    dynamic_axes=[{0: ("batch", 1, 64), 1: ("seq", 2, 4096)}],
                )
            except Exception as exc:
                raise AssertionError(f"{label}: ONNX export failed: {type(exc).__name__}: {exc}") from exc
            for batch, seq in ((3, 5), (1, 13)):
                x = _x(config, module64, case, batch=batch, seq=seq, seed=batch)
                try:
                    (got,) = run_onnx(path, [x.float()])[:1]
                except Exception as exc:
                    raise AssertionError(
                        f"{label}: onnxruntime failed at x {(batch, seq, config.dim)} (traced at (2, 8, {config.dim})): "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                with torch.no_grad():
                    want = module64(x)
                got_t = torch.from_numpy(got).to(torch.float64)
                assert got_t.shape == want.shape, (
                    f"{label}: onnxruntime output {tuple(got_t.shape)}, expected {tuple(want.shape)}"
                )
                err = float((got_t - want.cpu()).abs().max())
                assert err <= 1e-4, (
                    f"{label}: onnxruntime at x {(batch, seq, config.dim)} (traced at (2, 8, {config.dim})) differs "
                    f"from the float64 module by {err:.3g} (bound 1e-4)"
                )


#: Check name -> function, in the order the suite runs them.
MODULE_CHECKS: dict[str, Callable[..., None]] = {
    f.__name__: f
    for f in (
        check_module_output_shape_dtype,
        check_module_reduction,
        check_module_gradients,
        check_module_state_dict,
        check_module_train_eval,
        check_module_deterministic,
        check_module_batch_independence,
        check_module_onnx_export,
    )
}


#: Which module checks apply to a spec, from what it declares (see ``checks.APPLIES``).
MODULE_APPLIES: dict[str, Callable[[Any], bool]] = {
    "check_module_reduction": lambda spec: spec.reduction is not None,
    "check_module_train_eval": lambda spec: not spec.train_eval_differ,
    "check_module_onnx_export": lambda spec: spec.onnx,
}


def module_contract_params(specs: Iterable[Any]) -> list[Any]:
    """The ``pytest.param`` list behind :func:`parametrize_with_module_contract`: values
    ``(spec, check_function)``, ids ``<spec>-<check>``, strict xfails from the spec's
    ``expected_failed_checks``."""
    from attnkit_contract.runner import spec_check_params

    return spec_check_params(
        specs, "module", MODULE_CHECKS, MODULE_BACKEND, "parametrize_with_module_contract", applies=MODULE_APPLIES
    )


def parametrize_with_module_contract(specs: Iterable[Any]) -> Callable[[F], F]:
    """Parametrise a test over every ``(module spec, check)``::

        @parametrize_with_module_contract(registry.module_specs())
        def test_module_contract(spec, check):
            check(spec)

    Ids look like ``mha-check_module_gradients``; each test carries the ``attnkit_contract``
    marker (so ``--attnkit-plugin`` selects it) and checks listed in the spec's
    ``expected_failed_checks`` are strict xfails.

    .. versionadded:: 0.1
    """
    specs = list(specs)

    def decorate(fn: F) -> F:
        return pytest.mark.parametrize("spec, check", module_contract_params(specs))(fn)

    return decorate
