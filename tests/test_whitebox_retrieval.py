"""The white-box retrieval baseline (owned query encoder, documents through the frozen box) on a tiny random BERT,
and its rows in the retrieval suite."""

from __future__ import annotations

import json

import pytest
import torch

from exotune.boxes import load_box
from exotune.data import load_beir
from exotune.errors import ConfigError, SpecMismatchError
from exotune.graybox import DGAConfig
from exotune.tasks.retrieval import DualEncoder, RetrievalConfig
from exotune.whitebox import WhiteBoxConfig, WhiteBoxRetriever

from .conftest import build_tiny_backbone
from .test_retrieval import _count_box_rows, losses_before_after, synthetic_beir

pytest.importorskip("peft")

MODES = [WhiteBoxConfig.lora(r=4), WhiteBoxConfig.full_ft()]
IDS = ["lora", "full-ft"]


@pytest.fixture
def beir(tmp_path):
    folder = synthetic_beir(tmp_path / "scifact")
    train = load_beir(folder, "train")
    return train, load_beir(folder, "test", corpus=train.corpus)


def make(box, backbone, wb: WhiteBoxConfig, doc_side: str = "frozen") -> WhiteBoxRetriever:
    torch.manual_seed(0)
    return WhiteBoxRetriever.from_backbone(box, str(backbone), wb, RetrievalConfig(doc_side=doc_side))


@pytest.mark.parametrize("wb", MODES, ids=IDS)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("doc_side", ["frozen", "output-only"])
def test_untrained_equals_zero_shot(tiny_backbone, beir, wb, normalize, doc_side):
    _, test = beir
    box = load_box(str(tiny_backbone), pooling="mean", normalize=normalize)
    zero = DualEncoder(box, DGAConfig.variant("none"), RetrievalConfig(learn_temperature=False))
    white = make(box, tiny_backbone, wb, doc_side)
    torch.testing.assert_close(white.encode_queries(test.queries), zero.encode_queries(test.queries))
    torch.testing.assert_close(white.encode_corpus(test.corpus), zero.encode_corpus(test.corpus))
    assert white.rank(test) == zero.rank(test) and white.evaluate(test) == zero.evaluate(test)


@pytest.mark.parametrize("wb", MODES, ids=IDS)
def test_training_lowers_the_loss_and_trains_the_query_side_only(tiny_box, tiny_backbone, beir, wb):
    train, _ = beir
    model = make(tiny_box, tiny_backbone, wb)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "log_scale" in trainable and all(n.startswith("query_tower.") for n in trainable - {"log_scale"})
    if wb.mode == "lora":
        assert all("lora_" in n for n in trainable - {"log_scale"})
        assert set(model.state_dict()) == trainable  # never the frozen base weights
    model.eval()  # no dropout: the two losses compare the weights alone
    before, after = losses_before_after(model, train.subset(range(len(train))), 15, 1e-2)
    assert after < before - 0.1


def test_output_only_doc_side_trains_the_document_adapter(tiny_box, tiny_backbone, beir):
    train, _ = beir
    model = make(tiny_box, tiny_backbone, WhiteBoxConfig.lora(r=4), "output-only")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    doc = {n for n in trainable if n.startswith("doc_tower.")}
    assert doc and all(n.startswith("doc_tower.output_adapter.") for n in doc)
    assert set(model.state_dict()) == trainable  # LoRA tensors, the document adapter, the temperature
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if n in doc}
    model.eval()
    losses_before_after(model, train.subset(range(len(train))), 5, 1e-2)
    assert any(not torch.equal(p, weights[n]) for n, p in model.named_parameters() if n in doc)


