"""The transformers adapter: :func:`patch` routes every attention layer of a Hugging Face
model through an attnkit attention spec, a KV-cache policy and run-time analyses.

transformers looks attention up by name in ``AttentionInterface`` and builds the mask with
the function of the same name in ``AttentionMaskInterface``; both get ``"attnkit"``
(registering only the first would silently lose causal masking). The mask function is
transformers' SDPA one: a boolean "may attend" mask, or ``None`` when the mask is plain
causal / full, so kernels without explicit-mask support run with ``is_causal`` instead.

>>> import attnkit
>>> from attnkit.models import load
>>> model, tok = load("smollm2")  # doctest: +SKIP
>>> with attnkit.patch(model, attention="dense") as run:  # doctest: +SKIP
...     out = model.generate(**tok("Hi", return_tensors="pt"), max_new_tokens=4)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attnkit.runtime.run import Run

__all__ = ["ATTN_NAME", "FAMILIES", "Session", "attention_layers", "decode_reason", "patch"]

ATTN_NAME = "attnkit"

#: ``config.model_type`` values per supported family.
FAMILIES: dict[str, tuple[str, ...]] = {
    "llama": ("llama", "mistral", "qwen2"),
    "bert": ("bert",),
}


@dataclass(frozen=True)
class Layers:
    """Where a model's blocks and their attention modules are."""

    family: str
    blocks: list[nn.Module]
    attention: list[nn.Module]
    #: per block, the module whose output is ``hook_attn_out`` / ``hook_mlp_out``: the
    #: attention's and the MLP's output projection, before the residual add (and before BERT's
    #: dropout + LayerNorm, which fold the residual in)
    attn_out: list[nn.Module] = field(default_factory=list)
    mlp_out: list[nn.Module] = field(default_factory=list)


def attention_layers(model: nn.Module) -> Layers:
    """The transformer blocks and attention modules of ``model``, first layer first.

    :raises NotImplementedError: for an architecture outside :data:`FAMILIES`.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    supported = ", ".join(f"{fam} ({', '.join(types)})" for fam, types in FAMILIES.items())
    if model_type in FAMILIES["llama"]:
        base = getattr(model, "model", model)
        blocks = list(getattr(base, "layers", []))
        return Layers(
            "llama", blocks, [b.self_attn for b in blocks], [b.self_attn for b in blocks], [b.mlp for b in blocks]
        )
    if model_type in FAMILIES["bert"]:
        base = getattr(model, "bert", model)
        blocks = list(base.encoder.layer)
        return Layers(
            "bert",
            blocks,
            [b.attention.self for b in blocks],
            [b.attention.output.dense for b in blocks],
            [b.output.dense for b in blocks],
        )
    raise NotImplementedError(
        f"attnkit.patch does not support model_type={model_type!r} ({type(model).__name__}); supported families: {supported}"
    )


def decode_reason(spec: Any, params: Any) -> str | None:
    """Why ``spec`` cannot attend with one query over several keys (a decode step after a
    prompt), or ``None`` when it can: its own validation of a ``(1, 1, 1, 8)`` query against 4
    keys, causal. Kernels defined only for self-attention over one token grid (neighborhood,
    SF-Attn) say so here, so :func:`patch` refuses to generate with them up front."""
    import torch

    from attnkit import tensors
    from attnkit.registry import resolve

    q = torch.zeros(1, 1, 1, 8)
    k = v = torch.zeros(1, 1, 4, 8)
    try:
        tensors.check_qkv(q, k, v, spatial_dims=spec.spatial_dims, allow_gqa=spec.gqa)
        if spec.validate is not None:
            resolve(spec.validate)(params, q, k, v, True)
    except (ValueError, TypeError) as exc:
        return f"{spec.name} cannot decode (one query over several keys): {exc}"
    return None


def _register_with_transformers() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_NAME, _attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


def _attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; dispatches to the module's session."""
    state = getattr(module, "_attnkit", None)
    if state is None:
        raise RuntimeError(
            f"{type(module).__name__} runs attn_implementation={ATTN_NAME!r} outside attnkit.patch(); "
            "use the context manager (it sets and restores the implementation)"
        )
    session, layer, patched = state
    if not patched:  # a layer left out with ``layers=``: transformers' own SDPA attention
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        cache = session._cache_for(key)
        if cache is not None:
            # the cache's slots are not in token order and may be empty: give SDPA the cache's
            # own mask, always materialised (SDPA's is_causal would be top-left aligned)
            from attnkit.cache.attention import cache_attention_mask

            if attention_mask is not None and attention_mask.dtype != torch.bool:
                attention_mask = attention_mask == 0
            cache.observe(layer, query, scaling if scaling is not None else query.shape[-1] ** -0.5, attention_mask)
            attention_mask = cache_attention_mask(
                cache, layer, query.shape[2], key.shape[2], attention_mask, q_heads=query.shape[1], materialize=True
            )
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    return session.attend(layer, module, query, key, value, attention_mask, scaling, dropout), None


