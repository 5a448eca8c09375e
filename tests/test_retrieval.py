"""Dual-encoder retrieval: metrics, towers, training, corpus cache, artifacts, CLI."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from exotune.boxes.base import model_digest
from exotune.cli import main
from exotune.data import load_beir
from exotune.errors import ConfigError, SpecMismatchError
from exotune.graybox import DGAConfig
from exotune.tasks.metrics import mrr_at_k, ndcg_at_k, recall_at_k, retrieval_metrics
from exotune.tasks.retrieval import DualEncoder, RetrievalConfig, exact_search
from exotune.train import TrainConfig, Trainer

from .conftest import backbone_module, build_tiny_backbone
from .test_beir import write_beir

COLOURS = ["red", "blue", "green"]
NOUNS = ["car", "sky", "leaf"]


def synthetic_beir(folder: Path, n_queries: int = 36, seed: int = 0) -> Path:
    """Nine documents, one per (colour, noun); a query names both words and judges its document."""
    rng = random.Random(seed)
    docs = [
        {"_id": f"{c}-{n}", "title": n, "text": f"the {c} {n} is {rng.choice(['fast', 'slow', 'big'])}"}
        for c in COLOURS
        for n in NOUNS
    ]
    queries, qrels = [], []
    for i in range(n_queries):
        c, n = rng.choice(COLOURS), rng.choice(NOUNS)
        words = [c, n, rng.choice(["a", "the", "very"])]
        rng.shuffle(words)
        queries.append({"_id": f"q{i}", "text": " ".join(words)})
        qrels.append((f"q{i}", f"{c}-{n}", 1))
    half = n_queries * 3 // 4
    return write_beir(folder, docs, queries, qrels[:half], qrels[half:])


@pytest.fixture
def beir(tmp_path):
    folder = synthetic_beir(tmp_path / "scifact")
    train = load_beir(folder, "train")
    return train, load_beir(folder, "test", corpus=train.corpus)


# -- metrics ----------------------------------------------------------------------------------


def test_perfect_ranking_scores_one():
    qrels = [{"a": 1}, {"b": 2, "c": 1}]
    metrics = retrieval_metrics([["a", "x", "y"], ["b", "c", "x"]], qrels)
    assert metrics == {"ndcg@10": 1.0, "recall@10": 1.0, "recall@100": 1.0, "mrr@10": 1.0}


def test_known_metric_values():
    assert ndcg_at_k(["x", "a"], {"a": 1}, 10) == pytest.approx(1 / math.log2(3))  # 0.6309
    # graded: gain is the grade; DCG = 1 + 2/log2(3), ideal = 2 + 1/log2(3)
    assert ndcg_at_k(["b", "a"], {"a": 2, "b": 1}, 10) == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))
    assert ndcg_at_k(["x", "a"], {"a": 1}, 1) == 0.0
    assert ndcg_at_k(["a"], {"a": 1, "b": 1}, 10) == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(["a"], {"a": 0}, 10) == 0.0  # judged non-relevant only
    assert recall_at_k(["a", "x"], {"a": 1, "b": 1}, 10) == 0.5
    ranking = [f"x{i}" for i in range(49)] + ["b"]
    assert recall_at_k(ranking, {"b": 1}, 10) == 0.0 and recall_at_k(ranking, {"b": 1}, 100) == 1.0
    assert mrr_at_k(["x", "y", "a"], {"a": 1}, 10) == pytest.approx(1 / 3)
    assert mrr_at_k(["x", "y", "a"], {"a": 1}, 2) == 0.0
    assert mrr_at_k(["z", "a"], {"z": 0, "a": 3}, 10) == 0.5
    mean = retrieval_metrics([["a"], ["x", "b"]], [{"a": 1}, {"b": 1}])
    assert mean["mrr@10"] == pytest.approx(0.75)


def test_exact_search():
    docs = torch.eye(3)
    queries = torch.tensor([[0.0, 1.0, 0.2], [1.0, 0.5, 0.0]])
    assert exact_search(queries, docs, 2).tolist() == [[1, 2], [0, 1]]
    assert exact_search(queries, docs, 100).shape == (2, 3)
    assert exact_search(queries[:0], docs).shape == (0, 3)


# -- the model --------------------------------------------------------------------------------


def test_config_validation():
    with pytest.raises(ConfigError, match="temperature"):
        RetrievalConfig(temperature=0)
    with pytest.raises(ConfigError, match="hard_negatives"):
        RetrievalConfig(hard_negatives=-1)


def test_shared_and_separate_towers(tiny_box):
    separate = DualEncoder(tiny_box, DGAConfig(), RetrievalConfig(shared_towers=False))
    shared = DualEncoder(tiny_box, DGAConfig(), RetrievalConfig(shared_towers=True))
    keys = set(separate.state_dict())
    assert any(k.startswith("doc_tower.") for k in keys) and any(k.startswith("query_tower.") for k in keys)
    assert not any(k.startswith("doc_tower.") for k in shared.state_dict())
    assert shared.doc_encoder is shared.query_tower and separate.doc_encoder is not separate.query_tower
    assert separate.num_trainable() == 2 * shared.num_trainable() - 1  # one temperature either way
    fixed = DualEncoder(tiny_box, DGAConfig(), RetrievalConfig(learn_temperature=False))
    assert fixed.num_trainable() == separate.num_trainable() - 1


def test_gradients_reach_only_adapters(tiny_box, beir):
    train, _ = beir
    model = DualEncoder(tiny_box, DGAConfig())
    module = backbone_module(tiny_box)
    digest = model_digest(module)
    model.loss(train.subset(range(8))).backward()
    assert all(p.grad is not None for p in model.trainable_parameters())
    assert all(p.grad is None and not p.requires_grad for p in module.parameters())
    assert model_digest(module) == digest == tiny_box.spec.model_digest


def test_several_positives_are_masked(tiny_box, tmp_path):
    folder = synthetic_beir(tmp_path / "t")
    train = load_beir(folder, "train")
    # q0 judges two documents; q1 judges one of them: whichever q0 draws, the other is no negative
    train.qrels[0] = {"red-car": 1, "blue-sky": 1}
    train.qrels[1] = {"blue-sky": 1}
    model = DualEncoder(tiny_box, DGAConfig())
    with torch.no_grad():
        losses = {float(model.loss(train.subset([0, 1]))) for _ in range(6)}
    assert all(math.isfinite(v) for v in losses)


def losses_before_after(model, batch, steps: int, lr: float) -> tuple[float, float]:
    """The loss on ``batch`` before and after ``steps`` AdamW steps on it."""
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=lr)
    with torch.no_grad():
        before = float(model.loss(batch))
    for _ in range(steps):
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    with torch.no_grad():
        return before, float(model.loss(batch))


def test_short_training_lowers_loss(tiny_box, beir):
    train, _ = beir
    torch.manual_seed(0)
    model = DualEncoder(tiny_box, DGAConfig())
    before, after = losses_before_after(model, train.subset(range(len(train))), 25, 5e-3)
    assert after < before - 0.1


def test_trainer_with_hard_negatives(tiny_box, beir, tmp_path):
    train, test = beir
    model = DualEncoder(tiny_box, DGAConfig(), RetrievalConfig(hard_negatives=2))
    model.mine_hard_negatives(train)
    for i, qid in enumerate(train.query_ids):
        negs = model._negatives[qid]
        assert len(negs) == 2 and not set(negs) & set(train.positives(i))
    tr, val = train.split(0.25, seed=0)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2, select_metric="ndcg@10", patience=None)
    result = Trainer(cfg, tmp_path / "run", progress=False).fit(model, tr, val)
    assert result.steps == 2 * math.ceil(len(tr) / 8)
    assert {"val_ndcg@10", "val_recall@10", "val_recall@100", "val_mrr@10"} <= set(result.history[0])
    assert (tmp_path / "run" / "best" / "adapter_model.safetensors").is_file()
    metrics = model.evaluate(test)
    assert set(metrics) == {"ndcg@10", "recall@10", "recall@100", "mrr@10"}
    assert metrics["recall@100"] == 1.0  # nine documents: everything is in the top 100


def test_mining_reuses_the_document_towers_box_outputs(tiny_box, beir, monkeypatch):
    """A document tower with nothing before the box keeps the bare box's outputs: mining ranks
    the corpus by them (the same negatives as the box's own encoding) without sending it again."""
    train, _ = beir
    reference = DualEncoder(tiny_box, DGAConfig(), RetrievalConfig(hard_negatives=2))  # doc side "same"
    reference.mine_hard_negatives(train)
    model = DualEncoder(tiny_box, DGAConfig(), RetrievalConfig(hard_negatives=2, doc_side="output-only"))
    docs = train.corpus.documents()
    model.doc_encoder.remember(docs, tiny_box.encode(docs))

    sent = []  # the texts the box encodes from here on
    encode_batch = type(tiny_box)._encode_batch

    def counted(box, texts):
        sent.extend(texts)
        return encode_batch(box, texts)

    monkeypatch.setattr(type(tiny_box), "_encode_batch", counted)
    monkeypatch.setattr(model.doc_encoder, "_box_outputs", lambda inputs: pytest.fail("the corpus was re-sent"))
    model.mine_hard_negatives(train)
    assert model._negatives == reference._negatives
    assert sorted(sent) == sorted(train.queries)  # the queries only


@pytest.mark.parametrize("method", ["dga-both", "lora"])
def test_bench_hard_negatives_reach_every_trained_method(tiny_backbone, tmp_path, monkeypatch, method):
    """``exotune bench retrieval --hard-negatives N``: gray and white methods alike train against
    the bare box's top N non-relevant documents; the budget is keyed apart only when set, and
    other suites refuse the option."""
    from exotune.bench import check_options, retrieval
    from exotune.bench.common import BenchOptions
    from exotune.bench.sources import BeirFolder

    trained = {}
    fit_record = retrieval.fit_record

    def fit(model, *args):
        trained["model"] = model
        return fit_record(model, *args)

    monkeypatch.setattr(retrieval, "fit_record", fit)
    folder = BeirFolder(str(synthetic_beir(tmp_path / "beir")))
    budget = retrieval.Budget(epochs=1, hard_negatives=2)
    rec = retrieval.run_one(method, "beir", 0, folder, budget, str(tiny_backbone))
    model = trained["model"]
    assert rec["hard_negatives"] == 2 and model.config.hard_negatives == 2
    train = retrieval._data("beir", folder, budget, 0)[0]
    assert set(model._negatives) == set(train.query_ids)  # mined for every training query
    for i, qid in enumerate(train.query_ids):
        assert len(model._negatives[qid]) == 2 and not set(model._negatives[qid]) & set(train.positives(i))
    assert "hard_negatives" not in retrieval.Budget().for_dataset("scifact")
    assert budget.for_dataset("scifact")["hard_negatives"] == 2
    with pytest.raises(ConfigError, match="--hard-negatives"):
        check_options(BenchOptions(suite="classification", hard_negatives=2))


def test_corpus_cache(tiny_box, beir):
    train, test = beir
    model = DualEncoder(tiny_box, DGAConfig())
    first = model.evaluate(test)
    model.evaluate(train)  # same corpus, same document tower: no re-encoding
    assert model.corpus_encodings == 1
    with torch.no_grad():
        model.query_tower.output_adapter.proj.bias.add_(0.1)  # the query side only
    model.evaluate(test)
    assert model.corpus_encodings == 1
    with torch.no_grad():
        model.doc_tower.output_adapter.proj.weight.mul_(-1.0)
    assert model.evaluate(test) != first
    assert model.corpus_encodings == 2
    shared = DualEncoder(tiny_box, DGAConfig(), RetrievalConfig(shared_towers=True))
    shared.evaluate(test)
    with torch.no_grad():
        shared.query_tower.input_adapter.shift.add_(0.5)  # the shared tower is the document tower
    shared.evaluate(test)
    assert shared.corpus_encodings == 2


def _count_box_rows(box, monkeypatch) -> list[int]:
    """Rows sent through ``box.forward`` per call, recorded in the returned list."""
    rows: list[int] = []
    forward = box.forward

    def counted(embeds, mask, *args, **kwargs):
        rows.append(embeds.shape[0])
        return forward(embeds, mask, *args, **kwargs)

    monkeypatch.setattr(box, "forward", counted)
    return rows


@pytest.mark.parametrize("input_dropout", [0.0, 0.2])  # the query side's dropout stays there
def test_doc_side_output_only(tiny_box, beir, monkeypatch, input_dropout):
    from exotune.cli import retrieval as cli_retrieval
    from exotune.tasks import retrieval

    assert cli_retrieval.DOC_SIDES == retrieval.DOC_SIDES
    with pytest.raises(ConfigError, match="doc_side"):
        RetrievalConfig(doc_side="left")
    with pytest.raises(ConfigError, match="shared_towers"):
        RetrievalConfig(shared_towers=True, doc_side="output-only")
    train, test = beir
    model = DualEncoder(tiny_box, DGAConfig(input_dropout=input_dropout), RetrievalConfig(doc_side="output-only"))
    assert model.doc_tower.input_adapter is None and model.doc_tower.output_adapter is not None
    assert model.query_tower.config.input_dropout == input_dropout
    assert model.query_tower.input_adapter is not None and model.doc_encoder.caches_box_outputs
    rows = _count_box_rows(tiny_box, monkeypatch)
    first = model.evaluate(test)
    n_docs, n_queries = len(test.corpus), len(test)
    assert sum(rows) == n_docs + n_queries
    # training steps and a changed document tower: the corpus never crosses the box again
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model.loss(train).backward()
        opt.step()
    rows.clear()
    assert model.evaluate(test) != first and model.corpus_encodings == 2
    assert sum(rows) == n_queries
    assert all(p.grad is not None for p in model.doc_tower.output_adapter.parameters())


def test_remember_seeds_the_box_output_cache(tiny_box, beir, monkeypatch, tmp_path):
    from exotune.bench.retrieval import box_corpus_outputs

    _, test = beir
    docs = test.corpus.documents()
    model = DualEncoder(tiny_box, DGAConfig.variant("output-only"), RetrievalConfig(doc_side="output-only"))
    seconds, from_disk = box_corpus_outputs(model, test.corpus, tmp_path)
    assert not from_disk and seconds > 0 and len(list(tmp_path.glob("*.safetensors"))) == 1
    expected = model.rank(test)
    fresh = DualEncoder(tiny_box, DGAConfig.variant("output-only"), RetrievalConfig(doc_side="output-only"))
    rows = _count_box_rows(tiny_box, monkeypatch)
    assert box_corpus_outputs(fresh, test.corpus, tmp_path) == (pytest.approx(seconds, abs=1e-3), True)
    assert fresh.rank(test) == expected
    assert sum(rows) == len(test)  # the queries only: the documents came from disk
    # what is remembered is what the tower answers with
    fake = torch.randn(len(docs), tiny_box.spec.output_dim)
    fresh.doc_tower.remember(docs, fake)
    assert torch.equal(fresh.doc_tower.backbone_outputs(docs[:2]), fake[:2])
    with pytest.raises(ConfigError, match="shape"):
        fresh.doc_tower.remember(docs, fake[:-1])
    with pytest.raises(ConfigError, match="caches box outputs"):
        DualEncoder(tiny_box, DGAConfig()).query_tower.remember(docs, fake)  # it has an input adapter


def test_save_load_identical_rankings(tiny_box, beir, tmp_path):
    train, test = beir
    torch.manual_seed(1)
    model = DualEncoder(tiny_box, DGAConfig(), RetrievalConfig(temperature=0.1))
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model.loss(train).backward()
        opt.step()
    folder = model.save_pretrained(tmp_path / "adapter")
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "checksums.sha256",
    ]  # README.md: the model card
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["type"] == "dga-retriever" and cfg["task"]["temperature"] == 0.1
    loaded = DualEncoder.from_pretrained(folder, tiny_box)
    assert loaded.rank(test) == model.rank(test)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


