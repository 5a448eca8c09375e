"""Text families: each supported encoder and decoder family loads with the library's own loader
and runs as its own forward would (positions, masks, pooling), with inserted and entry tokens
where the family puts them; DGA and LGA train on each, locally and served; an adapter is
refused by another family's box; an unsupported family is refused at load, by name."""

from __future__ import annotations

import pytest
import torch

from exotune import DGAConfig, TextClassifier, TrainConfig, Trainer
from exotune.boxes import load_box
from exotune.errors import BoxLimitError, ConfigError, SpecMismatchError
from exotune.graybox import EntryTokensConfig, GrayBoxModel

from .conftest import colour_data
from .family_models import DECODERS, FAMILIES, build_family

TEXTS = ["the car is red", "a blue sky is big and very slow today", "green"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("families")
    return {f: build_family(root / f, f, seed=i) for i, f in enumerate(FAMILIES)}


def own_forward(folder, texts, pooling):
    """The model run as its owner's pipeline runs it: its tokenizer (its padding side), its
    forward from token ids, then the pooling."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(str(folder)), AutoModel.from_pretrained(str(folder)).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state  # (B, T, H)
    m = enc["attention_mask"]
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        assert tokenizer.padding_side == "left"  # the decoders here pad on the left, as theirs do
        return hidden[:, -1]
    return (hidden * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_box_runs_as_the_models_own_forward(folders, family):
    box = load_box(str(folders[family]))
    pooling = "last" if family in DECODERS else "mean"
    assert box.spec.pooling == pooling  # the family's default
    expected = own_forward(folders[family], TEXTS, pooling)
    torch.testing.assert_close(box.encode(TEXTS), expected, atol=1e-5, rtol=1e-4)
    one_by_one = torch.cat([box.encode([t]) for t in TEXTS])  # padding changes nothing
    torch.testing.assert_close(one_by_one, expected, atol=1e-5, rtol=1e-4)
    batch = box.embed(TEXTS)
    assert batch.mask[:, 0].all() and batch.mask.sum(1).tolist() == [int(n) for n in batch.mask.sum(1)]
    assert (batch.mask.diff(dim=1) <= 0).all()  # the user's layout: right padding, texts start at 0
    if family not in DECODERS:
        cls = load_box(str(folders[family]), pooling="cls")
        torch.testing.assert_close(cls.encode(TEXTS), own_forward(folders[family], TEXTS, "cls"), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta", "mpnet"])
def test_padding_offset_families_take_their_own_number_of_positions(folders, family):
    box = load_box(str(folders[family]))
    assert box.spec.text_max_length == box.spec.limits.max_length == 32  # 34 position rows, 2 reserved
    longest = box.embed([" ".join(["red"] * 60)])
    assert longest.embeds.shape[1] == 32
    assert box.forward(longest.embeds, longest.mask).shape == (1, 16)  # the last position is usable
    with pytest.raises(BoxLimitError, match="max_length 32"):
        box.forward(torch.cat([longest.embeds, longest.embeds[:, :1]], 1), torch.ones(1, 33, dtype=torch.long))


@pytest.mark.parametrize(("family", "pooling"), [("roberta", "last"), ("qwen2", "cls")])
def test_a_pooling_the_family_does_not_have_is_refused(folders, family, pooling):
    with pytest.raises(ConfigError, match="pooling must be one of"):
        load_box(str(folders[family]), pooling=pooling)


@pytest.mark.parametrize("family", FAMILIES)
def test_inserted_tokens_go_where_the_family_expects_them(folders, family):
    """Extra tokens land after the leading special token (or at a decoder's front when its texts
    start with none); the output is the model's own on that sequence, alone or padded."""
    from transformers import AutoModel

    box = load_box(str(folders[family]))
    expected_at = 0 if family == "qwen2" else 1  # Qwen2's texts start with no special token
    assert box.spec.insert_at == expected_at
    model = GrayBoxModel(box, DGAConfig())
    with torch.no_grad():
        model.input_adapter.extra.normal_()
        batch = box.embed(TEXTS)
        embeds, mask = model.input_adapter(batch.embeds, batch.mask)
        out = box.forward(embeds, mask)
        own = AutoModel.from_pretrained(str(folders[family])).eval()
        for i in range(len(TEXTS)):
            n = int(batch.mask[i].sum())
            seq = batch.embeds[i, :n]
            seq = torch.cat([seq[:expected_at], model.input_adapter.extra, seq[expected_at:]])[None]  # (1, n + 1, D)
            hidden = own(inputs_embeds=seq).last_hidden_state[0]  # (n + 1, H)
            want = hidden[-1] if family in DECODERS else hidden.mean(0)
            torch.testing.assert_close(out[i], want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_entry_points_are_the_layers_and_pooling_leaves_their_slots_out(folders, family):
    box = load_box(str(folders[family]), entry_points="all", entry_tokens_max=2)
    assert [e.name for e in box.spec.entry_points] == ["layer.0", "layer.1"]  # the encoder / decoder layers
    batch = box.embed(TEXTS)
    plain = box.forward(batch.embeds, batch.mask)
    tokens = {"layer.1": torch.randn(2, box.spec.entry_dim, generator=torch.Generator().manual_seed(0))}
    moved = box.forward(batch.embeds, batch.mask, tokens)
    assert moved.shape == plain.shape and not torch.allclose(moved, plain)
    one_by_one = torch.cat([box.forward(*(lambda b: (b.embeds, b.mask))(box.embed([t])), tokens) for t in TEXTS])
    torch.testing.assert_close(one_by_one, moved, atol=1e-5, rtol=1e-4)


def test_an_unsupported_family_is_refused_at_load_by_name(tmp_path):
    from transformers import ElectraConfig, ElectraModel

    ElectraModel(
        ElectraConfig(
            vocab_size=30,
            hidden_size=16,
            embedding_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
    ).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"'electra'.*not supported.*RoBERTa.*ModernBERT.*Qwen2.*Llama"):
        load_box(str(tmp_path))


def fit(model, max_steps=3):
    train, val = colour_data(32, seed=0), colour_data(8, seed=1)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=2e-2, patience=None, max_steps=max_steps)
    Trainer(cfg, progress=False).fit(model, train, val)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("where", ["local", "served"])
def test_dga_and_lga_train_and_adapters_are_tied_to_the_backbone(folders, family, where, tmp_path):
    light = load_box(str(folders[family]), entry_points="all", entry_tokens_max=2)
    box = light
    if where == "served":
        pytest.importorskip("fastapi")
        from .serve_helpers import make_app, remote

        box = remote(make_app(light))
    labels = colour_data(4).label_names
    for name, dga in [("dga", DGAConfig()), ("lga", DGAConfig(entry_tokens=EntryTokensConfig(tokens=2)))]:
        model = TextClassifier(box, labels, dga)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        fit(model)
        assert any(not torch.equal(v, model.state_dict()[k]) for k, v in start.items())
        model.save_pretrained(tmp_path / name)
        again = TextClassifier.from_pretrained(tmp_path / name, light)
        torch.testing.assert_close(again.predict_proba(TEXTS), model.predict_proba(TEXTS), atol=1e-5, rtol=1e-4)
        other = "roberta" if family != "roberta" else "mpnet"
        with pytest.raises(SpecMismatchError):
            TextClassifier.from_pretrained(
                tmp_path / name, load_box(str(folders[other]), entry_points="all", entry_tokens_max=2)
            )
