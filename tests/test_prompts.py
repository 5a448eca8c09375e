"""The owner's prompts: a sentence-transformers folder's prompts are applied on the owner's
side, the spec names the one in use, inserted tokens go after it, its tokens leave mean pooling
where the folder says so, and retrieval puts the query / document prompt on each tower."""

from __future__ import annotations

import json

import pytest
import torch

from exotune.boxes import load_box
from exotune.errors import ConfigError
from exotune.graybox import DGAConfig, GrayBoxModel
from exotune.tasks.retrieval import DualEncoder, RetrievalConfig

from .conftest import build_tiny_backbone

TEXTS = ["the car is red", "green leaf"]
PROMPTS = {"query": "it is ", "document": "a ", "empty": ""}


def st_folder(root, include_prompt: bool):
    folder = build_tiny_backbone(root)
    (folder / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": PROMPTS, "default_prompt_name": "query", "similarity_fn_name": "cosine"})
    )
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_mean_tokens": True, "include_prompt": include_prompt})
    )
    return folder


def own_mean(folder, texts, skip: int):
    """The model's own forward on the prompted texts, mean over the mask from position ``skip``."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(str(folder)), AutoModel.from_pretrained(str(folder)).eval()
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    m = enc["attention_mask"].clone()
    m[:, :skip] = 0
    return (hidden * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True)


@pytest.mark.parametrize("include_prompt", [False, True])
def test_the_default_prompt_is_applied_and_pooled_as_the_folder_says(tmp_path, include_prompt):
    folder = st_folder(tmp_path / "st", include_prompt)
    box = load_box(str(folder))
    assert box.spec.prompt == "query" and box.spec.prompts == ("document", "query")  # an empty prompt is none
    assert "it is" not in json.dumps(box.spec.to_dict())  # the prompt's text stays the owner's
    assert box.spec.insert_at == 3  # [CLS] it is | text
    expected = own_mean(folder, ["it is " + t for t in TEXTS], 0 if include_prompt else 3)
    torch.testing.assert_close(box.encode(TEXTS), expected, atol=1e-5, rtol=1e-4)


def test_extra_tokens_go_after_the_prompt_and_another_prompt_is_another_box(tmp_path):
    box = load_box(str(st_folder(tmp_path / "st", include_prompt=False)))
    model = GrayBoxModel(box, DGAConfig())
    with torch.no_grad():
        model.input_adapter.extra.normal_()
        batch = box.embed(TEXTS)
        embeds, mask = model.input_adapter(batch.embeds, batch.mask)
    assert torch.equal(embeds[:, :3], batch.embeds[:, :3]) and torch.equal(embeds[:, 4:], batch.embeds[:, 3:])
    assert torch.equal(embeds[:, 3], model.input_adapter.extra[0].expand(2, -1))
    doc = box.prompted("document")
    assert doc.spec.prompt == "document" and doc.spec.insert_at == 2
    assert doc.spec.model_digest == box.spec.model_digest and doc.spec.fingerprint() != box.spec.fingerprint()
    assert not torch.allclose(doc.encode(TEXTS), box.encode(TEXTS))
    with pytest.raises(ConfigError, match="no prompt 'passage'"):
        box.prompted("passage")


def test_retrieval_puts_each_sides_prompt_on_its_tower(tmp_path):
    box = load_box(str(st_folder(tmp_path / "st", include_prompt=False)))
    model = DualEncoder(box, DGAConfig(), RetrievalConfig())
    assert model.query_tower.box.spec.prompt == "query" and model.doc_tower.box.spec.prompt == "document"
    assert model.query_box is model.query_tower.box and model.doc_box is model.doc_tower.box
    torch.testing.assert_close(
        model.encode_queries(TEXTS),
        torch.nn.functional.normalize(model.query_tower.encode(TEXTS), dim=-1),
        atol=1e-5,
        rtol=1e-4,
    )
    model.save_pretrained(tmp_path / "adapter")
    again = DualEncoder.from_pretrained(tmp_path / "adapter", box)
    assert again.doc_tower.box.spec.prompt == "document"
    torch.testing.assert_close(again.encode_queries(TEXTS), model.encode_queries(TEXTS))