def test_spec_mismatch(tiny_box, tmp_path):
    from exotune.boxes import load_box

    folder = DualEncoder(tiny_box, DGAConfig()).save_pretrained(tmp_path / "adapter")
    other = load_box(str(build_tiny_backbone(tmp_path / "other", seed=1)))
    with pytest.raises(SpecMismatchError, match="model_digest"):
        DualEncoder.from_pretrained(folder, other)


# -- command line -----------------------------------------------------------------------------


def test_cli_train_and_eval(tiny_backbone, tmp_path, capsys):
    synthetic_beir(tmp_path / "data" / "scifact")
    common = [
        "--task",
        "retrieval",
        "--dataset",
        "scifact",
        "--data-dir",
        str(tmp_path / "data"),
        "--backbone",
        str(tiny_backbone),
    ]
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                *common,
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--hard-negatives",
                "1",
                "--output-dir",
                str(run),
                "--quiet",
                "--eval-test",
            ]
        )
        == 0
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and "ndcg@10" in summary["test"]
    config = json.loads((run / "best" / "adapter_config.json").read_text())
    assert config["type"] == "dga-retriever" and config["task"]["hard_negatives"] == 1
    capsys.readouterr()
    assert main(["eval", *common, "--adapter", str(run / "best"), "--split", "test", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics == pytest.approx(summary["test"])
    assert main(["eval", *common, "--zero-shot"]) == 0
    out = capsys.readouterr().out
    assert "scifact-test: nDCG@10" in out and "9 documents" in out


def test_cli_lga_retrieval(tiny_backbone, tmp_path, capsys):
    """Entry tokens through the command line: trained on a light-gray box, evaluated on the
    box rebuilt from the adapter's spec; the document tower without them (--doc-side)."""
    synthetic_beir(tmp_path / "data" / "scifact")
    common = [
        "--task",
        "retrieval",
        "--dataset",
        "scifact",
        "--data-dir",
        str(tmp_path / "data"),
        "--backbone",
        str(tiny_backbone),
    ]
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                *common,
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--entry-points",
                "all",
                "--entry-tokens",
                "2",
                "--doc-side",
                "output-only",
                "--output-dir",
                str(run),
                "--quiet",
                "--eval-test",
            ]
        )
        == 0
    )
    config = json.loads((run / "best" / "adapter_config.json").read_text())
    assert config["access"] == "light-gray" and config["task"]["doc_side"] == "output-only"
    assert config["dga"]["entry_tokens"]["tokens"] == 2 and config["box_spec"]["entry_points"]
    summary = json.loads((run / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", *common, "--adapter", str(run / "best"), "--split", "test", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(summary["test"])


def test_cli_retrieval_errors(tiny_backbone, tmp_path, capsys):
    assert main(["eval", "--task", "retrieval", "--file", "x.csv", "--zero-shot"]) == 2
    assert "--dataset" in capsys.readouterr().err
    assert (
        main(["eval", "--task", "retrieval", "--dataset", "scifact", "--data-dir", str(tmp_path), "--zero-shot"]) == 2
    )
    assert str(tmp_path / "scifact") in capsys.readouterr().err
    synthetic_beir(tmp_path / "scifact")
    classifier_dir = tmp_path / "cls"
    assert (
        main(
            [
                "eval",
                "--task",
                "retrieval",
                "--dataset",
                "scifact",
                "--data-dir",
                str(tmp_path),
                "--adapter",
                str(classifier_dir),
                "--backbone",
                str(tiny_backbone),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
