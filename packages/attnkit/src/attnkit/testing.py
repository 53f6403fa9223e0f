"""Test helpers, yours and attnkit's: small seeded models, a word-level tokenizer, and a
non-dense attention spec the core's tests register for a while; nothing is downloaded.

- :func:`tiny_causal_lm`: a 2-layer transformers causal LM, randomly initialised.
- :class:`WordTokenizer`: one id per word, enough for prompt-building code
  (:mod:`attnkit.data.needles`) without a real tokenizer.
- :data:`BAND`: ``testing.band``, local-window attention (every key within ``window``
  positions), with a brute-force mask (:func:`band_brute_force_mask`) and a plain-torch
  backend (:func:`band_reference`); :func:`registered_specs` registers it for one test, so
  the core's tests of "any kernel" code paths need no plugin installed.

Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator
from typing import Any

from attnkit.hookspecs import hookimpl
from attnkit.registry import AttentionSpec, Backend, Spec

__all__ = [
    "BAND",
    "SELF_ONLY",
    "TINY_VOCAB",
    "BandParams",
    "WordTokenizer",
    "band_brute_force_mask",
    "band_reference",
    "registered_specs",
    "tiny_causal_lm",
    "torch_threads",
]

TINY_VOCAB = 97


@contextlib.contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run a block (or, as a decorator, a function) with ``n`` intra-op torch threads, and
    restore the count after: tiny test models gain nothing from threads, and on a loaded
    machine spinning OpenMP workers make each small matmul many times slower."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def tiny_causal_lm(impl: str = "sdpa", seed: int = 0, model_type: str = "llama") -> Any:
    """A 2-layer transformers causal LM (hidden 64, 4 query / 2 KV heads, head dim 16, vocab
    :data:`TINY_VOCAB`) in float32 eval mode.

    :param impl: transformers attention implementation (``"sdpa"``, ``"eager"``).
    :param model_type: ``"llama"``, ``"mistral"`` or ``"qwen2"``.
    """
    import torch
    import transformers

    torch.manual_seed(seed)
    kwargs: dict[str, Any] = {
        "vocab_size": TINY_VOCAB,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
    }
    model: Any
    if model_type == "mistral":
        model = transformers.MistralForCausalLM(transformers.MistralConfig(**kwargs, sliding_window=None))
    elif model_type == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kwargs))
    elif model_type == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs))
    else:
        raise ValueError(f"model_type must be 'llama', 'mistral' or 'qwen2', got {model_type!r}")
    model.set_attn_implementation(impl)
    return model.eval()


class WordTokenizer:
    """Deterministic word-level tokenizer: one id per word, punctuation mark or newline (a
    leading space changes nothing), ids given out in order of first appearance; no chat
    template, no special tokens.

    It has the two calls prompt builders use, ``tok(text, add_special_tokens=False)`` and
    ``tok.decode(ids)``, so token counts are word counts and a test can say exactly where a
    phrase lands.
    """

    chat_template = None
    eos_token_id = None

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}
        self.inverse: dict[int, str] = {}

    def _id(self, word: str) -> int:
        if word not in self.vocab:
            self.vocab[word] = len(self.vocab)
            self.inverse[self.vocab[word]] = word
        return self.vocab[word]

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        """``{"input_ids": [...]}`` for ``text``, like a Hugging Face tokenizer."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return {"input_ids": [self._id(w) for w in re.findall(r"\w+|[^\w\s]|\n", text)]}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """The words of ``ids`` joined by spaces (``?`` for an id never given out)."""
        return " ".join(self.inverse.get(i, "?") for i in ids)


# ---------------------------------------------------------------------------------------------
# testing.band: a non-dense attention spec for tests
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BandParams:
    """Parameters of ``testing.band``.

    :param window: how far a query may look, in positions, on each side: query ``i`` sees key
        ``j`` when ``|i - j| <= window`` (and ``j <= i`` when causal); ``window >= T - 1`` is
        dense attention. At least 1, like the int parameters of real kernels (the contract
        suite's bad-input check expects 0 to be refused).
    """

    window: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window must be an int >= 1, got {self.window!r}")


def band_brute_force_mask(
    params: BandParams, q_shape: tuple[int, ...], kv_shape: tuple[int, ...], is_causal: bool
) -> Any:
    """``(Tq, Tk)`` bool "may attend" mask of ``testing.band``, one entry at a time.

    Queries are the last ``Tq`` of the ``Tk`` positions (bottom-right aligned, like
    :func:`attnkit.reference.causal_mask`), so decoding after a cache gives the same rows as
    the full square.

    :param q_shape: ``(B, Hq, Tq, D)``.
    :param kv_shape: ``(B, Hkv, Tk, D)``.
    """
    import torch

    tq, tk = q_shape[2], kv_shape[2]
    allowed = torch.zeros(tq, tk, dtype=torch.bool)
    for i in range(tq):
        at = i + tk - tq  # the query's position among the keys
        for j in range(tk):
            allowed[i, j] = abs(at - j) <= params.window and (j <= at or not is_causal)
    return allowed


def band_reference(q, k, v, *, params: BandParams, is_causal: bool, scale: float, return_lse: bool, mask=None):  # type: ignore[no-untyped-def]
    """Backend of ``testing.band``: dense :func:`attnkit.reference.attention` under the band.

    The band is built with tensor arithmetic here, not with :func:`band_brute_force_mask`, so
    a test comparing the two checks one against the other.

    :param q: ``(B, Hq, Tq, D)``; ``k`` / ``v``: ``(B, Hkv, Tk, D)``.
    :param mask: optional "may attend" mask broadcastable to ``(B, Hq, Tq, Tk)``, ANDed in.
    """
    import torch

    from attnkit.reference import attention

    tq, tk = q.shape[-2], k.shape[-2]
    at = torch.arange(tq, device=q.device)[:, None] + (tk - tq)
    allowed = (at - torch.arange(tk, device=q.device)[None, :]).abs() <= params.window
    if mask is not None:
        allowed = mask & allowed
    return attention(q, k, v, mask=allowed, is_causal=is_causal, scale=scale, return_lse=return_lse)


def _band_contract_params(seq_len: int) -> list[dict[str, Any]]:
    return [{"window": 1}, {"window": max(1, seq_len - 1)}]


BAND = AttentionSpec(
    name="testing.band",
    description="Test-only local-window attention: keys within `window` positions (attnkit.testing).",
    params=BandParams,
    backends=(
        Backend(
            name="reference",
            impl=band_reference,
            supports_mask=True,
            traceable=True,
            description="attnkit.reference.attention under the band mask, float32/float64",
        ),
    ),
    mask=band_brute_force_mask,
    contract_params=_band_contract_params,
)


def _same_tokens(params: BandParams, q: Any, k: Any, v: Any, is_causal: Any) -> None:
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"testing.selfonly is self-attention: q has {q.shape[2]} tokens, k has {k.shape[2]}")


#: ``testing.selfonly``: :data:`BAND` restricted to as many queries as keys, like kernels
#: defined over one token grid (neighborhood, SF-Attn): it cannot decode after a prompt.
SELF_ONLY = dataclasses.replace(BAND, name="testing.selfonly", validate=_same_tokens)


class _SpecsPlugin:
    """A plugin object registering a fixed list of specs through the ordinary hooks."""

    def __init__(self, specs: tuple[Spec, ...]) -> None:
        self.specs = specs

    def _register(self, register: Any, kinds: tuple[str, ...]) -> None:
        for spec in self.specs:
            if spec.kind in kinds:
                register(spec)

    @hookimpl
    def attnkit_register_attention(self, register: Any) -> None:
        self._register(register, ("attention", "module"))

    @hookimpl
    def attnkit_register_caches(self, register: Any) -> None:
        self._register(register, ("cache",))

    @hookimpl
    def attnkit_register_analyses(self, register: Any) -> None:
        self._register(register, ("analysis",))


@contextlib.contextmanager
def registered_specs(*specs: Spec, name: str = "attnkit-testing") -> Iterator[tuple[Spec, ...]]:
    """Register ``specs`` (default: :data:`BAND`) as plugin ``name`` for the ``with`` block,
    through :func:`attnkit.plugins.register_plugin`, and unregister them on exit.

    >>> with registered_specs() as (band,):  # doctest: +SKIP
    ...     out = attnkit.attention(q, k, v, spec=band.name, window=3)

    :param specs: spec objects; attention and module specs go through
        ``attnkit_register_attention``, caches and analyses through their hooks.
    :param name: the plugin name (it must not be registered already).
    :returns: the registered specs as the registry holds them (plugin and version filled in).
    :raises TypeError: for an argument that is not a spec.
    :raises ValueError: when registration fails (a spec name already taken, say), with the
        registry's reason.
    """
    from attnkit.plugins import load_plugins, register_plugin, unregister_plugin
    from attnkit.registry import registry

    specs = specs or (BAND,)
    for spec in specs:
        if not isinstance(spec, Spec):
            raise TypeError(f"specs must be spec objects, got {type(spec).__name__}")
    # Installed plugins first: a name clash then fails here, on ours, and never marks an
    # installed plugin broken.
    load_plugins()
    info = register_plugin(_SpecsPlugin(specs), name=name, distribution=name, version="0")
    if info.error is not None:
        unregister_plugin(name)
        raise ValueError(f"registering {', '.join(s.name for s in specs)} as {name!r} failed: {info.error}")
    try:
        yield tuple(registry.get(s.name) for s in specs)
    finally:
        unregister_plugin(name)