class Session:
    """What :func:`patch` yields: the patched model's attention, cache policy and run.

    :ivar run: the current :class:`~attnkit.runtime.run.Run` (analyses, phase, step).
    :ivar layers: the model's blocks and attention modules.
    """

    def __init__(
        self,
        model: nn.Module,
        attention: Any = "dense",
        attention_params: Mapping[str, Any] | None = None,
        backend: str | None = None,
        cache: Any = None,
        cache_params: Mapping[str, Any] | None = None,
        cache_compress: str = "always",
        cache_rerotate: bool = False,
        analyses: Sequence[Any] = (),
        layers: Sequence[int] | None = None,
    ) -> None:
        from attnkit import get_spec
        from attnkit.registry import AttentionSpec

        self.model = model
        self.layers = attention_layers(model)
        n = len(self.layers.attention)
        self.spec = get_spec(attention, "attention") if isinstance(attention, str) else attention
        if not isinstance(self.spec, AttentionSpec):
            raise TypeError(f"attention must be an attention spec or its name, got {type(attention).__name__}")
        self.params = self.spec.make_params(**dict(attention_params or {}))
        self.backend = backend
        if layers is None:
            self.patched_layers = set(range(n))
        else:
            if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
                raise TypeError(f"layers must be a sequence of block indices, got {type(layers).__name__}")
            layers = list(layers)
            # bool is an int subclass: layers=[True] must not mean block 1.
            bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n]
            if bad:
                raise ValueError(f"layers must be block indices in [0, {n}), got {bad}")
            self.patched_layers = set(layers)
        self.cache_policy = cache
        self.cache_params = dict(cache_params or {})
        from attnkit.cache.policy import COMPRESS_MODES

        if cache_compress not in COMPRESS_MODES:
            raise ValueError(f"cache_compress must be one of {COMPRESS_MODES}, got {cache_compress!r}")
        self.cache_compress = cache_compress
        if not isinstance(cache_rerotate, bool):
            raise TypeError(f"cache_rerotate must be a bool, got {type(cache_rerotate).__name__}")
        self.cache_rerotate = cache_rerotate
        if cache is None and (cache_compress != "always" or cache_rerotate):
            raise ValueError("cache_compress / cache_rerotate were given without cache=: name the policy")
        if cache is None and self.cache_params:
            raise ValueError(f"cache_params {sorted(self.cache_params)} were given without cache=: name the policy")
        #: Why the spec cannot attend with fewer queries than keys (a decode step), or None.
        self.decode_reason = decode_reason(self.spec, self.params) if self.layers.family == "llama" else None
        if cache is not None:
            if self.layers.family != "llama":
                raise ValueError(
                    f"cache= applies to decoder models (Llama family); {type(model).__name__} is a "
                    f"{self.layers.family} encoder, which keeps no KV cache"
                )
            if self.decode_reason is not None:
                raise ValueError(f"cache={cache!r} needs decode steps, but {self.decode_reason}")
            self._make_policy()  # fail on a bad policy name or parameters now, not mid-generate
        self.analyses = list(analyses)
        self.run = Run(n_layers=n, analyses=self.analyses)
        self.current_cache: Any = None
        self.results: dict[str, Any] = {}
        self._handles: list[Any] = []
        self._saved: dict[str, Any] = {}

    # -- cache ------------------------------------------------------------------------
    def _make_policy(self) -> Any:
        from attnkit import get_spec
        from attnkit.registry import KVCacheSpec, resolve

        policy = self.cache_policy
        if isinstance(policy, str):
            policy = get_spec(policy, "cache")
        if isinstance(policy, KVCacheSpec):
            built = resolve(policy.factory)(policy.make_params(**self.cache_params))
        elif self.cache_params:
            raise ValueError("cache_params only apply when cache is a policy name or KVCacheSpec")
        else:
            built = policy
        if self.cache_compress != "always":
            built.compress = self.cache_compress
        if self.cache_rerotate:
            built.rerotate = True
        return built

    def new_cache(self) -> Any:
        """A fresh transformers ``Cache`` running this session's policy (``None`` without one)."""
        if self.cache_policy is None:
            return None
        from attnkit.cache import AttnkitCache

        return AttnkitCache(self._make_policy(), config=self.model.config)

    # -- install / remove ---------------------------------------------------------------
    def install(self) -> None:
        if getattr(self.model, "_attnkit_session", None) is not None:
            raise RuntimeError("this model is already patched by attnkit; leave the other patch() first")
        _register_with_transformers()
        self._saved["attn"] = self.model.config._attn_implementation
        self.model._attnkit_session = self  # type: ignore[assignment]
        for i, module in enumerate(self.layers.attention):
            module._attnkit = (self, i, i in self.patched_layers)  # type: ignore[assignment]
        try:
            self._set_impl(ATTN_NAME)
            self._handles.append(self.model.register_forward_pre_hook(self._on_forward, with_kwargs=True))
            if self.run.sites:
                self._install_site_hooks()
            if hasattr(self.model, "generate") and (self.cache_policy is not None or self.decode_reason):
                self._wrap_generate()
        except BaseException:
            self.remove()
            raise

    def _set_impl(self, name: str) -> None:
        setter = getattr(self.model, "set_attn_implementation", None)
        if callable(setter):
            setter(name)
        else:  # pragma: no cover - transformers < 4.48
            self.model.config._attn_implementation = name

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for module in self.layers.attention:
            if hasattr(module, "_attnkit"):
                del module._attnkit
        if "generate" in self._saved:
            del self.model.generate
        if "attn" in self._saved:
            self._set_impl(self._saved["attn"])
        self._saved.clear()
        if getattr(self.model, "_attnkit_session", None) is self:
            del self.model._attnkit_session

    def _wrap_generate(self) -> None:
        original = self.model.generate
        self._saved["generate"] = original

        import transformers
        from packaging.version import Version

        # transformers 5 renamed generate's past_key_values= to cache=.
        keyword = "cache" if Version(transformers.__version__).major >= 5 else "past_key_values"

        def generate(*args: Any, **kwargs: Any) -> Any:
            if self.decode_reason is not None:
                # Refuse before the prompt's prefill, not after it at the first decode step.
                raise ValueError(f"model.generate under attnkit.patch: {self.decode_reason}")
            if self.cache_policy is not None and kwargs.get("cache") is None and kwargs.get("past_key_values") is None:
                kwargs[keyword] = self.new_cache()
            return original(*args, **kwargs)

        self.model.generate = generate  # type: ignore[method-assign]

    def _install_site_hooks(self) -> None:
        run = self.run
        for i, block in enumerate(self.layers.blocks):
            if f"blocks.{i}.hook_resid_pre" in run.sites:
                self._handles.append(block.register_forward_pre_hook(_resid_pre(run, i), with_kwargs=True))
            if f"blocks.{i}.hook_resid_post" in run.sites:
                self._handles.append(block.register_forward_hook(_output_site(run, "hook_resid_post", i)))
            for site, modules in (("hook_attn_out", self.layers.attn_out), ("hook_mlp_out", self.layers.mlp_out)):
                if f"blocks.{i}.{site}" in run.sites:
                    self._handles.append(modules[i].register_forward_hook(_output_site(run, site, i)))
        if "logits" in run.sites:
            self._handles.append(self.model.register_forward_hook(_logits(run)))

    def _on_forward(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Before each model forward: phase, step, positions and padding mask of the run; the cache in use."""
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        self.current_cache = cache
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        run = self.run
        # No int() of the token count: under torch.export that would specialise the sequence axis.
        if past == 0:
            run.phase, run.step = "prefill", 0
        else:
            run.phase, run.step = ("decode" if ids is not None and ids.shape[1] == 1 else "prefill"), run.step + 1
        positions = kwargs.get("cache_position")
        if positions is None and ids is not None and ids.dim() >= 2:
            positions = torch.arange(ids.shape[1], device=ids.device) + past
        run.positions = positions
        mask = kwargs.get("attention_mask")
        # Only the caller's 2-D padding mask (B, past + T); a prepared 4-D mask is transformers' own.
        run.attention_mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    # -- attention ---------------------------------------------------------------------
    def attend(
        self,
        layer: int,
        module: nn.Module,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        scaling: float | None,
        dropout: float,
    ) -> torch.Tensor:
        """``q (B, Hq, Tq, D)``, ``k, v (B, Hkv, Tk, D)`` (post-RoPE, after the cache update)
        to ``(B, Tq, Hq, D)`` as transformers expects."""
        if dropout and module.training:
            raise ValueError(f"attnkit kernels do not apply attention dropout; got dropout={dropout} in training mode")
        run = self.run
        cache = self._cache_for(k)  # before any edit replaces k: the lookup is by identity
        if cache is not None and run.wants_any(("hook_k", "hook_v"), layer):
            # the cache reuses slots in place: what an analysis keeps must not change later
            k, v = k.clone(), v.clone()
        q = run.visit("hook_q", layer, q)
        k = run.visit("hook_k", layer, k)
        v = run.visit("hook_v", layer, v)
        if mask is not None and mask.dtype != torch.bool:
            # An additive float mask (another mask function produced it): 0 = attend.
            mask = mask == 0
        explicit = run.wants_any(("hook_scores", "hook_pattern"), layer)
        fused = None
        if cache is not None:
            from attnkit.cache.attention import cache_attention_mask

            # Every policy observes: padding is learnt from the mask's new columns, H2O-like
            # policies score, and eviction happens now (the keys of this step stay valid). With
            # dense attention a scoring policy hands back the output it computed while scoring.
            scale = scaling if scaling is not None else q.shape[-1] ** -0.5
            plain = self.spec.name == "dense" and not explicit and not run.edits_any(("hook_k", "hook_v"), layer)
            fused = cache.observe(layer, q, scale, mask, attend=plain)
            # transformers' mask is right only for the new tokens (its last Tq columns), and it
            # is sized by layer 0 while ragged layers hold more slots: the cache masks the rest.
            mask = cache_attention_mask(cache, layer, q.shape[2], k.shape[2], mask, q_heads=q.shape[1])
        # Causal modules always pass is_causal (for a prompt): transformers' mask already holds
        # causality when it is materialised (padding, or always while tracing), and ANDing it
        # again is a no-op for dense attention, but a kernel such as causal neighborhood
        # attention places its window differently when told the attention is causal.
        is_causal = bool(getattr(module, "is_causal", False)) and bool(q.shape[2] > 1)
        if fused is not None:
            z = fused
        elif explicit and run.edits_any(("hook_scores", "hook_pattern"), layer):
            pattern = self._pattern(layer, q, k, mask, is_causal, scaling, run)
            b, hq, tq, tk = pattern.shape
            hkv = k.shape[1]
            z = torch.matmul(pattern.reshape(b, hkv, hq // hkv, tq, tk), v.unsqueeze(2)).reshape(b, hq, tq, -1)
        else:
            extra: dict[str, Any] = {"mask": mask} if mask is not None else {}
            z = self.spec(
                q, k, v, backend=self.backend, is_causal=is_causal, scale=scaling, params=self.params, **extra
            )
            if explicit:  # capture only: the kernel's output stands, the pattern is recomputed
                self._pattern(layer, q, k, mask, is_causal, scaling, run)
        z = run.visit("hook_z", layer, z)
        return z.transpose(1, 2).contiguous()

    def _pattern(
        self,
        layer: int,
        q: torch.Tensor,
        k: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
        scaling: float | None,
        run: Run,
    ) -> torch.Tensor:
        """``(B, Hq, Tq, Tk)`` pattern, scores and softmax computed step by step (sites
        ``hook_scores`` then ``hook_pattern``) so analyses can see and edit them. Follows the
        spec's own mask definition, so the pattern is the kernel's pattern."""
        from attnkit.reference.dense import causal_mask
        from attnkit.registry import resolve

        b, hq, tq, d = q.shape
        hkv, tk = k.shape[1], k.shape[2]
        g = hq // hkv
        scale = scaling if scaling is not None else d**-0.5
        scores = torch.matmul(q.reshape(b, hkv, g, tq, d), k.unsqueeze(2).transpose(-1, -2)) * scale
        scores = scores.reshape(b, hq, tq, tk)
        allowed = torch.ones(1, 1, tq, tk, dtype=torch.bool, device=q.device)
        if mask is not None:
            allowed = allowed & mask
        if is_causal:
            allowed = allowed & causal_mask(tq, tk, device=q.device)
        if self.spec.name != "dense":
            if self.spec.mask is not None:
                spec_mask = resolve(self.spec.mask)(self.params, tuple(q.shape), tuple(k.shape), is_causal)
            elif self.spec.input_mask is not None:
                spec_mask = resolve(self.spec.input_mask)(self.params, q, k, is_causal)
            else:
                raise ValueError(
                    f"hook_scores / hook_pattern need the attention pattern of spec {self.spec.name!r}, "
                    "which does not define its attention as a mask over dense scores "
                    "(AttentionSpec.mask or input_mask)"
                )
            allowed = allowed & spec_mask.to(q.device)
        # in place: the product above is this function's own tensor, and (T, T) copies per head
        # are what every-layer capture pays for
        scores.masked_fill_(~allowed, float("-inf"))
        scores = run.visit("hook_scores", layer, scores)
        work = torch.promote_types(scores.dtype, torch.float32)  # float32 at least, float64 stays
        pattern = torch.softmax(scores.to(work), dim=-1).nan_to_num_(0.0).to(q.dtype)  # empty rows -> 0
        return run.visit("hook_pattern", layer, pattern)

    def _cache_for(self, key: torch.Tensor) -> Any:
        """The attnkit cache whose last ``update`` returned ``key`` (transformers does not pass
        the cache to attention functions), else the one given to this forward call."""
        from attnkit.cache.hf import AttnkitCache, active_cache

        found = active_cache(key)
        if found is not None:
            return found[0]
        return self.current_cache if isinstance(self.current_cache, AttnkitCache) else None

    def finish(self) -> dict[str, Any]:
        self.results = self.run.finish()
        return self.results


def _first(output: Any) -> Any:
    return output[0] if isinstance(output, tuple) else output


def _resid_pre(run: Run, layer: int) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            new = run.visit("hook_resid_pre", layer, args[0])
            return (new, *args[1:]), kwargs
        if "hidden_states" in kwargs:
            kwargs = {**kwargs, "hidden_states": run.visit("hook_resid_pre", layer, kwargs["hidden_states"])}
            return args, kwargs
        return None

    return hook


def _output_site(run: Run, site: str, layer: int) -> Any:
    """Forward hook visiting ``site`` with a module's output (its first element for a tuple)."""

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        hidden = _first(output)
        new = run.visit(site, layer, hidden)
        if new is hidden:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook


def _logits(run: Run) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        logits = getattr(output, "logits", None)
        if logits is None:
            return None
        new = run.visit("logits", None, logits)
        if new is not logits:
            output.logits = new
        return None

    return hook


@contextlib.contextmanager
def patch(
    model: nn.Module,
    attention: Any = "dense",
    *,
    attention_params: Mapping[str, Any] | None = None,
    backend: str | None = None,
    cache: Any = None,
    cache_params: Mapping[str, Any] | None = None,
    cache_compress: str = "always",
    cache_rerotate: bool = False,
    analyses: Sequence[Any] = (),
    layers: Sequence[int] | None = None,
) -> Iterator[Session]:
    """Run ``model`` (a transformers Llama- or BERT-family model) with attnkit attention.

    :param attention: attention spec (name or object) every patched layer runs.
    :param attention_params: that spec's parameters (``{"kernel_size": 63}`` ...).
    :param backend: force a backend of the spec.
    :param cache: KV-cache policy (name, :class:`~attnkit.KVCacheSpec` or policy object);
        ``model.generate`` then gets a fresh :class:`attnkit.cache.AttnkitCache` per call
        unless ``past_key_values`` is passed. Use :meth:`Session.new_cache` for ``forward``.
    :param cache_params: the policy's parameters (``{"budget": 0.25}`` ...).
    :param cache_compress: when the budget applies: ``"always"`` (after every forward: an
        appended question and the answer are evicted like the context) or ``"prompt"`` (the
        first forward, the context, is compressed once and what follows is kept: compress a
        context, then ask it questions, as kvpress does).
    :param cache_rerotate: re-rotate kept keys to contiguous positions (StreamingLLM's
        position shift), so distances stay inside the cache's size and a model can run past
        its ``max_position_embeddings`` with a bounded cache; needs plain RoPE.
    :param analyses: run-time plugins (objects with ``attnkit_sites`` / ``attnkit_capture`` /
        ``attnkit_edit`` hook implementations); only their sites are computed.
    :param layers: patch only these block indices (others keep transformers' attention).
    :yields: the :class:`Session`; ``session.results`` holds each analysis' ``result()``
        after the block.
    :raises NotImplementedError: for an unsupported architecture, naming the supported ones.
    """
    session = Session(
        model,
        attention,
        attention_params=attention_params,
        backend=backend,
        cache=cache,
        cache_params=cache_params,
        cache_compress=cache_compress,
        cache_rerotate=cache_rerotate,
        analyses=analyses,
        layers=layers,
    )
    session.install()
    try:
        yield session
    finally:
        session.remove()
        session.finish()
