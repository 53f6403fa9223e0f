"""Spec types, the registry of installed specs, and backend choice (with reasons).

A *spec* describes one thing a plugin provides: an attention kernel, an attention module, a
KV-cache policy or an analysis. Specs are plain frozen dataclasses that reference their
implementations by ``"module:attribute"`` strings, so registering a spec never imports torch,
numba or triton; the implementation is imported on first use.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("attnkit")
if "ATTNKIT_LOG_LEVEL" in os.environ:
    logging.basicConfig()
    logger.setLevel(os.environ["ATTNKIT_LOG_LEVEL"].upper())

__all__ = [
    "AnalysisSpec",
    "AttentionModuleSpec",
    "AttentionSpec",
    "Backend",
    "CallInfo",
    "KVCacheSpec",
    "NoParams",
    "Paper",
    "Register",
    "Registry",
    "Spec",
    "choose",
    "name_key",
    "owns",
    "registry",
    "resolve",
    "spec_namespace",
]


def resolve(ref: str | Callable[..., Any]) -> Any:
    """Return the object a ``"package.module:attribute"`` reference names.

    Callables are returned as they are, so a spec may hold either form.
    """
    if not isinstance(ref, str):
        return ref
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"reference must look like 'package.module:attribute', got {ref!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Paper:
    """The paper a spec implements."""

    title: str
    arxiv: str | None = None
    url: str | None = None

    def __str__(self) -> str:
        return f"{self.title} (arXiv:{self.arxiv})" if self.arxiv else self.title


@dataclass(frozen=True)
class NoParams:
    """Parameter set of a spec that takes no parameters of its own."""


@dataclass(frozen=True)
class CallInfo:
    """What a backend's ``can_run`` is told about one call.

    :param device: device of the inputs.
    :param dtype: dtype of the inputs.
    :param requires_grad: whether any input requires a gradient.
    :param return_lse: whether the caller asked for the log-sum-exp.
    :param has_mask: whether a boolean mask was passed.
    :param exporting: whether the call is being traced by ``torch.export`` / ONNX export.
    :param params: the validated parameter dataclass of the call, if known.
    :param q_shape: shape of ``q`` in the canonical layout, if known.
    """

    device: torch.device
    dtype: torch.dtype
    requires_grad: bool = False
    return_lse: bool = False
    has_mask: bool = False
    exporting: bool = False
    params: Any = None
    q_shape: tuple[int, ...] | None = None


class CanRun(Protocol):
    def __call__(self, call: CallInfo) -> str | None: ...


@dataclass(frozen=True)
class Backend:
    """One implementation of a spec.

    :param name: ``reference``, ``numba``, ``triton``, ``flex``, ``onnx``, ``sdpa`` ...
    :param impl: the function, or a ``"module:function"`` reference imported on first use.
    :param can_run: ``(CallInfo) -> None | reason``; ``None`` means "can run". May be a
        reference string. Exceptions raised by it (a missing compiled dependency, say) count
        as the reason.
    :param differentiable: whether gradients flow through this backend.
    :param traceable: whether ``torch.export`` can trace it (needed for ONNX export).
    :param supports_lse: whether ``return_lse=True`` is supported.
    :param supports_mask: whether an explicit boolean ``mask=`` is supported.
    :param devices: device types it runs on (``"cpu"``, ``"cuda"``); ``None`` means any.
    :param dtypes: dtype names it accepts (``"float32"`` ...); ``None`` means any float dtype.
    :param auto: whether :func:`choose` may pick it without being asked by name.
    :param cost: what makes calling it expensive in tests, for the contract suite's tiers:
        ``"compile"`` (``torch.compile`` per new shape, e.g. FlexAttention), ``"interpreter"``
        (Triton kernels, run by Triton's interpreter on CPU). The quick profile runs such a
        backend through one small check only.
    :param requires: top-level import names of the optional modules it needs (``("numba",
        "scipy")``). ``attnkit info`` and ``attnkit plugins`` look these up with
        :func:`importlib.util.find_spec` instead of calling ``can_run``, which may import
        them (seconds, for numba); a call still goes through ``can_run``.
    """

    name: str
    impl: str | Callable[..., Any]
    can_run: str | Callable[[CallInfo], str | None] | None = None
    differentiable: bool = True
    traceable: bool = False
    supports_lse: bool = True
    supports_mask: bool = False
    devices: tuple[str, ...] | None = None
    dtypes: tuple[str, ...] | None = None
    auto: bool = True
    description: str = ""
    cost: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.requires, tuple) or not all(isinstance(m, str) and m for m in self.requires):
            raise TypeError(f"backend {self.name!r}: requires must be a tuple of module names, got {self.requires!r}")

    def load(self) -> Callable[..., Any]:
        """Import and return the implementation."""
        # Keyed by id but holding the backend too: a freed backend's id can be reused by a new
        # one, which must not get the old implementation.
        entry = _LOADED.get(id(self))
        if entry is None or entry[0] is not self:
            entry = (self, resolve(self.impl))
            _LOADED[id(self)] = entry
        return entry[1]

    def reason_not_to_run(self, call: CallInfo) -> str | None:
        """Return why this backend cannot serve ``call``, or ``None`` when it can."""
        reason = self.declared_reason(call)
        if reason is not None or self.can_run is None:
            return reason
        try:
            return resolve(self.can_run)(call)
        except Exception as exc:  # a missing optional dependency is a reason, not a crash
            return f"{type(exc).__name__}: {exc}"

    def declared_reason(self, call: CallInfo) -> str | None:
        """Why the declared fields (devices, dtypes, flags) rule ``call`` out, or ``None``.
        ``can_run`` is not consulted, so nothing is imported."""
        if self.devices is not None and call.device.type not in self.devices:
            return f"runs on {'/'.join(self.devices)}, not {call.device.type}"
        if self.dtypes is not None:
            dname = str(call.dtype).removeprefix("torch.")
            if dname not in self.dtypes:
                return f"supports dtypes {', '.join(self.dtypes)}, not {dname}"
        if call.requires_grad and not self.differentiable:
            return "has no backward pass and an input requires grad"
        if call.return_lse and not self.supports_lse:
            return "does not return the log-sum-exp (return_lse=True)"
        if call.has_mask and not self.supports_mask:
            return "does not accept an explicit mask"
        if call.exporting and not self.traceable:
            return "cannot be traced by torch.export (ONNX export)"
        return None


_LOADED: dict[int, tuple[Backend, Callable[..., Any]]] = {}


@dataclass(frozen=True, kw_only=True)
class Spec:
    """Fields every kind of spec shares.

    :param name: ``<slug>`` or ``<slug>.<variant>``; unique across installed plugins. The
        distribution ``attnkit-<slug>`` owns these names (:func:`owns`); attnkit owns its
        built-ins' names.
    :param paper: the paper implemented, or ``None`` for attnkit's own built-ins.
    :param params: a dataclass type; its fields are the spec's parameters with defaults.
        Validation lives in its ``__post_init__`` and raises ``ValueError``/``TypeError``
        naming the parameter.
    :param expected_failed_checks: contract-check name -> reason; the contract suite turns
        these into strict xfails.
    :param plugin: distribution that registered the spec (filled in by the registry).
    :param version: that distribution's version (filled in by the registry).
    """

    kind: ClassVar[str] = "spec"

    name: str
    paper: Paper | None = None
    description: str = ""
    params: type = NoParams
    expected_failed_checks: Mapping[str, str] = field(default_factory=dict)
    plugin: str | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip() or " " in self.name:
            raise ValueError(f"spec name must be a non-empty word like 'slug.variant', got {self.name!r}")
        if not dataclasses.is_dataclass(self.params):
            raise TypeError(f"spec {self.name!r}: params must be a dataclass type, got {self.params!r}")

    def param_fields(self) -> list[dataclasses.Field[Any]]:
        return list(dataclasses.fields(self.params))

    def make_params(self, params: Any = None, /, **kwargs: Any) -> Any:
        """Build (and so validate) the parameter dataclass from keyword arguments.

        Unknown names raise ``TypeError`` listing the parameters the spec has.
        """
        if params is not None:
            if not isinstance(params, self.params):
                raise TypeError(f"{self.name}: params must be a {self.params.__name__}, got {type(params).__name__}")
            return dataclasses.replace(params, **kwargs) if kwargs else params  # type: ignore[type-var]
        known = {f.name for f in dataclasses.fields(self.params)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            have = ", ".join(sorted(known)) or "none"
            raise TypeError(f"{self.name} got unknown parameter(s) {', '.join(unknown)}; its parameters are: {have}")
        return self.params(**kwargs)


@dataclass(frozen=True, kw_only=True)
class AttentionSpec(Spec):
    """An attention kernel: ``(q, k, v, *, params, is_causal, scale, return_lse) -> out``.

    Call it (``spec(q, k, v, kernel_size=7)``) to validate inputs, choose a backend and run.

    :param backends: implementations in priority order; the first that can run is chosen.
    :param causal: whether ``is_causal=True`` is supported.
    :param gqa: whether ``Hq`` may be a multiple of ``Hkv`` (GQA / MQA).
    :param onnx: whether some backend is ``traceable`` for ONNX export.
    :param spatial_dims: how many token axes ``q`` may have: ``(1,)`` for ``(B, H, T, D)``,
        ``(1, 2, 3)`` for kernels that also take ``(B, H, X, Y, D)`` and ``(B, H, X, Y, Z, D)``.
    :param mask: ``(params, q_shape, kv_shape, is_causal) -> bool tensor (Tq, Tk)`` building
        the allowed-keys mask by brute force, for specs whose semantics are "dense attention
        under a mask". The contract suite checks every backend against dense attention with it.
    :param input_mask: ``(params, q, k, is_causal) -> bool tensor (B|1, Hq|1, Tq, Tk)``, the
        same for specs whose allowed keys depend on the inputs' values (a selection by scores:
        top-k chunks, retrieved blocks), built by brute force from ``q (B, Hq, Tq, D)`` and
        ``k (B, Hkv, Tk, D)``. Declare ``mask`` or ``input_mask``, not both.
    :param contract_params: ``(seq_len) -> list[dict]`` parameter sets valid at that length
        that the contract suite runs with; default: ``[{}]``.
    :param validate: ``(params, q, k, v, is_causal) -> None`` raising ``ValueError`` when the
        parameters do not fit the inputs (a window larger than the sequence, say).
    :param bench: ``"module:function"`` run by ``attnkit bench <name>``.
    :param model_prefill: ``"module:function"``, ``(config, prompt_length) -> dict``: the
        parameters this kernel takes for the prefill of a ``prompt_length``-token prompt on a
        causal language model with Hugging Face ``config`` (``rope_theta``, window sizes scaled
        to the prompt ...). A spec declaring it is a long-context kernel: ``attnkit run``
        measures it in its prefill table. Raise ``ValueError`` (with the reason) for a length
        or model it does not apply to; lengths beyond ``config.max_position_embeddings`` are
        only asked of kernels meant to extrapolate.
    """

    kind: ClassVar[str] = "attention"

    backends: tuple[Backend, ...]
    causal: bool = True
    gqa: bool = True
    onnx: bool = True
    spatial_dims: tuple[int, ...] = (1,)
    mask: str | Callable[..., Any] | None = None
    input_mask: str | Callable[..., Any] | None = None
    contract_params: str | Callable[[int], list[dict[str, Any]]] | None = None
    validate: str | Callable[..., None] | None = None
    bench: str | None = None
    model_prefill: str | Callable[[Any, int], dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.backends:
            raise ValueError(f"spec {self.name!r} declares no backends")
        names = [b.name for b in self.backends]
        if len(set(names)) != len(names):
            raise ValueError(f"spec {self.name!r} declares duplicate backend names {names}")
        if self.mask is not None and self.input_mask is not None:
            raise ValueError(f"spec {self.name!r} declares both mask and input_mask; give the one that fits")

    @property
    def differentiable(self) -> bool:
        return any(b.differentiable for b in self.backends)

    def backend(self, name: str) -> Backend:
        for b in self.backends:
            if b.name == name:
                return b
        raise ValueError(
            f"{self.name} has no backend {name!r}; its backends are: {', '.join(b.name for b in self.backends)}"
        )

    def params_for_contract(self, seq_len: int) -> list[dict[str, Any]]:
        if self.contract_params is None:
            return [{}]
        return list(resolve(self.contract_params)(seq_len))

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        backend: str | None = None,
        is_causal: bool | tuple[bool, ...] = False,
        scale: float | None = None,
        return_lse: bool = False,
        mask: torch.Tensor | None = None,
        layout: str = "bhtd",
        params: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Run the kernel.

        :param q: ``(B, Hq, *S, D)`` where ``*S`` is ``T`` or the spatial axes.
        :param k: ``(B, Hkv, *S_kv, D)``.
        :param v: ``(B, Hkv, *S_kv, Dv)``.
        :param backend: force a backend by name; otherwise the first one that can run.
        :param is_causal: causal masking (a tuple gives one flag per spatial axis where the
            spec supports it).
        :param scale: softmax scale; default ``D ** -0.5``.
        :param return_lse: also return the log-sum-exp, shape ``(B, Hq, *S)``.
        :param mask: boolean "may attend" mask broadcastable to ``(B, Hq, Tq, Tk)``.
        :param layout: ``"bhtd"`` (default) or ``"bthd"`` for heads-last inputs and outputs.
        :returns: ``out`` of ``q``'s shape (with ``Dv``), or ``(out, lse)``.
        """
        from attnkit import tensors

        q, k, v = tensors.to_canonical(q, k, v, layout=layout)
        shapes = tensors.check_qkv(q, k, v, spatial_dims=self.spatial_dims, allow_gqa=self.gqa)
        is_causal = tensors.check_is_causal(is_causal, n_axes=shapes.n_spatial, supported=self.causal)
        scale = tensors.check_scale(scale, shapes.head_dim)
        return_lse = tensors.check_bool(return_lse, "return_lse")
        if mask is not None:
            mask = tensors.check_mask(mask, shapes)
        p = self.make_params(params, **kwargs)
        if self.validate is not None:
            resolve(self.validate)(p, q, k, v, is_causal)
        call = CallInfo(
            device=q.device,
            dtype=q.dtype,
            requires_grad=q.requires_grad or k.requires_grad or v.requires_grad,
            return_lse=bool(return_lse),
            has_mask=mask is not None,
            exporting=_is_exporting(),
            params=p,
            q_shape=tuple(q.shape),
        )
        chosen = choose(self, call, backend=backend)
        extra = {"mask": mask} if mask is not None else {}
        result = chosen.load()(q, k, v, params=p, is_causal=is_causal, scale=scale, return_lse=return_lse, **extra)
        if layout == "bhtd":
            return result
        if return_lse:
            out, lse = result
            return tensors.from_canonical(out, layout), tensors.lse_from_canonical(lse, layout)
        return tensors.from_canonical(result, layout)


