"""The contract checks for analysis specs (:class:`~attnkit.AnalysisSpec`).

Each check is ``check_analysis_<name>(spec) -> None``: it builds the analysis with
``spec.factory(spec.make_params())``, runs it under :func:`attnkit.patch` on a tiny randomly
initialised transformers Llama (:func:`attnkit.testing.tiny_causal_lm`: 2 layers, 4 query / 2
KV heads, seeded; nothing downloaded) for a prompt and a few greedy decode steps, and raises
``AssertionError`` naming the spec when the analysis breaks the contract:

* it is a run-time plugin the per-run manager accepts, with ``attnkit_sites`` and a capture
  or edit hook;
* the sites it asks for are ones its spec declares (only declared sites pay for capture, and
  ``attnkit analyze`` plans by them), and the declared sites exist;
* an analysis that only observes leaves the model's tokens and logits as they are;
* two fresh analyses over the same run report the same result;
* parameters it must refuse raise ``ValueError`` / ``TypeError`` naming themselves.

What an analysis *finds* is its plugin's own tests' business (planted answers on synthetic
attention or tiny models): the contract holds what every analysis shares.

:func:`parametrize_with_analysis_contract` makes one pytest test per ``(spec, check)``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import pytest
import torch

from attnkit.registry import AnalysisSpec, resolve
from attnkit.testing import torch_threads

__all__ = ["ANALYSIS_BACKEND", "ANALYSIS_CHECKS", "analysis_contract_params", "parametrize_with_analysis_contract"]

F = TypeVar("F", bound=Callable[..., Any])

#: The ``backend`` analysis checks are filed under in ``expected_failed_checks`` keys.
ANALYSIS_BACKEND = "analysis"
PROMPT, NEW_TOKENS = 12, 4
#: float32 tiny model, same arithmetic with and without an observing analysis attached.
F32_TOL = 1e-5


def _check_spec(spec: Any) -> AnalysisSpec:
    if not isinstance(spec, AnalysisSpec):
        raise TypeError(f"the analysis contract takes an AnalysisSpec, got {type(spec).__name__}")
    return spec


#: One intra-op thread around each check (see :func:`attnkit.testing.torch_threads`).
_one_thread = torch_threads(1)


@functools.lru_cache(maxsize=1)
def _model() -> Any:
    from attnkit.testing import tiny_causal_lm

    return tiny_causal_lm(seed=0)


def _build(spec: AnalysisSpec) -> Any:
    return resolve(spec.factory)(spec.make_params())


def _prompt(seed: int = 1) -> torch.Tensor:
    from attnkit.testing import TINY_VOCAB

    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, TINY_VOCAB, (1, PROMPT), generator=g)


def _generate(analyses: list[Any]) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Greedy tokens, their logits and the analyses' results for the contract prompt."""
    import attnkit

    model = _model()
    ids = _prompt()
    kwargs = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
    with torch.no_grad():
        if analyses:
            with attnkit.patch(model, "dense", analyses=analyses) as session:
                out = model.generate(ids, **kwargs)
            results = session.results
        else:
            out = model.generate(ids, **kwargs)
            results = {}
    return out.sequences, torch.stack(out.logits, dim=1), results


def _hooks(analysis: Any) -> set[str]:
    return {
        name
        for name in ("attnkit_sites", "attnkit_capture", "attnkit_edit")
        if callable(getattr(analysis, name, None)) and hasattr(getattr(analysis, name), "attnkit_impl")
    }


def _n_layers() -> int:
    return int(_model().config.num_hidden_layers)


