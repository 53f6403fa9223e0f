"""Spec validation, parameter building, the registry, and backend choice with reasons."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from attnkit import AttentionSpec, Backend, CallInfo, KVCacheSpec, choose
from attnkit.registry import Registry, owns, resolve


def _fn(q, k, v, **_):  # type: ignore[no-untyped-def]
    return q


@dataclasses.dataclass(frozen=True)
class WindowParams:
    window: int = 4
    sink: int = 0

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")


def _spec(*backends: Backend, **kw) -> AttentionSpec:  # type: ignore[no-untyped-def]
    return AttentionSpec(name="toy", params=WindowParams, backends=backends or (Backend("reference", _fn),), **kw)


def _call(**kw) -> CallInfo:  # type: ignore[no-untyped-def]
    base = {"device": torch.device("cpu"), "dtype": torch.float32}
    base.update(kw)
    return CallInfo(**base)


# -- spec validation -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", " toy", "two words"])
def test_spec_name_must_be_one_word(name):
    with pytest.raises(ValueError, match="spec name"):
        AttentionSpec(name=name, backends=(Backend("reference", _fn),))


def test_spec_params_must_be_a_dataclass():
    with pytest.raises(TypeError, match="params must be a dataclass type"):
        AttentionSpec(name="toy", params=dict, backends=(Backend("reference", _fn),))


def test_attention_spec_needs_backends():
    with pytest.raises(ValueError, match="declares no backends"):
        AttentionSpec(name="toy", backends=())


def test_attention_spec_rejects_duplicate_backend_names():
    with pytest.raises(ValueError, match="duplicate backend names"):
        _spec(Backend("reference", _fn), Backend("reference", _fn))


def test_unknown_backend_lists_the_backends():
    spec = _spec(Backend("numba", _fn), Backend("reference", _fn))
    with pytest.raises(ValueError, match="has no backend 'triton'; its backends are: numba, reference"):
        spec.backend("triton")


# -- make_params -----------------------------------------------------------------------------


def test_make_params_defaults_and_values():
    spec = _spec()
    assert spec.make_params() == WindowParams(4, 0)
    assert spec.make_params(window=9).window == 9


def test_make_params_unknown_name_lists_the_parameters():
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) windw; its parameters are: sink, window"):
        _spec().make_params(windw=3)


def test_make_params_invalid_value_raises_from_the_dataclass():
    with pytest.raises(ValueError, match="window must be >= 1, got 0"):
        _spec().make_params(window=0)


def test_make_params_takes_an_instance_and_overrides():
    spec = _spec()
    p = WindowParams(window=5)
    assert spec.make_params(p) is p
    assert spec.make_params(p, sink=2) == WindowParams(5, 2)
    with pytest.raises(TypeError, match="params must be a WindowParams, got int"):
        spec.make_params(3)


# -- registry --------------------------------------------------------------------------------


def test_registry_add_get_and_kinds():
    reg = Registry()
    att = _spec()
    cache = KVCacheSpec(name="full", factory=_fn)
    reg.add(att)
    reg.add(cache)
    assert reg.get("toy") is att
    assert reg.get("full", "cache") is cache
    assert reg.attention_specs() == [att] and reg.cache_specs() == [cache]
    assert "toy" in reg and len(reg) == 2


def test_registry_unknown_name_lists_available():
    reg = Registry()
    reg.add(_spec())
    with pytest.raises(ValueError, match=r"unknown spec 'nope'; available: toy"):
        reg.get("nope")
    with pytest.raises(ValueError, match=r"unknown cache spec 'toy'; available: none installed"):
        reg.get("toy", "cache")


def test_registry_rejects_duplicates_and_non_specs():
    reg = Registry()
    reg.add(dataclasses.replace(_spec(), plugin="attnkit-a"))
    with pytest.raises(ValueError, match="'toy' is already registered by attnkit-a"):
        reg.add(_spec())
    with pytest.raises(TypeError, match="takes a spec object, got str"):
        reg.add("toy")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("distribution", "name", "owned"),
    [
        ("attnkit-neighborhood", "neighborhood", True),
        ("attnkit-neighborhood", "neighborhood.causal", True),
        ("attnkit-neighborhood", "Neighborhood", True),  # case and -/_ do not make another name
        ("attnkit-neighborhood", "neighborhoods", False),
        ("attnkit-neighborhood", "dense", False),
        ("attnkit_retrieval.heads", "retrieval_heads", True),  # distribution names normalise
        ("attnkit-retrieval-heads", "retrieval_heads_cache", False),
        ("attnkit-sliding-window", "sliding-window.v2", True),
        ("attnkit", "dense", False),  # the core owns its built-ins' names, not a namespace
        ("natten-attnkit", "natten", False),
        (None, "toy", False),
    ],
)
def test_spec_name_ownership(distribution, name, owned):
    assert owns(distribution, name) is owned


def test_registry_unavailable_name_says_why_and_cannot_be_added():
    reg = Registry()
    reg.mark_unavailable("shared", "registered by both attnkit-one and attnkit-two")
    assert "shared" not in reg
    with pytest.raises(ValueError, match="'shared' is unavailable: registered by both attnkit-one and attnkit-two"):
        reg.get("shared")
    with pytest.raises(ValueError, match="'shared' is unavailable"):
        reg.add(dataclasses.replace(_spec(), name="shared"))
    state = reg.snapshot()
    reg.add(dataclasses.replace(_spec(), name="other"))
    reg.restore(state)
    assert "other" not in reg and "shared" in reg.unavailable()
    reg.clear()
    assert reg.unavailable() == {}


def test_resolve_reference_strings():
    assert resolve("attnkit.registry:resolve") is resolve
    assert resolve(_fn) is _fn
    with pytest.raises(ValueError, match=r"package\.module:attribute"):
        resolve("attnkit.registry.resolve")


# -- choose ----------------------------------------------------------------------------------


def test_choose_takes_the_first_that_can_run_and_logs_skips(caplog):
    spec = _spec(
        Backend("triton", _fn, devices=("cuda",)),
        Backend("numba", _fn, can_run=lambda call: "numba is not installed"),
        Backend("reference", _fn),
    )
    with caplog.at_level(logging.DEBUG, logger="attnkit"):
        chosen = choose(spec, _call())
    assert chosen.name == "reference"
    text = caplog.text
    assert "skipped backend 'triton': runs on cuda, not cpu" in text
    assert "skipped backend 'numba': numba is not installed" in text
    assert "chose backend 'reference'" in text


@pytest.mark.parametrize(
    ("backend", "call", "reason"),
    [
        (Backend("b", _fn, dtypes=("float32",)), _call(dtype=torch.float64), "supports dtypes float32, not float64"),
        (Backend("b", _fn, differentiable=False), _call(requires_grad=True), "no backward pass"),
        (Backend("b", _fn, supports_lse=False), _call(return_lse=True), "log-sum-exp"),
        (Backend("b", _fn), _call(has_mask=True), "does not accept an explicit mask"),
        (Backend("b", _fn), _call(exporting=True), "cannot be traced"),
    ],
    ids=["dtype", "grad", "lse", "mask", "export"],
)
def test_backend_capability_reasons(backend, call, reason):
    got = backend.reason_not_to_run(call)
    assert got is not None and reason in got


def test_can_run_exception_counts_as_the_reason():
    def broken(call):  # type: ignore[no-untyped-def]
        raise ImportError("no module named numba")

    assert Backend("numba", _fn, can_run=broken).reason_not_to_run(_call()) == "ImportError: no module named numba"


def test_can_run_receives_the_call():
    seen = []
    spec = _spec(Backend("numba", _fn, can_run=lambda call: seen.append(call)))
    call = _call(params=WindowParams(), q_shape=(1, 2, 8, 4))
    assert choose(spec, call).name == "numba"
    assert seen == [call]


def test_choose_forced_backend():
    spec = _spec(Backend("numba", _fn), Backend("reference", _fn))
    assert choose(spec, _call(), backend="reference").name == "reference"
    with pytest.raises(ValueError, match="has no backend 'flex'"):
        choose(spec, _call(), backend="flex")


def test_choose_forced_backend_that_cannot_run_raises_its_reason():
    spec = _spec(Backend("numba", _fn, dtypes=("float32",)), Backend("reference", _fn))
    with pytest.raises(
        RuntimeError, match="backend 'numba' cannot run this call: supports dtypes float32, not float16"
    ):
        choose(spec, _call(dtype=torch.float16), backend="numba")


def test_choose_manual_backends_only_by_name_or_when_exporting():
    spec = _spec(
        Backend("flex", _fn, auto=False), Backend("onnx", _fn, auto=False, traceable=True), Backend("reference", _fn)
    )
    assert choose(spec, _call()).name == "reference"
    assert choose(spec, _call(), backend="flex").name == "flex"
    assert choose(spec, _call(exporting=True)).name == "onnx"


def test_choose_with_nothing_left_lists_every_reason():
    spec = _spec(Backend("triton", _fn, devices=("cuda",)), Backend("numba", _fn, can_run=lambda c: "no numba"))
    with pytest.raises(NotImplementedError) as info:
        choose(spec, _call())
    msg = str(info.value)
    assert "no backend can run on cpu/float32" in msg
    assert "triton: runs on cuda, not cpu" in msg and "numba: no numba" in msg
    assert "ATTNKIT_LOG_LEVEL=DEBUG" in msg


def test_spec_call_runs_the_chosen_backend_with_validated_arguments():
    got = {}

    def impl(q, k, v, *, params, is_causal, scale, return_lse):  # type: ignore[no-untyped-def]
        got.update(params=params, is_causal=is_causal, scale=scale, return_lse=return_lse)
        return torch.zeros(*q.shape[:-1], v.shape[-1])

    spec = _spec(Backend("reference", impl))
    q = torch.randn(1, 4, 6, 16)
    kv = torch.randn(1, 2, 6, 16)
    out = spec(q, kv, kv, window=3)
    assert out.shape == (1, 4, 6, 16)
    assert got == {"params": WindowParams(window=3), "is_causal": False, "scale": 16**-0.5, "return_lse": False}