@dataclass(frozen=True, kw_only=True)
class AttentionModuleSpec(Spec):
    """An attention module with its own projections, routing or state (MoH, KDGQA ...).

    :param factory: ``"module:Class"``; ``Class(config, params)`` builds the ``nn.Module``.
    :param from_pretrained: ``"module:function"`` building the module from an existing
        multi-head attention module (copying or pooling its weights), if supported.
    :param onnx: whether the module exports to ONNX in eval mode.
    :param reduction: ``"module:function"``; ``(config) -> (module, reference)`` gives the
        module in a configuration where the paper says it reduces to plain multi-head
        attention, and that :class:`~attnkit.modules.MultiHeadAttention` with equivalent
        weights. The contract suite checks the two agree.
    :param train_eval_differ: whether outputs legitimately differ between ``train()`` and
        ``eval()`` (dropout, noisy routing ...); otherwise the contract checks they agree.
    :param contract_params: ``"module:function"``; ``() -> list[dict]`` of parameter sets
        the contract suite builds the module with; default: ``[{}]``.
    :param bench: ``"module:function"`` run by ``attnkit bench <name>``.
    """

    kind: ClassVar[str] = "module"

    factory: str | Callable[..., Any]
    from_pretrained: str | Callable[..., Any] | None = None
    onnx: bool = True
    reduction: str | Callable[..., Any] | None = None
    train_eval_differ: bool = False
    contract_params: str | Callable[..., Any] | None = None
    bench: str | None = None


