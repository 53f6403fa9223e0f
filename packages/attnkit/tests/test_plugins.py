"""Plugin loading: registration through every hook, broken plugins, environment toggles.

Test plugins are plain objects with ``@hookimpl`` methods, registered with
:func:`attnkit.plugins.register_plugin` and always unregistered in ``finally``.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap

import pluggy
import pytest
import torch

from attnkit import AnalysisSpec, AttentionSpec, Backend, KVCacheSpec, hookimpl, registry
from attnkit.hookspecs import RuntimeSpecs
from attnkit.plugins import _core_version, broken_plugins, get_plugins, register_plugin, unregister_plugin

pytestmark = pytest.mark.usefixtures("clean_plugins")


def _impl(q, k, v, *, params, is_causal, scale, return_lse):  # type: ignore[no-untyped-def]
    return q * 2


TOY = AttentionSpec(name="toy-attn", backends=(Backend("reference", _impl),))


class ToyPlugin:
    @hookimpl
    def attnkit_register_attention(self, register):  # type: ignore[no-untyped-def]
        register(TOY)


def test_hook_attnkit_register_attention():
    info = register_plugin(ToyPlugin(), name="undo-toy", distribution="attnkit-toy", version="1.2.3")
    try:
        assert info.error is None and info.specs == ["toy-attn"]
        spec = registry.get("toy-attn", "attention")
        # The registry stamps the plugin's distribution and version onto the spec.
        assert (spec.plugin, spec.version) == ("attnkit-toy", "1.2.3")
        q = torch.ones(1, 1, 2, 4)
        assert torch.equal(spec(q, q, q), q * 2)
        assert any(p.name == "undo-toy" for p in get_plugins())
    finally:
        unregister_plugin("undo-toy")
    assert "toy-attn" not in registry
    assert all(p.name != "undo-toy" for p in get_plugins())


def test_hook_attnkit_register_caches():
    class CachePlugin:
        @hookimpl
        def attnkit_register_caches(self, register):  # type: ignore[no-untyped-def]
            register(KVCacheSpec(name="toy-cache", factory="collections:OrderedDict"))

    register_plugin(CachePlugin(), name="undo-cache")
    try:
        (spec,) = [s for s in registry.cache_specs() if s.name == "toy-cache"]
        assert spec.kind == "cache"
    finally:
        unregister_plugin("undo-cache")
    assert "toy-cache" not in registry


def test_hook_attnkit_register_analyses():
    class AnalysisPlugin:
        @hookimpl
        def attnkit_register_analyses(self, register):  # type: ignore[no-untyped-def]
            register(
                AnalysisSpec(
                    name="toy-analysis", factory="collections:Counter", sites=("blocks.{l}.attn.hook_pattern",)
                )
            )

    register_plugin(AnalysisPlugin(), name="undo-analysis")
    try:
        spec = registry.get("toy-analysis", "analysis")
        assert spec.sites == ("blocks.{l}.attn.hook_pattern",)
    finally:
        unregister_plugin("undo-analysis")


# -- run-time hooks, on a per-run plugin manager -----------------------------------------------


def _runtime_pm(*plugins: object) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("attnkit")
    pm.add_hookspecs(RuntimeSpecs)
    for p in plugins:
        pm.register(p)
    pm.check_pending()
    return pm


def test_hook_attnkit_sites():
    class A:
        @hookimpl
        def attnkit_sites(self):  # type: ignore[no-untyped-def]
            return ["blocks.{l}.attn.hook_pattern"]

    class B:
        @hookimpl
        def attnkit_sites(self):  # type: ignore[no-untyped-def]
            return ["logits"]

    results = _runtime_pm(A(), B()).hook.attnkit_sites()
    assert sorted(s for r in results for s in r) == ["blocks.{l}.attn.hook_pattern", "logits"]


def test_hook_attnkit_capture():
    seen = []

    class Capture:
        @hookimpl
        def attnkit_capture(self, site, layer, tensor):  # type: ignore[no-untyped-def]
            seen.append((site, layer, tensor.clone()))

    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    _runtime_pm(Capture()).hook.attnkit_capture(site="blocks.0.attn.hook_pattern", layer=0, tensor=x, run=None)
    assert len(seen) == 1 and seen[0][:2] == ("blocks.0.attn.hook_pattern", 0)
    assert torch.equal(seen[0][2], x)


def test_hook_attnkit_edit():
    class ZeroHead:
        @hookimpl
        def attnkit_edit(self, site, layer, tensor):  # type: ignore[no-untyped-def]
            if site.endswith("hook_z") and layer == 1:
                out = tensor.clone()
                out[:, 0] = 0
                return out
            return None

    pm = _runtime_pm(ZeroHead())
    z = torch.ones(1, 2, 3, 4)
    (edited,) = pm.hook.attnkit_edit(site="blocks.1.attn.hook_z", layer=1, tensor=z, run=None)
    assert edited[:, 0].abs().sum() == 0 and torch.equal(edited[:, 1], z[:, 1])
    assert pm.hook.attnkit_edit(site="blocks.0.attn.hook_z", layer=0, tensor=z, run=None) == []


# -- broken plugins --------------------------------------------------------------------------


def test_plugin_raising_in_a_hook_keeps_none_of_its_specs():
    class Raises:
        @hookimpl
        def attnkit_register_attention(self, register):  # type: ignore[no-untyped-def]
            register(AttentionSpec(name="half-registered", backends=(Backend("reference", _impl),)))
            raise RuntimeError("weights file missing")

    info = register_plugin(Raises(), name="undo-raises")
    try:
        assert "half-registered" not in registry
        assert info.specs == [] and "RuntimeError: weights file missing" in info.error
        assert [p.name for p in broken_plugins()] == ["undo-raises"]
    finally:
        unregister_plugin("undo-raises")
    assert broken_plugins() == []


def test_misspelled_hook_name_is_reported_broken():
    class Typo:
        @hookimpl
        def attnkit_register_atention(self, register):  # type: ignore[no-untyped-def]
            register(TOY)

    info = register_plugin(Typo(), name="undo-typo")
    try:
        assert "unknown hook(s) attnkit_register_atention" in info.error
        assert "toy-attn" not in registry
    finally:
        unregister_plugin("undo-typo")


def test_impl_argument_not_in_the_spec_is_reported_broken():
    class ExtraArg:
        @hookimpl
        def attnkit_register_attention(self, register, device):  # type: ignore[no-untyped-def]
            register(TOY)

    info = register_plugin(ExtraArg(), name="undo-extra")
    try:
        assert "PluginValidationError" in info.error and "device" in info.error
        assert "toy-attn" not in registry
    finally:
        unregister_plugin("undo-extra")


def test_duplicate_spec_name_is_reported_broken_and_the_first_stays():
    class Dup:
        @hookimpl
        def attnkit_register_attention(self, register):  # type: ignore[no-untyped-def]
            register(TOY)
            register(AttentionSpec(name="dense", backends=(Backend("reference", _impl),)))

    before = registry.get("dense")
    info = register_plugin(Dup(), name="undo-dup")
    try:
        assert "'dense' is already registered by attnkit" in info.error
        assert registry.get("dense") is before
        assert "toy-attn" not in registry  # all or nothing
    finally:
        unregister_plugin("undo-dup")


# -- environment toggles and installed distributions -------------------------------------------


def test_load_plugins_empty_loads_only_builtins(plugin_env):
    with plugin_env(ATTNKIT_LOAD_PLUGINS=""):
        assert [s.name for s in registry] == ["dense", "full", "mha", "sink_window", "window"]
        assert all(p.builtin for p in get_plugins())


def test_disable_plugins_skips_a_distribution(plugin_env):
    with plugin_env(ATTNKIT_DISABLE_PLUGINS="attnkit-neighborhood", ATTNKIT_LOAD_PLUGINS=None):
        assert "neighborhood" not in registry and "dense" in registry
    assert "neighborhood" in registry  # back once the variable is gone


def _fake_distribution(root, name: str, module: str, requires: str, body: str) -> None:  # type: ignore[no-untyped-def]
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n{requires}")
    (info / "entry_points.txt").write_text(f"[attnkit]\n{module.removeprefix('attnkit_')} = {module}\n")


def test_incompatible_core_requirement_is_reported_broken(tmp_path, monkeypatch, plugin_env):
    _fake_distribution(
        tmp_path,
        "attnkit-future",
        "attnkit_future",
        "Requires-Dist: attnkit>=99\n",
        """
        from attnkit import AttentionSpec, Backend, hookimpl

        @hookimpl
        def attnkit_register_attention(register):
            register(AttentionSpec(name="future", backends=(Backend("reference", "math:sqrt"),)))
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with plugin_env(ATTNKIT_LOAD_PLUGINS=None):
        (bad,) = [p for p in broken_plugins() if p.name == "future"]
        assert bad.error.startswith("IncompatibleCore: requires attnkit>=99")
        assert "future" not in registry and "dense" in registry