@_one_thread
def check_analysis_builds(spec: Any) -> None:
    """The factory builds, with default parameters, a run-time plugin the per-run manager
    accepts, implementing ``attnkit_sites`` and ``attnkit_capture`` or ``attnkit_edit``."""
    from attnkit.runtime.run import Run

    spec = _check_spec(spec)
    analysis = _build(spec)
    hooks = _hooks(analysis)
    if "attnkit_sites" not in hooks or not hooks & {"attnkit_capture", "attnkit_edit"}:
        raise AssertionError(
            f"{spec.name}: the factory's object implements {sorted(hooks) or 'no run-time hook'}; an analysis "
            "needs @hookimpl attnkit_sites and attnkit_capture or attnkit_edit"
        )
    try:
        Run(n_layers=_n_layers(), analyses=[analysis])
    except Exception as exc:
        raise AssertionError(f"{spec.name}: the run-time manager refused the analysis: {exc}") from exc


@_one_thread
def check_analysis_sites_declared(spec: Any) -> None:
    """The spec's ``sites`` exist, and every site (and phase) the analysis asks for is one of them."""
    from attnkit.runtime.run import expand_sites

    spec = _check_spec(spec)
    if not spec.sites:
        raise AssertionError(f"{spec.name}: declares no sites (AnalysisSpec.sites)")
    n = _n_layers()
    try:
        declared = expand_sites(spec.sites, n)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{spec.name}: declared sites {list(spec.sites)} are not valid: {exc}") from exc
    asked = expand_sites(_build(spec).attnkit_sites() or (), n)
    extra = sorted(f"{s}@{p}" for s, phases in asked.items() for p in phases - declared.get(s, set()))
    if extra:
        raise AssertionError(
            f"{spec.name}: asks for sites its spec does not declare: {extra[:4]} (declared {list(spec.sites)})"
        )


@_one_thread
def check_analysis_observes_without_changing_the_model(spec: Any) -> None:
    """An analysis without ``attnkit_edit`` leaves greedy tokens and logits unchanged."""
    spec = _check_spec(spec)
    analysis = _build(spec)
    if "attnkit_edit" in _hooks(analysis):
        pytest.skip(f"{spec.name} edits the model by design (attnkit_edit)")
    tokens, logits, _ = _generate([])
    got_tokens, got_logits, _ = _generate([analysis])
    if not torch.equal(tokens, got_tokens):
        raise AssertionError(
            f"{spec.name}: generated {got_tokens.tolist()} with the analysis, {tokens.tolist()} without"
        )
    worst = float((got_logits - logits).abs().max())
    if worst > F32_TOL:
        raise AssertionError(f"{spec.name}: observing changed the logits by up to {worst:.3g} (tolerance {F32_TOL})")


def _comparable(result: Any) -> Any:
    if hasattr(result, "to_dict") and callable(result.to_dict):
        return _comparable(result.to_dict())
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return _comparable(dataclasses.asdict(result))
    if isinstance(result, dict):
        return {k: _comparable(v) for k, v in result.items()}
    if isinstance(result, (list, tuple)):
        return [_comparable(v) for v in result]
    if isinstance(result, torch.Tensor):
        return result.detach().cpu().tolist()
    if hasattr(result, "tolist"):
        return result.tolist()
    return result


@_one_thread
def check_analysis_deterministic(spec: Any) -> None:
    """Two fresh analyses over the same run give the same ``result()``."""
    spec = _check_spec(spec)
    first, second = _build(spec), _build(spec)
    if not callable(getattr(first, "result", None)):
        pytest.skip(f"{spec.name}'s analysis has no result() to compare")
    _generate([first])
    _generate([second])
    a, b = _comparable(first.result()), _comparable(second.result())
    if repr(a) != repr(b):
        raise AssertionError(
            f"{spec.name}: two runs on the same input gave different results: {repr(a)[:200]} vs {repr(b)[:200]}"
        )


def check_analysis_params_validate(spec: Any) -> None:
    """Values a parameter must refuse (``contract_invalid`` / ``min`` metadata, or the int
    defaults' rule of the attention contract) raise ``ValueError`` / ``TypeError`` naming it."""
    from attnkit_contract.checks import _invalid_values

    spec = _check_spec(spec)
    tried = 0
    for f in dataclasses.fields(spec.params):
        for bad in _invalid_values(f):
            tried += 1
            try:
                spec.make_params(**{f.name: bad})
            except (TypeError, ValueError) as exc:
                if f.name not in str(exc):
                    raise AssertionError(
                        f"{spec.name}: {f.name}={bad!r} raised {type(exc).__name__} not naming it: {exc}"
                    ) from exc
            else:
                raise AssertionError(f"{spec.name}: {f.name}={bad!r} was accepted")
    if not tried:
        pytest.skip(f"{spec.name}'s parameters declare no values to refuse (field metadata 'contract_invalid')")