@dataclass(frozen=True, kw_only=True)
class KVCacheSpec(Spec):
    """A KV-cache policy. ``factory(params)`` returns a policy object.

    :param bench: ``"module:function"`` run by ``attnkit bench <name>``.
    """

    kind: ClassVar[str] = "cache"

    factory: str | Callable[..., Any]
    bench: str | None = None


@dataclass(frozen=True, kw_only=True)
class AnalysisSpec(Spec):
    """An analysis or intervention over run-time sites.

    :param sites: the capture / edit sites it needs (``"blocks.{l}.attn.hook_pattern"`` ...);
        only these pay for capture during a run.
    :param main_job: ``"module:function"`` run by ``attnkit run``:
        ``(job: attnkit.mainjob.JobContext) -> attnkit.mainjob.AnalysisOutcome`` (the analysis
        over the job's cases, with its tables and figures for the report).
    :param analyze: ``"module:function"`` run by ``attnkit analyze NAME``:
        ``(ctx: attnkit.analyze.AnalyzeContext) -> attnkit.analyze.AnalyzeOutcome``.
    :param default_model: the model ``attnkit analyze`` runs it on without ``--model``.
    :param models: the models it can run on (empty: any embedded model).
    """

    kind: ClassVar[str] = "analysis"

    factory: str | Callable[..., Any] | None = None
    sites: tuple[str, ...] = ()
    main_job: str | None = None
    analyze: str | Callable[..., Any] | None = None
    default_model: str = "smollm2"
    models: tuple[str, ...] = ()


