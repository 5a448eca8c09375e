"""A few tests with the packaged all-MiniLM-L6-v2 and the shared datasets (marked ``real``)."""

import json

import pytest
import torch

from exotune.boxes import load_box
from exotune.boxes.base import model_digest
from exotune.cli import main
from exotune.data import load_dataset
from exotune.graybox import DGAConfig
from exotune.tasks.classification import TextClassifier
from exotune.train import TrainConfig, Trainer

from .bench_helpers import quick_bench
from .conftest import backbone_module

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def minilm():
    return load_box()


@pytest.fixture(scope="module")
def banking(shared_data):
    train = load_dataset("banking77", "train", shared_data)
    test = load_dataset("banking77", "test", shared_data)
    return train, test


def test_minilm_spec(minilm):
    spec = minilm.spec
    assert (spec.output_dim, spec.input_dim, spec.pooling, spec.normalized) == (384, 384, "mean", True)
    assert spec.text_max_length == 256
    out = minilm.encode(["How do I top up my card?"])
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(1))


def test_zero_shot_and_short_dga_training(minilm, banking):
    train, test = banking
    tr, val = train.split(0.1, seed=0)
    tr, val, test = tr.head(640, 0), val.head(300, 0), test.head(400, 0)
    zero = TextClassifier(minilm, train.label_names).evaluate(test)["accuracy"]
    assert 0.5 < zero < 0.75  # about 0.62 on the full test split
    model = TextClassifier(minilm, train.label_names, DGAConfig())
    Trainer(TrainConfig(epochs=2, lr=3e-3, patience=None), progress=False).fit(model, tr, val)
    adapted = model.evaluate(test)["accuracy"]
    assert adapted > zero + 0.05
    # the hidden weights are bit-identical and never got a gradient
    assert model_digest(backbone_module(minilm)) == minilm.spec.model_digest
    assert all(p.grad is None for p in backbone_module(minilm).parameters())


def test_cli_train_eval_predict(shared_data, tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--dataset", "banking77", "--data-dir", str(shared_data)]
    assert (
        main(
            [
                "train",
                *common,
                "--variant",
                "output-only",
                "--max-train",
                "300",
                "--epochs",
                "1",
                "--output-dir",
                str(run),
                "--quiet",
            ]
        )
        == 0
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 10 and (run / "best" / "adapter_model.safetensors").is_file()
    capsys.readouterr()
    assert main(["eval", *common, "--adapter", str(run / "best"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0.3 < metrics["accuracy"] <= 1.0
    assert (
        main(["predict", "--adapter", str(run / "best"), "--text", "my card has not arrived yet", "--top-k", "2"]) == 0
    )
    first = capsys.readouterr().out.splitlines()[0]
    assert "card" in first.split("\t")[0]


def test_bench_quick_smoke(shared_data, tmp_path, capsys):
    out = tmp_path / "results"
    doc = quick_bench("classification", shared_data, out, "--methods", "zero-shot", "linear-probe", "dga-both")
    assert {r["method"] for r in doc["records"]} == {"zero-shot", "linear-probe", "dga"}
    assert (out / "classification.md").is_file() and (out / "classification_params.png").is_file()


def test_bench_retrieval_quick_smoke(shared_data, tmp_path):
    out = tmp_path / "results"
    doc = quick_bench("retrieval", shared_data, out, "--methods", "zero-shot", "dga-output-only")
    assert {r["metric"] for r in doc["records"]} == {"ndcg@10", "recall@10", "recall@100", "mrr@10"}


def test_bench_remote_quick_smoke(shared_data, tmp_path):
    out = tmp_path / "results"
    doc = quick_bench("remote", shared_data, out)
    acc = {r["variant"]: r["mean"] for r in doc["records"] if r["metric"] == "accuracy"}
    assert abs(acc["local"] - acc["remote"]) <= 0.005  # same seed, same batches, same gradients
    assert all(t["failed"] == 0 for t in doc["throughput"])


def test_bench_ea_quick_smoke(shared_data, tmp_path):
    out = tmp_path / "results"
    doc = quick_bench("ea", shared_data, out)
    methods = {r["method"] for r in doc["records"]}
    assert methods == {"ea", "lm", "ssm", "linear-probe", "lora"}
    assert (out / "ea_cost_quality.png").is_file()


def test_bench_steps_quick_smoke(shared_data, tmp_path):
    out = tmp_path / "results"
    doc = quick_bench("steps", shared_data, out, "--methods", "dga-both", "lora")
    by = {r["method"]: r for r in doc["records"]}
    assert set(by) == {"dga", "lora"} and all(r["batch_size"] == 8 and r["seconds_per_step"] > 0 for r in by.values())
    assert all(r["trainable_params"] > 0 and r["peak_memory_mb"] > 0 for r in by.values())
    assert (out / "steps.png").is_file() and "| banking77 | lora |" in (out / "steps.md").read_text()


@pytest.mark.parametrize("level", ["dark-gray", "light-gray"])
def test_remote_minilm_gradients_equal_the_local_box(level):
    """The served MiniLM gives the local box's outputs and gradients (float tolerance)."""
    pytest.importorskip("fastapi")
    from .serve_helpers import make_app, remote

    kwargs = {"entry_points": "all", "entry_tokens_max": 4} if level == "light-gray" else {}
    local = load_box(**kwargs)
    box = remote(make_app(local))
    texts = ["my card has not arrived yet", "how do I top up by bank transfer?"]
    g = torch.Generator().manual_seed(0)
    tokens = {"layer.0": torch.randn(2, 384, generator=g) * 0.02, "layer.3": torch.randn(2, 384, generator=g) * 0.02}
    w = torch.randn(384, generator=g)
    results = []
    for b in (local, box):
        batch = local.embed(texts)
        embeds = batch.embeds.clone().requires_grad_(True)
        entry = {k: v.clone().requires_grad_(True) for k, v in tokens.items()} if level == "light-gray" else {}
        out = b.forward(embeds, batch.mask, entry or None)
        (out @ w).pow(2).sum().backward()
        results.append((out.detach(), embeds.grad, {k: v.grad for k, v in entry.items()}))
    (o1, g1, e1), (o2, g2, e2) = results
    assert (o1 - o2).abs().max() < 1e-5
    assert (g1 - g2).abs().max() < 1e-5 and g1.abs().sum() > 0
    assert e1.keys() == e2.keys() and all((e1[k] - e2[k]).abs().max() < 1e-5 for k in e1)
