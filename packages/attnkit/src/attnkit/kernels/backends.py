"""The usual backend set of a kernel spec, declared in one call (light: no torch import).

A kernel plugin lays its backends out as ``<package>.cpu`` (numba), ``.gpu`` (Triton, with
its :class:`~attnkit.kernels.gpu.TritonKernels` as ``TRITON``), ``.reference``, ``.flex`` and
``.onnx``, each exposing the same function name.
:func:`standard_backends` declares them with the flags every plugin would otherwise repeat::

    NEIGHBORHOOD = AttentionSpec(
        name="neighborhood",
        ...,
        backends=standard_backends(
            "attnkit_neighborhood",
            "neighborhood_attention",
            numba="tiled numba CPU kernel, forward and backward",
            triton="Triton kernel, forward and backward",
            reference="plain torch gather of each query's window",
            flex="torch.compile(flex_attention) with the equivalent BlockMask",
            onnx="index arithmetic on symbolic sizes",
        ),
    )
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attnkit.registry import Backend

__all__ = ["BACKEND_ORDER", "standard_backends"]

#: Priority order: the first that can run is chosen. flex and onnx run only when asked for
#: by name (onnx also while exporting).
BACKEND_ORDER = ("numba", "triton", "reference", "flex", "onnx")

# What each standard backend is, before a plugin's overrides.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "numba": {
        "module": "cpu",
        "can_run": "attnkit.kernels.cpu:can_run",
        # What can_run imports (numba's np.dot calls scipy's BLAS); attnkit info only looks them up.
        "requires": ("numba", "scipy"),
        "devices": ("cpu",),
        "dtypes": ("float32", "float64"),
        "description": "numba CPU kernel",
    },
    "triton": {
        "module": "gpu",
        "can_run": "{package}.gpu:TRITON.can_run",
        "requires": ("triton",),
        "dtypes": ("float16", "bfloat16", "float32"),
        "cost": ("interpreter",),
        "description": "Triton kernel (CUDA; CPU under TRITON_INTERPRET=1 for tests)",
    },
    "reference": {"module": "reference", "description": "plain torch; float32/float64 math"},
    "flex": {
        "module": "flex",
        "can_run": "attnkit.kernels.flex:can_run",
        "supports_lse": False,
        "auto": False,
        "cost": ("compile",),
        "description": "torch.compile(flex_attention) with the equivalent BlockMask (inference on CPU)",
    },
    "onnx": {
        "module": "onnx",
        "traceable": True,
        "auto": False,
        "description": "export-friendly formulation; used while exporting",
    },
}

#: A backend's declaration: a description, a dict of :class:`~attnkit.Backend` fields to
#: change, or ``None`` / ``False`` when the spec does not have it.
BackendDecl = str | Mapping[str, Any] | bool | None


def standard_backends(
    package: str,
    function: str,
    *,
    numba: BackendDecl = None,
    triton: BackendDecl = None,
    reference: BackendDecl = True,
    flex: BackendDecl = None,
    onnx: BackendDecl = None,
) -> tuple[Backend, ...]:
    """The :class:`~attnkit.Backend` s of a kernel spec, in :data:`BACKEND_ORDER`.

    Each keyword declares one backend: ``True`` with the default description, a string as
    its description, a mapping of :class:`~attnkit.Backend` fields to set (``impl``,
    ``description``, ``differentiable`` ...), or ``None`` / ``False`` to leave it out. The
    implementation defaults to ``"<package>.<module>:<function>"`` with module ``cpu``,
    ``gpu``, ``reference``, ``flex`` or ``onnx``.

    :param package: the plugin's import name, e.g. ``"attnkit_neighborhood"``.
    :param function: the function every backend module exposes.
    :raises ValueError: no backend declared, or a declaration of the wrong type.
    """
    decls = {"numba": numba, "triton": triton, "reference": reference, "flex": flex, "onnx": onnx}
    out = []
    for name in BACKEND_ORDER:
        decl = decls[name]
        if decl is None or decl is False:
            continue
        fields = {k: v for k, v in _DEFAULTS[name].items() if k != "module"}
        if isinstance(fields.get("can_run"), str):
            fields["can_run"] = fields["can_run"].format(package=package)
        fields["impl"] = f"{package}.{_DEFAULTS[name]['module']}:{function}"
        if isinstance(decl, str):
            fields["description"] = decl
        elif isinstance(decl, Mapping):
            fields.update(decl)
        elif decl is not True:
            raise ValueError(f"backend {name}: expected True, a description or a mapping of fields, got {decl!r}")
        out.append(Backend(name=name, **fields))
    if not out:
        raise ValueError(f"{package}: standard_backends() declares no backend")
    return tuple(out)
