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
        assert [s.name for s in registry] == [
            "adakv",
            "dense",
            "full",
            "key_norm",
            "mha",
            "observed_attention",
            "sink_window",
            "snapkv",
            "window",
        ]
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


# -- isolation: BaseException from a plugin, interrupted loads --------------------------------

_EXITS_AT_IMPORT = """
import sys

sys.exit(3)
"""

_EXITS_IN_A_HOOK = """
from attnkit import AttentionSpec, Backend, hookimpl

@hookimpl
def attnkit_register_attention(register):
    register(AttentionSpec(name="exits", backends=(Backend("reference", "math:sqrt"),)))
    raise SystemExit(3)
"""

_BAILS_IN_A_HOOK = """
from attnkit import AttentionSpec, Backend, hookimpl

class Bail(BaseException):
    pass

@hookimpl
def attnkit_register_attention(register):
    register(AttentionSpec(name="exits", backends=(Backend("reference", "math:sqrt"),)))
    raise Bail("a BaseException that is not an interrupt")
"""


def _builtin_names() -> set[str]:
    return {"adakv", "dense", "full", "key_norm", "mha", "observed_attention", "sink_window", "snapkv", "window"}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (_EXITS_AT_IMPORT, "SystemExit: 3"),
        (_EXITS_IN_A_HOOK, "SystemExit: 3"),
        (_BAILS_IN_A_HOOK, "Bail: a BaseException that is not an interrupt"),
    ],
    ids=["sys-exit-at-import", "system-exit-in-a-hook", "base-exception-in-a-hook"],
)
def test_system_exit_from_a_plugin_is_a_broken_plugin(body, error, tmp_path, monkeypatch, plugin_env):
    from attnkit.plugins import load_plugins, pm

    monkeypatch.delitem(sys.modules, "attnkit_exits", raising=False)  # each case imports its own
    _fake_distribution(tmp_path, "attnkit-exits", "attnkit_exits", "", body)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with plugin_env(ATTNKIT_LOAD_PLUGINS="attnkit-exits"):
        (bad,) = broken_plugins()
        assert (bad.name, bad.distribution) == ("exits", "attnkit-exits")
        assert bad.error.startswith(error) and bad.specs == []
        assert "exits" not in registry and pm.get_plugin("exits") is None
        # Loading finished: a second call changes nothing, the built-ins stay as they were.
        before = [p.as_dict() for p in get_plugins()]
        load_plugins()
        assert [p.as_dict() for p in get_plugins()] == before
        assert {s.name for s in registry} == _builtin_names()
        q = torch.ones(1, 1, 2, 4)
        assert torch.equal(importlib.import_module("attnkit").attention(q, q, q), q)


_FIRST_OK = """
from attnkit import AttentionSpec, Backend, hookimpl

@hookimpl
def attnkit_register_attention(register):
    register(AttentionSpec(name="aaok", backends=(Backend("reference", "math:sqrt"),)))
"""


def _interrupts_once(where: str, marker) -> str:  # type: ignore[no-untyped-def]
    """A plugin raising KeyboardInterrupt (at import or in its hook) while ``marker`` exists,
    removing it: the first load is interrupted, the next one goes through."""
    check = f"if os.path.exists({str(marker)!r}):\n    os.remove({str(marker)!r})\n    raise KeyboardInterrupt\n"
    return (
        "import os\nfrom attnkit import AttentionSpec, Backend, hookimpl\n\n"
        + (check if where == "import" else "")
        + "\n@hookimpl\ndef attnkit_register_attention(register):\n"
        + '    register(AttentionSpec(name="interrupts", backends=(Backend("reference", "math:sqrt"),)))\n'
        + (textwrap.indent(check, "    ") if where == "hook" else "")
    )


