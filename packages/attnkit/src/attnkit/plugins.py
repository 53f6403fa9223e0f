"""The plugin manager: built-ins, entry-point discovery, and the report of broken plugins.

Plugins are modules (or objects) with ``@hookimpl`` functions, found through the entry-point
group ``attnkit``. Loading never fails because of one plugin: a plugin that cannot be
imported, declares an incompatible (or unreadable) core requirement, implements an unknown
hook, raises in a registration hook (``SystemExit`` and other ``BaseException`` subclasses
included) or registers a spec name it may not have is recorded in :func:`broken_plugins` with
its error and skipped. A plugin's specs are added all together or not at all. Only
``KeyboardInterrupt`` propagates (it cannot be told from the user's Ctrl-C); loading then rolls
back what the interrupted load had added, so the next call starts clean.

Spec names: the distribution ``attnkit-<slug>`` owns ``<slug>`` and ``<slug>.*``, attnkit owns
its built-ins' names (:func:`attnkit.registry.owns`). A plugin may register another name only
while no installed distribution owns it and no other plugin claims it too; otherwise it is
broken with a ``NameClash`` error naming both distributions, and a name two plugins claim is
unavailable (looking it up says why).

Environment:

* ``ATTNKIT_LOAD_PLUGINS`` - comma list of distributions to load (``""`` loads none);
  unset loads every installed plugin.
* ``ATTNKIT_DISABLE_PLUGINS`` - comma list of distributions or entry-point names to skip.
* ``ATTNKIT_TRACE_PLUGINS=1`` - print every hook call with its arguments to stderr.
"""

from __future__ import annotations

import contextlib
import dataclasses
import operator
import os
import re
import sys
import threading
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from attnkit import hookspecs
from attnkit.registry import Spec, logger, name_key, owns, registry, spec_namespace

__all__ = [
    "DEFAULT_PLUGINS",
    "PluginInfo",
    "broken_plugins",
    "get_plugins",
    "load_plugins",
    "pm",
    "register_plugin",
    "reset",
]

DEFAULT_PLUGINS: tuple[str, ...] = (
    "attnkit.default_plugins.dense",
    "attnkit.default_plugins.mha",
    "attnkit.default_plugins.caches",
)
ENTRY_POINT_GROUP = "attnkit"
REGISTRATION_HOOKS = ("attnkit_register_attention", "attnkit_register_caches", "attnkit_register_analyses")

pm = pluggy.PluginManager("attnkit")
pm.add_hookspecs(hookspecs)


@dataclass
class PluginInfo:
    """What ``attnkit plugins`` reports about one plugin."""

    name: str
    version: str | None
    distribution: str | None
    module: str | None
    builtin: bool = False
    hooks: list[str] = field(default_factory=list)
    specs: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "distribution": self.distribution,
            "module": self.module,
            "builtin": self.builtin,
            "hooks": self.hooks,
            "specs": self.specs,
            "error": self.error,
        }


_lock = threading.RLock()
_loaded = False
_loading = False
_infos: dict[str, PluginInfo] = {}
#: ``<slug> -> distribution`` of every installed ``attnkit-<slug>`` with an entry point in the
#: group (loaded, disabled or broken alike): the owners of spec names.
_installed: dict[str, str] = {}


def _core_version() -> str:
    try:
        return metadata.version("attnkit")
    except metadata.PackageNotFoundError:  # running from a source tree without install
        return "0.1.0"