def test_documents_cross_the_box_once(tiny_box, tiny_backbone, beir, monkeypatch):
    from exotune.train import TrainConfig, Trainer

    train, test = beir
    model = make(tiny_box, tiny_backbone, WhiteBoxConfig.lora(r=4))
    assert model.doc_encoder.caches_box_outputs and model.num_trainable() > 1
    rows = _count_box_rows(tiny_box, monkeypatch)
    model.evaluate(test)
    assert sum(rows) == len(test.corpus)  # the queries go through the owned encoder, not the box
    rows.clear()
    tr, val = train.split(0.25, seed=0)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2, select_metric="ndcg@10", patience=None)
    result = Trainer(cfg, progress=False).fit(model, tr, val)
    assert result.steps > 2 and model.evaluate(test)
    assert sum(rows) == 0 and model.corpus_encodings == 1  # steps and validations: cached documents


def test_refuses_other_weights_and_other_doc_sides(tiny_box, tiny_backbone, tmp_path):
    other = build_tiny_backbone(tmp_path / "other", seed=1)
    with pytest.raises(SpecMismatchError, match="not the box's"):
        WhiteBoxRetriever.from_backbone(tiny_box, str(other))
    with pytest.raises(ConfigError, match="doc_side must be 'frozen'"):
        WhiteBoxRetriever.from_backbone(tiny_box, str(tiny_backbone), config=RetrievalConfig(doc_side="same"))


def test_dual_encoder_frozen_doc_side(tiny_box):
    model = DualEncoder(tiny_box, DGAConfig(), RetrievalConfig(doc_side="frozen"))
    assert model.doc_tower.input_adapter is None and model.doc_tower.output_adapter is None
    assert model.doc_encoder.caches_box_outputs and model.query_tower.input_adapter is not None


# -- the suite's rows, on the tiny backbone ------------------------------------------------------


@pytest.fixture
def scifact_dir(tmp_path):
    synthetic_beir(tmp_path / "data" / "scifact")
    return tmp_path / "data"


def test_bench_white_box_rows(tiny_backbone, scifact_dir, tmp_path, monkeypatch):
    import exotune.bench as bench
    from exotune.cli import main

    monkeypatch.setattr(bench, "run_isolated", lambda fn, *args: fn(*args))  # in this process
    out = tmp_path / "out"
    argv = [
        "bench",
        "retrieval",
        "--quick",
        "--methods",
        "zero-shot",
        "lora",
        "full-ft",
        "--backbone",
        str(tiny_backbone),
        "--data-dir",
        str(scifact_dir),
        "--out-dir",
        str(out),
    ]
    assert main(argv) == 0
    doc = json.loads((out / "retrieval.json").read_text())
    by = {r["method"]: r for r in doc["records"] if r["metric"] == "ndcg@10"}
    assert set(by) == {"zero-shot", "lora", "full-ft"}
    lora, full = by["lora"], by["full-ft"]
    assert (lora["variant"], lora["access"], lora["lr"], lora["doc_side"]) == (
        "r=8 on queries",
        "white",
        2e-3,
        "output-only",
    )
    assert (full["variant"], full["access"], full["lr"]) == ("all, on queries", "white", 2e-4)
    assert 0 < lora["trainable_params"] < full["trainable_params"]
    for r in (lora, full):
        assert r["steps"] >= 1 and r["seconds_per_step"] > 0 and r["peak_memory_mb"] > 0
        assert r["train_seconds"] > 0 and r["eval_examples_per_second"] > 0 and r["threads"] >= 1
    assert "| lora | r=8 on queries | white |" in (out / "retrieval.md").read_text()


def test_budget_learning_rates_and_logged_key():
    from exotune.bench.retrieval import Budget

    b = Budget()
    assert (b.lr_for("dga"), b.lr_for("lga"), b.lr_for("lora"), b.lr_for("full-ft")) == (2e-3, 2e-3, 2e-3, 2e-4)
    # the default white-box rates leave the logged key as it was before they existed
    assert "method_lr" not in b.for_dataset("scifact") and b.for_dataset("scifact")["lr"] == 2e-3
    b.method_lr["lora"] = 5e-4
    assert b.for_dataset("scifact")["method_lr"]["lora"] == 5e-4