S = TypeVar("S", bound=Spec, contravariant=True)


class Register(Protocol, Generic[S]):
    """The callback a registration hook receives: ``register(spec)``."""

    def __call__(self, spec: S) -> None: ...


def _is_exporting() -> bool:
    import torch

    try:
        if torch.compiler.is_exporting():
            return True
    except AttributeError:  # torch < 2.6
        pass
    onnx_check = getattr(torch.onnx, "is_in_onnx_export", None)
    return bool(onnx_check and onnx_check())


def spec_namespace(distribution: str | None) -> str | None:
    """The spec names distribution ``attnkit-<slug>`` owns, as ``<slug>`` (normalised like
    :func:`name_key`); ``None`` for a distribution outside that naming scheme.

    >>> spec_namespace("attnkit-Retrieval_Heads")
    'retrieval-heads'
    """
    if not distribution:
        return None
    norm = re.sub(r"[-_.]+", "-", distribution).lower()
    slug = norm.removeprefix("attnkit-")
    return slug if slug != norm and slug else None


def name_key(name: str) -> str:
    """``name`` as ownership compares it: lower case, ``-`` and ``_`` alike (``.`` separates
    a variant and stays)."""
    return re.sub(r"[-_]+", "-", name).lower()


def owns(distribution: str | None, name: str) -> bool:
    """Whether ``distribution`` (``attnkit-<slug>``) owns spec name ``name``: ``<slug>`` and
    ``<slug>.<variant>`` belong to it."""
    slug = spec_namespace(distribution)
    if slug is None:
        return False
    key = name_key(name)
    return key == slug or key.startswith(slug + ".")


