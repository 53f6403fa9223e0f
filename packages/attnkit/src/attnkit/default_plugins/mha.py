"""Built-in module spec ``mha``: multi-head (GQA) self-attention running any attention kernel.

Imported at plugin load, so torch is imported only inside the functions the spec names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from attnkit.hookspecs import hookimpl
from attnkit.registry import AttentionModuleSpec

if TYPE_CHECKING:
    from attnkit.modules import ModuleConfig, MultiHeadAttention

__all__ = ["MHA", "MHAParams", "build", "contract_params", "from_pretrained", "reduction"]


@dataclass(frozen=True)
class MHAParams:
    """Parameters of the ``mha`` module spec.

    :param kernel: name of the attention kernel spec the module runs (``"dense"`` ...).
    :param kernel_params: that kernel's parameters (``{"kernel_size": 7}`` ...); checked
        against the kernel spec here, so a typo fails when the parameters are built.
    """

    kernel: str = "dense"
    kernel_params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.kernel, str) or not self.kernel:
            raise TypeError(f"mha: kernel must be the name of an attention spec, got {self.kernel!r}")
        if not isinstance(self.kernel_params, Mapping):
            raise TypeError(f"mha: kernel_params must be a dict, got {type(self.kernel_params).__name__}")
        bad = [k for k in self.kernel_params if not isinstance(k, str)]
        if bad:
            raise TypeError(f"mha: kernel_params keys must be parameter names (str), got {bad!r}")
        # A private copy: the caller's dict may change after the module is built.
        object.__setattr__(self, "kernel_params", dict(self.kernel_params))
        from attnkit import get_spec

        # Unknown kernels raise ValueError listing the installed ones; bad kernel parameters
        # raise the kernel's own ValueError/TypeError naming the parameter.
        get_spec(self.kernel, "attention").make_params(**self.kernel_params)


def build(config: ModuleConfig, params: MHAParams) -> MultiHeadAttention:
    """The ``mha`` factory: a :class:`~attnkit.modules.MultiHeadAttention` for ``config``."""
    from attnkit.modules import MultiHeadAttention

    return MultiHeadAttention(config, kernel=params.kernel, kernel_params=dict(params.kernel_params))


def from_pretrained(source: MultiHeadAttention, params: MHAParams) -> MultiHeadAttention:
    """A module of the same shape as ``source`` with its weights copied (not shared), running
    ``params.kernel``: the way to swap the attention kernel of a trained layer.

    :raises ValueError: ``source`` has parameters this module does not (a subclass with
        extra state), so copying would silently drop them.
    """
    module = build(source.config, params)
    first = next(source.parameters(), None)
    if first is not None:
        module = module.to(device=first.device, dtype=first.dtype)
    state = source.state_dict()
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"mha.from_pretrained: source state does not match a MultiHeadAttention of config {source.config}; "
            f"missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    module.train(source.training)
    return module


def reduction(config: ModuleConfig) -> tuple[MultiHeadAttention, MultiHeadAttention]:
    """``mha`` with the dense kernel *is* multi-head attention: the module and a plain
    :class:`~attnkit.modules.MultiHeadAttention` holding the same weights."""
    from attnkit.modules import MultiHeadAttention

    module = build(config, MHAParams())
    reference = MultiHeadAttention(config, kernel="dense")
    reference.load_state_dict(module.state_dict())
    return module, reference


def contract_params() -> list[dict[str, Any]]:
    """Parameter sets the module contract builds ``mha`` with."""
    return [{}]


MHA = AttentionModuleSpec(
    name="mha",
    description="Multi-head / grouped-query self-attention with q/k/v/o projections, running any attention kernel.",
    params=MHAParams,
    factory="attnkit.default_plugins.mha:build",
    from_pretrained="attnkit.default_plugins.mha:from_pretrained",
    reduction="attnkit.default_plugins.mha:reduction",
    contract_params="attnkit.default_plugins.mha:contract_params",
)


@hookimpl
def attnkit_register_attention(register):  # type: ignore[no-untyped-def]
    register(MHA)
