"""The module contract must be able to fail: each deliberately wrong module fails the check
about its bug, while the built-in ``mha`` passes the same checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnkit import get_spec
from attnkit.modules import ModuleConfig, MultiHeadAttention
from attnkit.registry import AttentionModuleSpec
from attnkit_contract import MODULE_CHECKS, parametrize_with_module_contract
from attnkit_contract.module_checks import module_contract_params


class DeadParameter(MultiHeadAttention):
    """Has a trainable gate that forward never uses."""

    def __init__(self, config: ModuleConfig, params: object) -> None:
        super().__init__(config)
        self.gate = nn.Parameter(torch.ones(config.heads))


class UnsavedShift(MultiHeadAttention):
    """Adds a random offset kept in a non-persistent buffer: not in the state_dict."""

    def __init__(self, config: ModuleConfig, params: object) -> None:
        super().__init__(config)
        self.register_buffer("shift", torch.randn(config.dim), persistent=False)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x, attn_mask) + self.shift


class SilentDropout(MultiHeadAttention):
    """Dropout on the output without declaring train_eval_differ."""

    def __init__(self, config: ModuleConfig, params: object) -> None:
        super().__init__(config)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.drop(super().forward(x, attn_mask))


def bad_spec(cls: type, **kw: object) -> AttentionModuleSpec:
    return AttentionModuleSpec(name=f"bad.{cls.__name__.lower()}", factory=cls, onnx=False, **kw)


@pytest.mark.parametrize(
    ("cls", "check", "message"),
    [
        pytest.param(DeadParameter, "check_module_gradients", "gate", id="no-grad"),
        pytest.param(UnsavedShift, "check_module_state_dict", "state_dict round trip", id="state-dict"),
        pytest.param(SilentDropout, "check_module_train_eval", "train and eval", id="train-eval"),
    ],
)
def test_wrong_module_fails_its_check(cls: type, check: str, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        MODULE_CHECKS[check](bad_spec(cls))
    # The same check passes on the correct module, so the failure is the bug's.
    MODULE_CHECKS[check](get_spec("mha", "module"))


def test_declared_difference_is_skipped() -> None:
    with pytest.raises(pytest.skip.Exception, match="train_eval_differ"):
        MODULE_CHECKS["check_module_train_eval"](bad_spec(SilentDropout, train_eval_differ=True))


def test_expected_failures_become_strict_xfails() -> None:
    spec = bad_spec(DeadParameter, expected_failed_checks={"check_module_gradients": "gate is unused"})
    params = {p.id: p for p in module_contract_params([spec])}
    # onnx=False and no reduction declared: those two checks do not apply and are not generated.
    applicable = set(MODULE_CHECKS) - {"check_module_onnx_export", "check_module_reduction"}
    assert set(params) == {f"{spec.name}-{name}" for name in applicable}
    xfails = {i: m for i, p in params.items() for m in p.marks if m.name == "xfail"}
    assert list(xfails) == [f"{spec.name}-check_module_gradients"]
    assert xfails[f"{spec.name}-check_module_gradients"].kwargs == {"strict": True, "reason": "gate is unused"}


def test_rejects_attention_specs() -> None:
    with pytest.raises(TypeError, match="module specs"):
        module_contract_params([get_spec("dense")])
    with pytest.raises(TypeError, match="AttentionModuleSpec"):
        MODULE_CHECKS["check_module_deterministic"](get_spec("dense"))


@parametrize_with_module_contract([get_spec("mha", "module")])
def test_mha_passes_module_contract(spec: AttentionModuleSpec, check: object) -> None:
    check(spec)  # type: ignore[operator]