def _env_list(name: str) -> set[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


#: The project name a ``Requires-Dist`` line starts with.
_REQUIREMENT_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
#: One clause of a plain version range (``>=0.1``, ``< 0.2``), the form plugins give the core.
_PLAIN_CLAUSE = re.compile(r"\s*(==|!=|<=|>=|<|>)\s*(\d+(?:\.\d+)*)\s*")
_PLAIN_VERSION = re.compile(r"\d+(?:\.\d+)*")
_COMPARE = {
    "==": operator.eq,
    "!=": operator.ne,
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}


def _release(version: str) -> tuple[int, ...]:
    parts = [int(p) for p in version.split(".")]
    while len(parts) > 1 and parts[-1] == 0:  # 0.1 == 0.1.0: PEP 440 pads releases with zeros
        parts.pop()
    return tuple(parts)


def _plain_range(specifier: str, core: str) -> tuple[bool, str] | None:
    """``(whether core is in range, the range as packaging prints it)`` for a range of plain
    release numbers such as ``>=0.1,<0.2``; ``None`` for anything else (extras, markers,
    wildcards, ``~=``, pre-releases ...), which :mod:`packaging` reads instead.

    This is what almost every plugin declares, and reading it here keeps ``packaging`` (a
    sizeable import) out of start-up.
    """
    if not _PLAIN_VERSION.fullmatch(core):
        return None
    if not specifier.strip():
        return True, ""
    have = _release(core)
    ok, clauses = True, []
    for clause in specifier.split(","):
        match = _PLAIN_CLAUSE.fullmatch(clause)
        if match is None:
            return None
        op, want = match.group(1), _release(match.group(2))
        ok = ok and _COMPARE[op](have, want)
        clauses.append(op + match.group(2))
    return ok, ",".join(sorted(clauses))


def _incompatible_core(requires: Iterable[str], core: str) -> str | None:
    """Why a distribution with these ``Requires-Dist`` lines cannot run with core ``core``."""
    for raw in requires:
        name = _REQUIREMENT_NAME.match(raw)
        if name is None or re.sub(r"[-_.]+", "-", name.group(1)).lower() != "attnkit":
            continue  # another project: most lines, and not worth parsing
        plain = _plain_range(raw[name.end() :], core)
        if plain is not None:
            ok, specifier = plain
        else:
            from packaging.requirements import InvalidRequirement, Requirement

            try:
                req = Requirement(raw)
            except InvalidRequirement as exc:
                # pip would not have installed it; importing it would mean guessing.
                lines = str(exc).strip().splitlines()
                return f"cannot read its requirement {raw.strip()!r}: {lines[0] if lines else type(exc).__name__}"
            if req.marker is not None and "extra" in str(req.marker):
                continue
            ok = not req.specifier or req.specifier.contains(core, prereleases=True)
            specifier = str(req.specifier)
        if not ok:
            return f"requires attnkit{specifier} but attnkit {core} is installed"
    return None


def _requires(dist: metadata.Distribution, meta: Any) -> list[str]:
    """``dist``'s requirements from its parsed ``meta`` (an egg-info keeps them in
    ``requires.txt``, which ``dist.requires`` reads)."""
    return (meta.get_all("Requires-Dist") if meta is not None else None) or dist.requires or []


def _short_error(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {last[0].filename}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _mark_broken(info: PluginInfo, message: str) -> None:
    info.error = message
    info.specs = []
    _infos[info.name] = info
    logger.warning("attnkit plugin %r is broken and was skipped: %s", info.name, message)


def _unknown_hooks(plugin: object) -> list[str]:
    names = []
    for hook_caller in pm.get_hookcallers(plugin) or []:
        if hook_caller.spec is None:
            names.append(hook_caller.name)
    return names


class _Rejected(Exception):
    """A plugin refused by the loader itself, with the one-line message to record."""


@dataclass
class _Candidate:
    """A plugin whose registration hooks all returned: its stamped specs, not yet added."""

    name: str
    plugin: object
    info: PluginInfo
    specs: list[Spec]

    @property
    def label(self) -> str:
        return self.info.distribution or self.name


def _discard(plugin: object) -> None:
    """Unregister ``plugin`` from pluggy if it is registered."""
    if pm.is_registered(plugin):
        with contextlib.suppress(Exception):
            pm.unregister(plugin)


def _snapshot() -> tuple[Any, dict[str, PluginInfo], set[int]]:
    return registry.snapshot(), dict(_infos), {id(p) for _, p in pm.list_name_plugin() if p is not None}


def _restore(state: tuple[Any, dict[str, PluginInfo], set[int]]) -> None:
    """Undo everything since :func:`_snapshot`: specs, reports and pluggy registrations."""
    specs, infos, plugins = state
    for _name, plugin in list(pm.list_name_plugin()):
        if plugin is not None and id(plugin) not in plugins:
            _discard(plugin)
    registry.restore(specs)
    _infos.clear()
    _infos.update(infos)


def _registration_specs(plugin: object) -> list[Spec]:
    """Call ``plugin``'s registration hooks and return what they registered."""
    collected: list[Spec] = []
    open_ = True

    def register(spec: Spec) -> None:
        if not open_:
            raise RuntimeError("register() was called after the plugin's registration hook returned")
        if not isinstance(spec, Spec):
            raise TypeError(f"register() takes a spec object, got {type(spec).__name__}")
        collected.append(spec)

    # The hooks are called one plugin at a time, past pluggy's hook-call monitoring, so
    # ATTNKIT_TRACE_PLUGINS is honoured here.
    trace = os.environ.get("ATTNKIT_TRACE_PLUGINS") == "1"
    try:
        for hook_name in REGISTRATION_HOOKS:
            caller = getattr(pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin:
                    kwargs = {"register": register} if "register" in impl.argnames else {}
                    if trace:
                        print(f"attnkit hook {hook_name} -> {impl.plugin_name}", file=sys.stderr)
                    seen = len(collected)
                    impl.function(**kwargs)
                    if trace:
                        names = ", ".join(s.name for s in collected[seen:]) or "nothing"
                        print(f"attnkit hook {hook_name} <- {impl.plugin_name}: {names}", file=sys.stderr)
    finally:
        open_ = False
    return collected


def _collect(plugin: object, name: str, info: PluginInfo) -> _Candidate | None:
    """Register ``plugin`` with pluggy and run its registration hooks; nothing reaches the
    registry here. Any failure (``SystemExit`` included) unregisters it and marks it broken;
    ``KeyboardInterrupt`` unregisters it and propagates."""
    try:
        pm.register(plugin, name=name)
        unknown = _unknown_hooks(plugin)
        if unknown:
            raise _Rejected(
                f"PluginValidationError: unknown hook(s) {', '.join(unknown)}; known hooks: "
                + ", ".join(REGISTRATION_HOOKS)
            )
        info.hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        label = info.distribution or name
        specs = [dataclasses.replace(s, plugin=label, version=info.version) for s in _registration_specs(plugin)]
        names = [s.name for s in specs]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise _Rejected(f"NameClash: {label} registers spec name(s) {', '.join(map(repr, twice))} more than once")
    except KeyboardInterrupt:
        _discard(plugin)
        raise
    except BaseException as exc:  # SystemExit, GeneratorExit, ... from a plugin: the plugin is broken
        _discard(plugin)
        _mark_broken(info, str(exc) if isinstance(exc, _Rejected) else _short_error(exc))
        return None
    return _Candidate(name, plugin, info, specs)


_OWNERSHIP = "a distribution attnkit-<slug> owns <slug> and <slug>.*"


def _claim_verdicts(name: str, claimants: list[_Candidate], owners: Mapping[str, str]) -> dict[str, str]:
    """Which of ``claimants`` may not have spec name ``name``: plugin name -> why."""
    held = registry._specs.get(name)
    if held is not None:  # never replaced: the built-ins, and whatever a previous call added
        return {
            c.name: f"spec name {name!r} is already registered by {held.plugin or 'another plugin'}" for c in claimants
        }
    blocked = registry.unavailable().get(name)
    if blocked is not None:
        return {c.name: f"spec name {name!r} is unavailable: {blocked}" for c in claimants}
    owner = owners.get(name_key(name).split(".", 1)[0])
    if owner is not None:
        owning = [c for c in claimants if owns(c.info.distribution, name)]
        if len(owning) <= 1:
            return {
                c.name: f"spec name {name!r} belongs to {owner} ({_OWNERSHIP}), not to {c.label}"
                for c in claimants
                if c not in owning
            }
    elif len(claimants) == 1:
        return {}  # a name nobody owns: the one plugin that registers it has it
    labels = [c.label for c in claimants]
    if len(set(labels)) < len(labels):
        labels = [f"{c.label} (entry point {c.name})" for c in claimants]
    why = f"it is registered by both {' and '.join(labels)}, and " + (
        f"only one of them may ({_OWNERSHIP})" if owner is not None else f"neither owns it ({_OWNERSHIP})"
    )
    registry.mark_unavailable(name, why + "; uninstall or disable one of them")
    return {c.name: f"spec name {name!r} is unavailable: {why}" for c in claimants}


def _commit(candidates: list[_Candidate]) -> None:
    """Decide every spec name the candidates claim, together (so the outcome does not depend
    on load order), then add the specs of the plugins whose every name was granted."""
    owners = dict(_installed)
    for info in [*_infos.values(), *(c.info for c in candidates)]:
        slug = spec_namespace(info.distribution)
        if slug is not None:
            owners.setdefault(slug, info.distribution or "")
    claims: dict[str, list[_Candidate]] = {}
    for c in candidates:
        for s in c.specs:
            claims.setdefault(s.name, []).append(c)
    refused: dict[str, str] = {}
    for name, claimants in claims.items():
        for plugin_name, why in _claim_verdicts(name, claimants, owners).items():
            refused.setdefault(plugin_name, why)
    for c in candidates:
        if c.name in refused:
            _discard(c.plugin)
            _mark_broken(c.info, f"NameClash: {refused[c.name]}")
            continue
        for s in c.specs:
            registry.add(s)
        c.info.specs = [s.name for s in c.specs]
        _infos[c.name] = c.info


def register_plugin(
    plugin: object,
    name: str | None = None,
    *,
    distribution: str | None = None,
    version: str | None = None,
    builtin: bool = False,
) -> PluginInfo:
    """Register one plugin object or module and run its registration hooks.

    Used for built-ins and by tests and notebooks to add a plugin for a while (undo with
    :func:`unregister_plugin`). Never raises because of the plugin: the returned
    :class:`PluginInfo` carries the error instead. What is registered already is never
    changed: a spec name that is taken, or that an installed distribution owns, makes this
    plugin broken. ``KeyboardInterrupt`` propagates, with this plugin rolled back.
    """
    name = name or getattr(plugin, "__name__", None) or repr(plugin)
    info = PluginInfo(
        name=name,
        version=version,
        distribution=distribution,
        module=getattr(plugin, "__name__", type(plugin).__name__),
        builtin=builtin,
    )
    with _lock:
        if pm.get_plugin(name) is not None or name in _infos:
            info.error = f"ValueError: plugin name {name!r} is already registered"  # the one there stays
            return info
        state = _snapshot()
        try:
            candidate = _collect(plugin, name, info)
            if candidate is not None:
                _commit([candidate])
        except KeyboardInterrupt:
            _restore(state)
            raise
        return _infos[name]


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered by :func:`register_plugin` and its specs."""
    with _lock:
        info = _infos.pop(name, None)
        plugin = pm.get_plugin(name)
        if plugin is not None:
            pm.unregister(plugin)
        if info is not None:
            for s in info.specs:
                registry._specs.pop(s, None)


def _entry_point_records() -> list[tuple[metadata.EntryPoint, Any, Any, str | None]]:
    """``(entry point, distribution, parsed metadata, distribution name)`` of every installed
    plugin, each METADATA parsed once; fills :data:`_installed` (the spec-name owners)."""
    records = []
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = ep.dist
        meta = dist.metadata if dist is not None else None
        dist_name = meta["Name"] if meta is not None else None
        slug = spec_namespace(dist_name)
        if slug is not None and dist_name is not None:
            _installed.setdefault(slug, dist_name)
        records.append((ep, dist, meta, dist_name))
    return records


def load_plugins(*, force: bool = False) -> None:
    """Register the built-ins and every allowed installed plugin (idempotent).

    A ``KeyboardInterrupt`` while plugins load propagates after the installed plugins added by
    this call are rolled back (the built-ins stay); the next call loads them afresh. A call
    made while loading (a plugin asking for a spec at import) returns at once.

    :param force: forget everything loaded so far and load again (the environment
        variables are read anew).
    """
    global _loaded, _loading
    with _lock:
        if _loading or (_loaded and not force):
            return
        _loading = True
        try:
            if force:
                reset()
            if os.environ.get("ATTNKIT_TRACE_PLUGINS") == "1":
                _enable_tracing()
            _load()
            pm.check_pending()
            _loaded = True
        finally:
            _loading = False


def _load() -> None:
    import importlib

    # Every metadata lookup parses a METADATA file: read the core's version once, and
    # each plugin's name, version and requirements from one parse of its own.
    core = _core_version()
    for module_name in DEFAULT_PLUGINS:
        if pm.get_plugin(module_name) is not None or module_name in _infos:
            continue  # kept from a load that was interrupted later on
        module = importlib.import_module(module_name)
        register_plugin(module, name=module_name, distribution="attnkit", version=core, builtin=True)
    allow = _env_list("ATTNKIT_LOAD_PLUGINS")
    deny = _env_list("ATTNKIT_DISABLE_PLUGINS") or set()
    records = _entry_point_records()
    state = _snapshot()
    current = None
    try:
        candidates: list[_Candidate] = []
        for ep, dist, meta, dist_name in records:
            if allow is not None and dist_name not in allow and ep.name not in allow:
                continue
            if dist_name in deny or ep.name in deny:
                logger.debug("attnkit plugin %r disabled by ATTNKIT_DISABLE_PLUGINS", ep.name)
                continue
            if pm.get_plugin(ep.name) is not None or ep.name in _infos:
                continue
            current = dist_name or ep.name
            info = PluginInfo(
                name=ep.name,
                version=meta["Version"] if meta is not None else None,
                distribution=dist_name,
                module=ep.value,
            )
            why = _incompatible_core(_requires(dist, meta), core) if dist is not None else None
            if why is not None:
                _mark_broken(info, f"IncompatibleCore: {why}")
                continue
            try:
                module = ep.load()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # ImportError, SyntaxError, SystemExit: anything a plugin raises at import
                _mark_broken(info, _short_error(exc))
                continue
            candidate = _collect(module, ep.name, info)
            if candidate is not None:
                candidates.append(candidate)
        current = None
        _commit(candidates)
    except KeyboardInterrupt:
        _restore(state)
        logger.warning(
            "loading attnkit plugins was interrupted%s; nothing of this load was kept "
            "(ATTNKIT_DISABLE_PLUGINS=NAME skips a plugin)",
            f" while loading {current!r}" if current else "",
        )
        raise


def reset() -> None:
    """Unregister every plugin and empty the registry (for tests)."""
    global _loaded
    with _lock:
        for name, _plugin in list(pm.list_name_plugin()):
            if name is not None and pm.get_plugin(name) is not None:
                pm.unregister(name=name)
        registry.clear()
        _infos.clear()
        _installed.clear()
        _loaded = False


def get_plugins(*, include_builtin: bool = True) -> list[PluginInfo]:
    """Every plugin seen, working or broken, sorted by name."""
    load_plugins()
    return sorted(
        (i for i in _infos.values() if include_builtin or not i.builtin),
        key=lambda i: (i.builtin is False, i.name),
    )


def broken_plugins() -> list[PluginInfo]:
    """Plugins that were skipped, each with its error."""
    load_plugins()
    return [i for i in _infos.values() if i.error is not None]


def _enable_tracing() -> None:
    def before(hook_name: str, hook_impls: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        print(f"attnkit hook {hook_name} -> {[i.plugin_name for i in hook_impls]} {kwargs}", file=sys.stderr)

    def after(outcome: Any, hook_name: str, hook_impls: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        print(f"attnkit hook {hook_name} done", file=sys.stderr)

    pm.add_hookcall_monitoring(before, after)