@pytest.mark.parametrize("where", ["import", "hook"])
def test_keyboard_interrupt_while_loading_propagates_and_leaves_nothing_half_registered(where, tmp_path, monkeypatch):
    from attnkit import plugins

    for module in ("attnkit_aaok", "attnkit_interrupts"):  # each case imports its own
        monkeypatch.delitem(sys.modules, module, raising=False)
    marker = tmp_path / "interrupt-once"
    marker.write_text("")
    site = tmp_path / "site"
    site.mkdir()
    _fake_distribution(site, "attnkit-aaok", "attnkit_aaok", "", _FIRST_OK)
    _fake_distribution(site, "attnkit-interrupts", "attnkit_interrupts", "", _interrupts_once(where, marker))
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setenv("ATTNKIT_LOAD_PLUGINS", "attnkit-aaok,attnkit-interrupts")

    with pytest.raises(KeyboardInterrupt):
        plugins.load_plugins(force=True)
    # Nothing of the interrupted load is left: not the plugin that was loading, not the one
    # loaded before it; the built-ins are whole.
    assert {s.name for s in registry} == _builtin_names()
    assert plugins.pm.get_plugin("aaok") is None and plugins.pm.get_plugin("interrupts") is None
    assert {p.name for p in plugins._infos.values() if not p.builtin} == set()
    assert all(p.error is None for p in plugins._infos.values())

    # The next load starts clean and never touches what was kept.
    builtins = {n: plugins.pm.get_plugin(n) for n in plugins.DEFAULT_PLUGINS}
    plugins.load_plugins()
    assert broken_plugins() == []
    assert {s.name for s in registry} == {*_builtin_names(), "aaok", "interrupts"}
    assert {n: plugins.pm.get_plugin(n) for n in plugins.DEFAULT_PLUGINS} == builtins