class Registry:
    """Installed specs by name. Filled by :func:`attnkit.plugins.load_plugins`, which decides
    who may hold a name (see :func:`owns`); names two plugins claim without owning them are
    kept as *unavailable*, and looking one up raises with both distributions named."""

    def __init__(self) -> None:
        self._specs: dict[str, Spec] = {}
        self._unavailable: dict[str, str] = {}

    def add(self, spec: Spec) -> None:
        if not isinstance(spec, Spec):
            raise TypeError(f"register() takes a spec object, got {type(spec).__name__}")
        if spec.name in self._specs:
            other = self._specs[spec.name]
            raise ValueError(f"spec name {spec.name!r} is already registered by {other.plugin or 'another plugin'}")
        if spec.name in self._unavailable:
            raise ValueError(f"spec name {spec.name!r} is unavailable: {self._unavailable[spec.name]}")
        self._specs[spec.name] = spec

    def remove(self, spec: Spec) -> None:
        """Remove ``spec`` (this very object: a name since taken by another spec stays)."""
        if self._specs.get(spec.name) is spec:
            del self._specs[spec.name]

    def mark_unavailable(self, name: str, why: str) -> None:
        """Make ``name`` unavailable, ``get`` raising ``ValueError`` with ``why``."""
        self._unavailable[name] = why

    def unavailable(self) -> dict[str, str]:
        """Names that are unavailable, with the reason."""
        return dict(self._unavailable)

    def snapshot(self) -> tuple[dict[str, Spec], dict[str, str]]:
        """The registry's state, for :meth:`restore` (loading rolls back to it when interrupted)."""
        return dict(self._specs), dict(self._unavailable)

    def restore(self, state: tuple[dict[str, Spec], dict[str, str]]) -> None:
        self._specs, self._unavailable = dict(state[0]), dict(state[1])

    def remove_plugin(self, plugin: str) -> None:
        self._specs = {n: s for n, s in self._specs.items() if s.plugin != plugin}

    def clear(self) -> None:
        self._specs.clear()
        self._unavailable.clear()

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[Spec]:
        return iter(sorted(self._specs.values(), key=lambda s: s.name))

    def __len__(self) -> int:
        return len(self._specs)

    def get(self, name: str, kind: str | None = None) -> Any:
        """Return the spec called ``name``; unknown names list the available ones, and an
        unavailable name (a clash) says which distributions claim it."""
        spec = self._specs.get(name)
        if spec is None and name in self._unavailable:
            raise ValueError(f"spec name {name!r} is unavailable: {self._unavailable[name]}")
        if spec is None or (kind is not None and spec.kind != kind):
            pool = sorted(s.name for s in self._specs.values() if kind is None or s.kind == kind)
            what = f"{kind} spec" if kind else "spec"
            raise ValueError(f"unknown {what} {name!r}; available: {', '.join(pool) or 'none installed'}")
        return spec

    def of_kind(self, kind: str) -> list[Any]:
        return [s for s in self if s.kind == kind]

    def attention_specs(self) -> list[AttentionSpec]:
        return self.of_kind("attention")

    def module_specs(self) -> list[AttentionModuleSpec]:
        return self.of_kind("module")

    def cache_specs(self) -> list[KVCacheSpec]:
        return self.of_kind("cache")

    def analysis_specs(self) -> list[AnalysisSpec]:
        return self.of_kind("analysis")

    def for_plugin(self, plugin: str) -> list[Spec]:
        return [s for s in self if s.plugin == plugin]


