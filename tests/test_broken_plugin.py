"""A broken installed plugin never breaks attnkit: ``attnkit plugins --json`` lists it with its
error, and the working plugins still load and compute."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def _dist(root: Path, name: str, module: str, body: str, requires: str = "") -> None:
    """A minimal installed distribution: the module, METADATA and an [attnkit] entry point."""
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    info = root / f"{name.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n{requires}")
    (info / "entry_points.txt").write_text(f"[attnkit]\n{module.removeprefix('attnkit_')} = {module}\n")


@pytest.fixture
def broken_site(tmp_path: Path) -> Path:
    _dist(
        tmp_path,
        "attnkit-crashes",
        "attnkit_crashes",
        """
        raise ImportError("attnkit_crashes needs a compiled extension that is not built")
        """,
    )
    _dist(
        tmp_path,
        "attnkit-tomorrow",
        "attnkit_tomorrow",
        """
        from attnkit import AttentionSpec, Backend, hookimpl

        @hookimpl
        def attnkit_register_attention(register):
            register(AttentionSpec(name="tomorrow", backends=(Backend("reference", "math:sqrt"),)))
        """,
        requires="Requires-Dist: attnkit>=99\n",
    )
    return tmp_path


def _run(code_or_args: list[str], site: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("ATTNKIT_LOAD_PLUGINS", None)
    env.pop("ATTNKIT_DISABLE_PLUGINS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run(
        [sys.executable, *code_or_args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


def test_broken_plugins_are_listed_and_the_rest_still_work(broken_site: Path) -> None:
    proc = _run(["-m", "attnkit.cli", "plugins", "--json"], broken_site)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}

    crashes = rows["crashes"]
    assert crashes["distribution"] == "attnkit-crashes" and crashes["specs"] == []
    assert "ImportError: attnkit_crashes needs a compiled extension" in crashes["error"]
    tomorrow = rows["tomorrow"]
    assert tomorrow["error"].startswith("IncompatibleCore: requires attnkit>=99")
    assert tomorrow["specs"] == []

    assert rows["neighborhood"]["error"] is None
    assert [s["name"] for s in rows["neighborhood"]["specs"]] == ["neighborhood"]
    builtin = {s["name"] for r in rows.values() if r["builtin"] for s in r["specs"]}
    assert {"dense", "mha", "full", "window", "sink_window"} <= builtin

    # The human table shows them too, in their own section.
    text = _run(["-m", "attnkit.cli", "plugins"], broken_site).stdout
    assert "broken plugins (skipped):" in text and "crashes" in text and "tomorrow" in text


def test_neighborhood_still_computes_next_to_broken_plugins(broken_site: Path) -> None:
    code = textwrap.dedent(
        """
        import torch, attnkit
        from attnkit.reference import attention
        from attnkit_neighborhood.masks import brute_force_mask
        spec = attnkit.get_spec("neighborhood")
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 2, 9, 4, generator=g, dtype=torch.float64) for _ in range(3))
        out = spec(q, k, v, kernel_size=3, backend="reference")
        mask = brute_force_mask(spec.make_params(kernel_size=3), q.shape, k.shape, False)
        err = (out - attention(q, k, v, mask=mask)).abs().max().item()
        print(sorted(p.name for p in attnkit.plugins.broken_plugins()), err)
        """
    )
    proc = _run(["-c", code], broken_site)
    assert proc.returncode == 0, proc.stderr
    names, err = proc.stdout.strip().rsplit(" ", 1)
    assert names == "['crashes', 'tomorrow']"
    assert float(err) < 1e-12


@pytest.fixture
def hostile_site(tmp_path: Path) -> Path:
    """A plugin exiting at import, one taking attnkit-neighborhood's name (its entry point
    sorts first), and one whose core requirement cannot be read."""
    _dist(tmp_path, "attnkit-exits", "attnkit_exits", "import sys\nsys.exit(3)\n")
    (tmp_path / "attnkit_fake_impl.py").write_text(
        "def forty_two(q, k, v, *, params, is_causal, scale, return_lse):\n    return q * 0 + 42\n"
    )
    _dist(
        tmp_path,
        "attnkit-aaa",
        "attnkit_aaa",
        """
        from attnkit import AttentionSpec, Backend, hookimpl

        @hookimpl
        def attnkit_register_attention(register):
            register(AttentionSpec(name="neighborhood", backends=(Backend("reference", "attnkit_fake_impl:forty_two"),)))
        """,
    )
    _dist(
        tmp_path,
        "attnkit-garbled",
        "attnkit_garbled",
        'raise ImportError("attnkit_garbled was imported")\n',
        requires="Requires-Dist: attnkit >=0.1,<\n",
    )
    return tmp_path


def test_a_plugin_exiting_or_squatting_never_breaks_the_host(hostile_site: Path) -> None:
    proc = _run(["-m", "attnkit.cli", "plugins", "--json"], hostile_site)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["exits"]["error"].startswith("SystemExit: 3")
    assert rows["aaa"]["error"].startswith("NameClash: spec name 'neighborhood' belongs to attnkit-neighborhood")
    assert rows["garbled"]["error"].startswith("IncompatibleCore: cannot read its requirement 'attnkit >=0.1,<'")
    assert "was imported" not in rows["garbled"]["error"]
    assert rows["neighborhood"]["error"] is None
    assert [s["name"] for s in rows["neighborhood"]["specs"]] == ["neighborhood"]

    code = textwrap.dedent(
        """
        import torch, attnkit
        q = torch.randn(1, 2, 9, 4, generator=torch.Generator().manual_seed(0))
        out = attnkit.attention(q, q, q, spec="neighborhood", kernel_size=3, backend="reference")
        dense = attnkit.attention(q, q, q)
        print(attnkit.get_spec("neighborhood").plugin, bool((out == 42).any()), tuple(dense.shape))
        """
    )
    proc = _run(["-c", code], hostile_site)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["attnkit-neighborhood", "False", "(1,", "2,", "9,", "4)"]
