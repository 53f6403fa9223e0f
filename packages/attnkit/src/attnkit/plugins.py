"""The plugin manager: built-ins, entry-point discovery, and the report of broken plugins.

Plugins are modules (or objects) with ``@hookimpl`` functions, found through the entry-point
group ``attnkit``. Loading never fails because of one plugin: a plugin that cannot be
imported, declares an incompatible core version, implements an unknown hook, or raises in a
registration hook is recorded in :func:`broken_plugins` with its error and skipped.

Environment:

* ``ATTNKIT_LOAD_PLUGINS`` - comma list of distributions to load (``""`` loads none);
  unset loads every installed plugin.
* ``ATTNKIT_DISABLE_PLUGINS`` - comma list of distributions or entry-point names to skip.
* ``ATTNKIT_TRACE_PLUGINS=1`` - print every hook call with its arguments to stderr.
"""

from __future__ import annotations

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
from attnkit.registry import Spec, logger, registry

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
_infos: dict[str, PluginInfo] = {}


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
            except InvalidRequirement:
                continue
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


def _run_registrations(name: str, plugin: object, info: PluginInfo) -> None:
    """Call this plugin's registration hooks; keep its specs only if every hook succeeds."""
    collected: list[Spec] = []

    def register(spec: Spec) -> None:
        if not isinstance(spec, Spec):
            raise TypeError(f"register() takes a spec object, got {type(spec).__name__}")
        collected.append(spec)

    try:
        for hook_name in REGISTRATION_HOOKS:
            caller = getattr(pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin:
                    kwargs = {"register": register} if "register" in impl.argnames else {}
                    impl.function(**kwargs)
        import dataclasses

        stamped = [dataclasses.replace(s, plugin=info.distribution or name, version=info.version) for s in collected]
        added: list[str] = []
        try:
            for s in stamped:
                registry.add(s)
                added.append(s.name)
        except Exception:
            for n in added:
                registry._specs.pop(n, None)
            raise
        info.specs = added
        _infos[name] = info
    except Exception as exc:
        pm.unregister(plugin)
        _mark_broken(info, _short_error(exc))


def register_plugin(
    plugin: object,
    name: str | None = None,
    *,
    distribution: str | None = None,
    version: str | None = None,
    builtin: bool = False,
) -> PluginInfo:
    """Register one plugin object or module and run its registration hooks.

    Used for built-ins, for entry points, and by tests and notebooks to add a plugin for a
    while (undo with :func:`unregister_plugin`). Never raises because of the plugin: the
    returned :class:`PluginInfo` carries the error instead.
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
        try:
            pm.register(plugin, name=name)
        except Exception as exc:  # PluginValidationError: hookimpl args not in the spec, or a clash
            _mark_broken(info, _short_error(exc))
            return info
        unknown = _unknown_hooks(plugin)
        if unknown:
            pm.unregister(plugin)
            _mark_broken(
                info,
                f"PluginValidationError: unknown hook(s) {', '.join(unknown)}; known hooks: "
                + ", ".join(REGISTRATION_HOOKS),
            )
            return info
        info.hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        _run_registrations(name, plugin, info)
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


def load_plugins(*, force: bool = False) -> None:
    """Register the built-ins and every allowed installed plugin (idempotent).

    :param force: forget everything loaded so far and load again (the environment
        variables are read anew).
    """
    global _loaded
    with _lock:
        if _loaded and not force:
            return
        if force:
            reset()
        if os.environ.get("ATTNKIT_TRACE_PLUGINS") == "1":
            _enable_tracing()
        import importlib

        # Every metadata lookup parses a METADATA file: read the core's version once, and
        # each plugin's name, version and requirements from one parse of its own.
        core = _core_version()
        for module_name in DEFAULT_PLUGINS:
            module = importlib.import_module(module_name)
            register_plugin(module, name=module_name, distribution="attnkit", version=core, builtin=True)
        allow = _env_list("ATTNKIT_LOAD_PLUGINS")
        deny = _env_list("ATTNKIT_DISABLE_PLUGINS") or set()
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist
            meta = dist.metadata if dist is not None else None
            dist_name = meta["Name"] if meta is not None else None
            if allow is not None and dist_name not in allow and ep.name not in allow:
                continue
            if dist_name in deny or ep.name in deny:
                logger.debug("attnkit plugin %r disabled by ATTNKIT_DISABLE_PLUGINS", ep.name)
                continue
            if pm.get_plugin(ep.name) is not None or ep.name in _infos:
                continue
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
            except Exception as exc:  # ImportError, SyntaxError, anything a plugin raises at import
                _mark_broken(info, _short_error(exc))
                continue
            register_plugin(module, name=ep.name, distribution=dist_name, version=info.version)
        pm.check_pending()
        _loaded = True


def reset() -> None:
    """Unregister every plugin and empty the registry (for tests)."""
    global _loaded
    with _lock:
        for name, _plugin in list(pm.list_name_plugin()):
            if name is not None and pm.get_plugin(name) is not None:
                pm.unregister(name=name)
        registry.clear()
        _infos.clear()
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