def test_a_plugin_asking_for_specs_while_loading_does_not_reload(tmp_path, monkeypatch, plugin_env):
    _fake_distribution(
        tmp_path,
        "attnkit-eager",
        "attnkit_eager",
        "",
        """
        import attnkit
        from attnkit import AttentionSpec, Backend, hookimpl

        SEEN = [s.name for s in attnkit.list_specs()]  # loading is under way: returns what is there

        @hookimpl
        def attnkit_register_attention(register):
            register(AttentionSpec(name="eager", backends=(Backend("reference", "math:sqrt"),)))
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with plugin_env(ATTNKIT_LOAD_PLUGINS="attnkit-eager"):
        assert broken_plugins() == []
        assert {s.name for s in registry} == {*_builtin_names(), "eager"}
        assert set(importlib.import_module("attnkit_eager").SEEN) == _builtin_names()


# -- spec names: who may register which --------------------------------------------------------


def _registers(*names: str) -> str:
    lines = "\n".join(
        f"    register(AttentionSpec(name={n!r}, backends=(Backend('reference', 'attnkit_fakeimpl:forty_two'),)))"
        for n in names
    )
    return f"from attnkit import AttentionSpec, Backend, hookimpl\n\n@hookimpl\ndef attnkit_register_attention(register):\n{lines}\n"


def _fake_impl(root) -> None:  # type: ignore[no-untyped-def]
    (root / "attnkit_fakeimpl.py").write_text(
        "def forty_two(q, k, v, *, params, is_causal, scale, return_lse):\n    return q * 0 + 42\n"
    )


def test_impostor_of_an_installed_plugins_name_is_broken_and_the_owner_keeps_it(tmp_path, monkeypatch, plugin_env):
    # "aaa_impostor" sorts before "neighborhood", so it is loaded first.
    _fake_impl(tmp_path)
    _fake_distribution(
        tmp_path, "attnkit-aaa-impostor", "attnkit_aaa_impostor", "", _registers("aaa-impostor", "neighborhood")
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with plugin_env(ATTNKIT_LOAD_PLUGINS=None, ATTNKIT_DISABLE_PLUGINS=None):
        rows = {p.name: p for p in get_plugins()}
        assert rows["neighborhood"].error is None and rows["neighborhood"].specs == ["neighborhood"]
        bad = rows["aaa_impostor"]
        assert bad.error.startswith("NameClash: spec name 'neighborhood' belongs to attnkit-neighborhood")
        assert "not to attnkit-aaa-impostor" in bad.error
        assert bad.specs == [] and "aaa-impostor" not in registry  # all of its specs or none
        spec = registry.get("neighborhood")
        assert spec.plugin == "attnkit-neighborhood"
        q = torch.randn(1, 1, 8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        out = importlib.import_module("attnkit").attention(
            q, q, q, spec="neighborhood", kernel_size=3, backend="reference"
        )
        assert not torch.any(out == 42)
    # The owner need not be loaded for its name to be its own.
    with plugin_env(ATTNKIT_LOAD_PLUGINS=None, ATTNKIT_DISABLE_PLUGINS="attnkit-neighborhood"):
        (bad,) = [p for p in broken_plugins() if p.name == "aaa_impostor"]
        assert "belongs to attnkit-neighborhood" in bad.error
        assert "neighborhood" not in registry


def test_installed_plugin_registering_a_builtin_name_is_broken(tmp_path, monkeypatch, plugin_env):
    _fake_impl(tmp_path)
    _fake_distribution(tmp_path, "attnkit-adense", "attnkit_adense", "", _registers("adense", "dense"))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with plugin_env(ATTNKIT_LOAD_PLUGINS="attnkit-adense"):
        (bad,) = broken_plugins()
        assert bad.error == "NameClash: spec name 'dense' is already registered by attnkit"
        assert registry.get("dense").plugin == "attnkit" and "adense" not in registry


def test_two_plugins_claiming_a_name_nobody_owns_make_it_unavailable(tmp_path, monkeypatch, plugin_env):
    _fake_impl(tmp_path)
    _fake_distribution(tmp_path, "attnkit-one", "attnkit_one", "", _registers("one", "shared"))
    _fake_distribution(tmp_path, "attnkit-two", "attnkit_two", "", _registers("two", "shared"))
    _fake_distribution(tmp_path, "attnkit-three", "attnkit_three", "", _registers("three", "free-name"))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with plugin_env(ATTNKIT_LOAD_PLUGINS="attnkit-one,attnkit-two,attnkit-three"):
        bad = {p.name: p.error for p in broken_plugins()}
        assert set(bad) == {"one", "two"}
        for error in bad.values():
            assert error.startswith("NameClash: spec name 'shared' is unavailable: it is registered by both")
            assert "attnkit-one and attnkit-two" in error and "neither owns it" in error
        with pytest.raises(ValueError, match=r"'shared' is unavailable: .*attnkit-one and attnkit-two"):
            importlib.import_module("attnkit").get_spec("shared")
        assert "one" not in registry and "two" not in registry
        # A name nobody owns and only one plugin registers is that plugin's.
        assert registry.get("free-name").plugin == "attnkit-three" and "three" in registry


def test_runtime_plugin_may_not_take_a_name_an_installed_distribution_owns():
    # attnkit-kdgqa owns kdgqa and kdgqa.*, registered or not.
    class Squatter:
        @hookimpl
        def attnkit_register_attention(self, register):  # type: ignore[no-untyped-def]
            register(AttentionSpec(name="kdgqa.fast", backends=(Backend("reference", _impl),)))

    class Owner:
        @hookimpl
        def attnkit_register_attention(self, register):  # type: ignore[no-untyped-def]
            register(AttentionSpec(name="kdgqa.fast", backends=(Backend("reference", _impl),)))

    info = register_plugin(Squatter(), name="undo-squatter", distribution="attnkit-squatter")
    owner = register_plugin(Owner(), name="undo-owner", distribution="attnkit-kdgqa")
    try:
        assert info.error == (
            "NameClash: spec name 'kdgqa.fast' belongs to attnkit-kdgqa "
            "(a distribution attnkit-<slug> owns <slug> and <slug>.*), not to attnkit-squatter"
        )
        assert owner.error is None and registry.get("kdgqa.fast").plugin == "attnkit-kdgqa"
    finally:
        unregister_plugin("undo-squatter")
        unregister_plugin("undo-owner")


def test_unreadable_core_requirement_is_incompatible_and_not_imported(tmp_path, monkeypatch, plugin_env):
    from attnkit.plugins import _incompatible_core

    why = _incompatible_core(["attnkit>=0.1,<"], "0.1.0")
    assert why is not None and why.startswith("cannot read its requirement 'attnkit>=0.1,<': ")
    assert "\n" not in why
    _fake_distribution(
        tmp_path,
        "attnkit-garbled",
        "attnkit_garbled",
        "Requires-Dist: torch>=2.5\nRequires-Dist: attnkit >=0.1,<\n",
        """
        raise RuntimeError("attnkit_garbled must not be imported")
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with plugin_env(ATTNKIT_LOAD_PLUGINS="attnkit-garbled"):
        (bad,) = broken_plugins()
        assert bad.error.startswith("IncompatibleCore: cannot read its requirement 'attnkit >=0.1,<': ")
        assert "must not be imported" not in bad.error


def test_trace_plugins_prints_each_registration_hook_call():
    env = {**os.environ, "ATTNKIT_TRACE_PLUGINS": "1"}
    code = "import attnkit; attnkit.list_specs()"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=120
    )
    lines = done.stderr.splitlines()
    assert "attnkit hook attnkit_register_caches -> attnkit.default_plugins.caches" in lines
    caches = "full, window, sink_window, snapkv, observed_attention, key_norm, adakv"
    assert f"attnkit hook attnkit_register_caches <- attnkit.default_plugins.caches: {caches}" in lines
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert "attnkit hook" not in quiet.stderr