def test_incompatible_core_from_an_egg_info_requires_txt(tmp_path, monkeypatch, plugin_env):
    # setup.py-era installs keep requirements in requires.txt, not in Requires-Dist lines.
    (tmp_path / "attnkit_oldstyle.py").write_text("")
    info = tmp_path / "attnkit_oldstyle.egg-info"
    info.mkdir()
    (info / "PKG-INFO").write_text("Metadata-Version: 1.2\nName: attnkit-oldstyle\nVersion: 0.3\n")
    (info / "requires.txt").write_text("attnkit>=99\n")
    (info / "entry_points.txt").write_text("[attnkit]\noldstyle = attnkit_oldstyle\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with plugin_env(ATTNKIT_LOAD_PLUGINS="attnkit-oldstyle"):
        (bad,) = broken_plugins()
        assert (bad.name, bad.distribution, bad.version) == ("oldstyle", "attnkit-oldstyle", "0.3")
        assert bad.error == f"IncompatibleCore: requires attnkit>=99 but attnkit {_core_version()} is installed"


# Requires-Dist lines and core versions the compatibility check must read as packaging does;
# the plain ranges are read without packaging, the rest through it.
REQUIREMENTS = [
    "attnkit>=0.1,<0.2",
    "attnkit<0.2,>=0.1",
    "attnkit >= 0.1 , < 0.2",
    "attnkit==0.1",
    "attnkit!=0.1.0",
    "attnkit>0.1",
    "attnkit<=0.1.0",
    "attnkit>=99",
    "attnkit",
    "Attnkit>=2",
    "attnkit (>=0.2)",
    "attnkit[hf]>=0.2",
    "attnkit>=0.2; extra == 'test'",
    "attnkit>=0.2; python_version >= '3'",
    "attnkit~=0.1.0",
    "attnkit==0.1.*",
    "attnkit>=0.2.0rc1",
    "attnkit-contract>=99",
    "attnkit_contract>=99",
]


@pytest.mark.parametrize("core", ["0.1.0", "0.2", "1.0.0rc1", "0.1.0.post1", "0.10.0"])
@pytest.mark.parametrize("line", REQUIREMENTS)
def test_core_compatibility_reads_requirements_like_packaging(line: str, core: str) -> None:
    from packaging.requirements import Requirement

    from attnkit.plugins import _incompatible_core

    req = Requirement(line)
    excluded = (
        req.name.lower() == "attnkit"
        and not (req.marker is not None and "extra" in str(req.marker))
        and bool(req.specifier)
        and not req.specifier.contains(core, prereleases=True)
    )
    why = _incompatible_core([line], core)
    assert (why is not None) == excluded, why
    if why is not None:
        assert why == f"requires attnkit{req.specifier} but attnkit {core} is installed"


def test_plain_core_ranges_do_not_import_packaging(tmp_path):
    # packaging is a sizeable import that every start-up would pay for otherwise.
    _fake_distribution(
        tmp_path,
        "attnkit-plain",
        "attnkit_plain",
        "Requires-Dist: attnkit<99,>=0.1\nRequires-Dist: torch>=2.5\nRequires-Dist: pytest; extra == 'test'\n",
        """
        from attnkit import AttentionSpec, Backend, hookimpl

        @hookimpl
        def attnkit_register_attention(register):
            register(AttentionSpec(name="plain", backends=(Backend("reference", "math:sqrt"),)))
        """,
    )
    code = "import sys, attnkit; print(attnkit.get_spec('plain').name, 'packaging' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    env["ATTNKIT_LOAD_PLUGINS"] = "attnkit-plain"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["plain", "False"]


def test_each_plugin_distribution_metadata_is_parsed_once(monkeypatch, plugin_env):
    from collections import Counter
    from importlib import metadata

    parsed: Counter[str] = Counter()
    real = metadata.Distribution.metadata

    def counting(self):  # type: ignore[no-untyped-def]
        meta = real.fget(self)
        parsed[meta["Name"]] += 1
        return meta

    monkeypatch.setattr(metadata.Distribution, "metadata", property(counting))
    with plugin_env(ATTNKIT_LOAD_PLUGINS=None):
        loaded = {p.distribution for p in get_plugins() if not p.builtin}
        assert loaded and parsed  # the installed plugins were loaded through the counter
        # Name, version and Requires-Dist come from one parse; the core's version is read once.
        assert {name: n for name, n in parsed.items() if n > 1} == {}


def test_import_attnkit_leaves_plugin_loading_for_later():
    code = (
        "import sys, attnkit; before = 'attnkit.plugins' in sys.modules; "
        "print(before, len(attnkit.get_plugins()) > 0, attnkit.load_plugins is attnkit.plugins.load_plugins)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True", "True"]
