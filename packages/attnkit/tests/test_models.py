"""attnkit.models: tiny GPT / ViT shapes and per-layer specs, GPT causality, the data sets
against their definitions, train() determinism, and short runs that must beat chance."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest
import torch

from attnkit.models import IGNORE_INDEX, TinyGPT, TinyViT, copy_task, digits, evaluate, layer_specs, train
from attnkit.modules import MultiHeadAttention
from attnkit.testing import BAND, BandParams, band_brute_force_mask, registered_specs

HAS_SKLEARN = importlib.util.find_spec("sklearn") is not None
needs_sklearn = pytest.mark.skipif(not HAS_SKLEARN, reason="digits() needs scikit-learn")


def small_gpt(**kw: object) -> TinyGPT:
    torch.manual_seed(0)
    args: dict[str, object] = {"vocab_size": 11, "dim": 32, "layers": 2, "heads": 4, "max_len": 16}
    args.update(kw)
    return TinyGPT(**args)  # type: ignore[arg-type]


# ---------------------------------------------------------------- shapes and construction


def test_gpt_shapes_and_gqa() -> None:
    model = small_gpt(kv_heads=2)
    tokens = torch.randint(0, 11, (3, 9))
    assert model(tokens).shape == (3, 9, 11)
    attn = model.attention_modules()
    assert len(attn) == 2 and all(isinstance(m, MultiHeadAttention) for m in attn)
    assert attn[0].k_proj.out_features == 2 * 8  # kv_heads * head_dim, not expanded


def test_gpt_tied_and_untied_head() -> None:
    tied = small_gpt()
    assert tied.head.weight is tied.tok_emb.weight
    untied = small_gpt(tie_weights=False)
    assert untied.head.weight is not untied.tok_emb.weight


def test_vit_shapes() -> None:
    torch.manual_seed(0)
    model = TinyViT(image_size=8, patch_size=4, channels=3, num_classes=5, dim=32, layers=2, heads=4)
    assert model.num_patches == 4
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 5)
    assert len(model.attention_modules()) == 2


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="patch_size=3 must divide image_size=8"):
        TinyViT(patch_size=3)
    with pytest.raises(ValueError, match="max_len=16"):
        small_gpt()(torch.zeros(1, 17, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        TinyViT(dim=32, layers=1, heads=4)(torch.randn(2, 1, 6, 6))
    with pytest.raises(ValueError, match="attention has 3 entries but the model has layers=2"):
        small_gpt(attention=["dense"] * 3)
    with pytest.raises(ValueError, match="attention_params has 1 entries but the model has layers=2"):
        small_gpt(attention_params=[{}])
    with pytest.raises(TypeError, match=r"attention_params\[1\]"):
        layer_specs("dense", [{}, 3], 2)


def test_layer_specs_broadcast() -> None:
    assert layer_specs("dense", None, 2) == [("dense", {}), ("dense", {})]
    assert layer_specs(["a", "b"], {"x": 1}, 2) == [("a", {"x": 1}), ("b", {"x": 1})]


@pytest.fixture
def band() -> Iterator[str]:
    """The name of ``testing.band`` (local-window attention from :mod:`attnkit.testing`),
    registered for one test: a second kernel that needs no plugin installed."""
    with registered_specs(BAND) as (spec,):
        yield spec.name


def test_per_layer_specs(band: str) -> None:
    model = small_gpt(attention=["dense", band], attention_params=[{}, {"window": 3}])
    first, second = model.attention_modules()
    assert first.kernel.name == "dense" and second.kernel.name == band
    assert second.kernel_params.window == 3
    assert model(torch.randint(0, 11, (2, 10))).shape == (2, 10, 11)
    # The band layer is dense float64 attention under the brute-force band mask (causal: GPT).
    second.double()
    dense = MultiHeadAttention(second.config).double()
    dense.load_state_dict(second.state_dict())
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    d_head = second.config.d_head
    allowed = band_brute_force_mask(BandParams(window=3), (2, 4, 10, d_head), (2, 4, 10, d_head), True)
    assert not torch.equal(allowed, torch.ones_like(allowed).tril())  # narrower than causal dense attention
    torch.testing.assert_close(second(x), dense(x, attn_mask=allowed), atol=1e-12, rtol=1e-12)
    torch.manual_seed(0)
    vit = TinyViT(dim=32, layers=2, heads=4, attention=[band, "dense"], attention_params=[{"window": 5}, None])
    assert [m.kernel.name for m in vit.attention_modules()] == [band, "dense"]
    assert vit.attention_modules()[0].kernel_params.window == 5
    assert vit(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_replace_attention() -> None:
    model = small_gpt()
    new = MultiHeadAttention(model.config)
    model.replace_attention(1, new)
    assert model.attention_modules()[1] is new
    with pytest.raises(ValueError, match="layer must be in"):
        model.replace_attention(2, new)


# ---------------------------------------------------------------- behaviour


@pytest.mark.parametrize("attention", ["dense", "band"])
def test_gpt_is_causal(attention: str, request: pytest.FixtureRequest) -> None:
    if attention == "band":
        # The band alone would also look 3 keys ahead: the model's causal flag must keep the
        # future out for a non-dense kernel too.
        attention = request.getfixturevalue("band")
        params: dict[str, object] | None = {"window": 3}
    else:
        params = None
    model = small_gpt(attention=attention, attention_params=params).double().eval()
    tokens = torch.randint(0, 11, (2, 12))
    t = 7
    changed = tokens.clone()
    changed[:, t] = (tokens[:, t] + 1) % 11
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.equal(a[:, :t], b[:, :t])  # the past never sees the future
    assert not torch.allclose(a[:, t], b[:, t])  # and position t does see itself


def test_vit_ignores_nothing() -> None:
    """Non-causal encoder: the CLS logits depend on the last patch too."""
    torch.manual_seed(0)
    model = TinyViT(dim=32, layers=1, heads=4).double().eval()
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    y = x.clone()
    y[..., -2:, -2:] += 1.0
    with torch.no_grad():
        assert not torch.allclose(model(x), model(y))


# ---------------------------------------------------------------- data


def test_copy_task_definition() -> None:
    x, y = copy_task(5, length=4, vocab_size=6, seed=3)
    assert x.shape == y.shape == (5, 8)
    assert torch.all(x[:, 4] == 6)  # SEP
    assert torch.all(y[:, :4] == IGNORE_INDEX)
    assert torch.equal(y[:, 4:], x[:, :4])  # scored targets are the prompt, copied
    assert torch.equal(x[:, 5:], x[:, :3])  # teacher forcing feeds the copy so far
    assert torch.equal(copy_task(5, length=4, vocab_size=6, seed=3)[0], x)


@needs_sklearn
def test_digits_split() -> None:
    from sklearn.datasets import load_digits

    (xtr, ytr), (xte, yte) = digits(seed=1)
    n = len(load_digits().target)
    assert xtr.shape[1:] == (1, 8, 8) and xtr.dtype == torch.float32
    assert len(ytr) + len(yte) == n and len(yte) == round(0.25 * n)
    assert abs(float(xtr.mean())) < 1e-5 and abs(float(xtr.std()) - 1) < 1e-4  # train-normalised
    (xtr2, _), _ = digits(seed=1)
    assert torch.equal(xtr, xtr2)
    (xtr3, _), _ = digits(seed=2)
    assert not torch.equal(xtr, xtr3)
    # Every image lands in exactly one split, standardised by one affine map a * raw + b:
    # sort both row multisets (an increasing affine map keeps lexicographic order) and fit it.
    raw = sorted(map(tuple, load_digits().data.tolist()))
    got = sorted(map(tuple, torch.cat([xtr, xte]).double().flatten(1).tolist()))
    raw_t, got_t = torch.tensor(raw).flatten(), torch.tensor(got).flatten()
    a = float(got_t.std() / raw_t.std())
    b = float(got_t.mean() - a * raw_t.mean())
    assert a > 0 and torch.allclose(got_t, a * raw_t + b, atol=1e-5)
    assert sorted(torch.cat([ytr, yte]).tolist()) == sorted(load_digits().target.tolist())


# ---------------------------------------------------------------- training


def test_train_is_deterministic() -> None:
    data = copy_task(64, length=3, vocab_size=5, seed=0)
    weights = []
    for _ in range(2):
        model = small_gpt(vocab_size=6)
        train(model, data, steps=5, batch_size=16, seed=7, progress=False)
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))
    other = small_gpt(vocab_size=6)
    train(other, data, steps=5, batch_size=16, seed=8, progress=False)
    assert not all(torch.equal(a, b) for a, b in zip(weights[0], other.parameters()))


def test_train_validates() -> None:
    data = copy_task(8, length=2, vocab_size=4)
    with pytest.raises(ValueError, match="steps"):
        train(small_gpt(), data, steps=0, progress=False)
    with pytest.raises(TypeError, match="train_data"):
        train(small_gpt(), data[0], steps=1, progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="schedule"):
        train(small_gpt(), data, steps=1, schedule="linear", progress=False)


def test_aux_loss_is_added() -> None:
    """A module reporting a constant aux loss shifts every step's loss by weight * constant."""
    data = copy_task(32, length=3, vocab_size=5, seed=0)

    class WithAux(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.aux_loss: torch.Tensor | None = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.aux_loss = torch.tensor(0.5)
            return self.inner(x)

    plain, wrapped = small_gpt(vocab_size=6), small_gpt(vocab_size=6)
    wrapped.replace_attention(0, WithAux(wrapped.attention_modules()[0]))
    a = train(plain, data, steps=3, batch_size=8, progress=False)
    b = train(wrapped, data, steps=3, batch_size=8, aux_loss_weight=2.0, progress=False)
    assert b.aux_losses == [0.5] * 3
    assert b.losses == pytest.approx([x + 1.0 for x in a.losses], abs=1e-6)


def test_evaluate_against_hand_count() -> None:
    class Fixed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(x, 3).double()  # predicts its own input

    x = torch.tensor([[0, 1, 2], [2, 2, 0]])
    y = torch.tensor([[0, IGNORE_INDEX, 1], [2, 0, IGNORE_INDEX]])
    assert evaluate(Fixed(), (x, y)) == 2 / 4


def test_gpt_learns_copy() -> None:
    train_set = copy_task(2000, length=6, vocab_size=8, seed=0)
    test_set = copy_task(500, length=6, vocab_size=8, seed=1)
    model = small_gpt(vocab_size=9)
    result = train(model, train_set, steps=100, progress=False, eval_data=test_set)
    assert result.wall_time_s > 0 and result.steps == 100
    assert result.losses[-1] < result.losses[0]
    assert result.eval_accuracy is not None and result.eval_accuracy >= 0.5  # chance is 1/8


@needs_sklearn
def test_vit_learns_digits() -> None:
    train_set, test_set = digits(seed=0)
    torch.manual_seed(0)
    model = TinyViT(dim=32, layers=2, heads=4)
    result = train(model, train_set, steps=150, progress=False, eval_data=test_set)
    assert result.eval_accuracy is not None and result.eval_accuracy >= 0.6  # chance is 0.1


def test_digits_without_sklearn_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        digits()


def test_train_with_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    result = train(small_gpt(vocab_size=6), copy_task(16, length=3, vocab_size=5), steps=2, batch_size=8)
    assert result.steps == 2 and len(result.losses) == 2
    assert "train" in capsys.readouterr().err