registry = Registry()


def choose(spec: AttentionSpec, call: CallInfo, backend: str | None = None) -> Backend:
    """Pick the backend of ``spec`` that serves ``call``.

    Backends are tried in the spec's priority order; each one skipped is logged with its
    reason at DEBUG level. ``backend=`` forces one by name and raises ``RuntimeError`` with its
    reason if it cannot run. With nothing left, ``NotImplementedError`` lists every reason.
    """
    reason: str | None
    if backend is not None:
        chosen = spec.backend(backend)
        reason = chosen.reason_not_to_run(call)
        if reason is not None:
            raise RuntimeError(f"{spec.name}: backend {backend!r} cannot run this call: {reason}")
        return chosen
    reasons = []
    for b in spec.backends:
        if not b.auto:
            reason = "runs only when asked for by name (backend=...)"
            if call.exporting and b.traceable:
                reason = None
        else:
            reason = b.reason_not_to_run(call)
        if reason is None:
            logger.debug("%s: chose backend %r", spec.name, b.name)
            return b
        logger.debug("%s: skipped backend %r: %s", spec.name, b.name, reason)
        reasons.append(f"{b.name}: {reason}")
    raise NotImplementedError(
        f"{spec.name}: no backend can run on {call.device.type}/{str(call.dtype).removeprefix('torch.')}"
        f" (requires_grad={call.requires_grad}): "
        + "; ".join(reasons)
        + ". Set ATTNKIT_LOG_LEVEL=DEBUG to see each choice."
    )