#: name -> check function.
def check_analysis_entry_points_resolve(spec: Any) -> None:
    """Every entry the spec declares (``factory``, ``analyze``, ``main_job``) names an importable
    callable, at least one is declared, and ``default_model`` is among ``models`` when those are
    listed: ``attnkit analyze`` and ``attnkit run`` would otherwise fail only when called."""
    from attnkit.registry import resolve

    spec = _check_spec(spec)
    entries = {n: getattr(spec, n, None) for n in ("factory", "analyze", "main_job")}
    declared = {n: e for n, e in entries.items() if e is not None}
    if not declared:
        raise AssertionError(f"{spec.name}: declares none of factory, analyze, main_job: nothing can run it")
    for n, e in declared.items():
        try:
            target = resolve(e)
        except Exception as exc:
            raise AssertionError(f"{spec.name}.{n} = {e!r} does not resolve: {type(exc).__name__}: {exc}") from exc
        if not callable(target):
            raise AssertionError(f"{spec.name}.{n} = {e!r} resolves to a {type(target).__name__}, not a callable")
    models = tuple(getattr(spec, "models", ()) or ())
    if models and spec.default_model not in models:
        raise AssertionError(f"{spec.name}: default_model {spec.default_model!r} is not in models {models}")


def _has_factory(spec: Any) -> bool:
    return getattr(spec, "factory", None) is not None


ANALYSIS_CHECKS: dict[str, Callable[[Any], None]] = {
    fn.__name__: fn
    for fn in (
        check_analysis_entry_points_resolve,
        check_analysis_builds,
        check_analysis_sites_declared,
        check_analysis_observes_without_changing_the_model,
        check_analysis_deterministic,
        check_analysis_params_validate,
    )
}


def _declares_invalid_values(spec: Any) -> bool:
    from attnkit_contract.checks import _invalid_values

    return any(_invalid_values(f) for f in dataclasses.fields(spec.params))


#: Which analysis checks apply to a spec, from what it declares (see ``checks.APPLIES``).
ANALYSIS_APPLIES: dict[str, Callable[[Any], bool]] = {
    "check_analysis_params_validate": _declares_invalid_values,
    # the run-time checks drive the factory's object under attnkit.patch
    **dict.fromkeys(
        (
            "check_analysis_builds",
            "check_analysis_sites_declared",
            "check_analysis_observes_without_changing_the_model",
            "check_analysis_deterministic",
        ),
        _has_factory,
    ),
}


def analysis_contract_params(specs: Iterable[Any]) -> list[Any]:
    """The ``pytest.param`` list behind :func:`parametrize_with_analysis_contract`: values
    ``(spec, check_function)``, ids ``<spec>-<check>``, strict xfails from the spec's
    ``expected_failed_checks``."""
    from attnkit_contract.runner import spec_check_params

    return spec_check_params(
        specs,
        "analysis",
        ANALYSIS_CHECKS,
        ANALYSIS_BACKEND,
        "parametrize_with_analysis_contract",
        applies=ANALYSIS_APPLIES,
    )


def parametrize_with_analysis_contract(specs: Iterable[Any]) -> Callable[[F], F]:
    """Parametrise a test over every ``(analysis spec, check)``::

        @parametrize_with_analysis_contract(registry.analysis_specs())
        def test_analysis_contract(spec, check):
            check(spec)

    .. versionadded:: 0.1
    """
    specs = list(specs)

    def decorate(fn: F) -> F:
        return pytest.mark.parametrize("spec, check", analysis_contract_params(specs))(fn)

    return decorate
