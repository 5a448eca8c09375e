"""White-box baselines (LoRA through PEFT, full fine-tuning) on a tiny random BERT."""

from __future__ import annotations

import json

import pytest
import torch

from exotune.boxes import load_box
from exotune.errors import ArtifactError, ConfigError, SpecMismatchError
from exotune.tasks.classification import ClassificationConfig, TextClassifier
from exotune.train import TrainConfig, Trainer
from exotune.whitebox import WhiteBoxClassifier, WhiteBoxConfig, lora_target_names

from .conftest import build_tiny_backbone, colour_data

peft = pytest.importorskip("peft")

COLOURS = ["red", "blue", "green"]
R = 4


def make(backbone, wb: WhiteBoxConfig, **kwargs) -> WhiteBoxClassifier:
    torch.manual_seed(0)
    return WhiteBoxClassifier.from_backbone(str(backbone), COLOURS, wb, **kwargs)


def named(model, lora: bool):
    return {n: p.detach().clone() for n, p in model.encoder.model.named_parameters() if ("lora_" in n) == lora}


def fit(model, epochs: int = 1, lr: float = 1e-2, n: int = 64):
    train, val = colour_data(n).split(0.25, seed=0)
    cfg = TrainConfig(epochs=epochs, batch_size=16, lr=lr, patience=None, warmup_ratio=0.0, schedule="constant")
    return Trainer(cfg, progress=False).fit(model, train, val)


# -- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"mode": "adapter"}, "mode must be one of"),
        ({"r": 0}, "r (the LoRA rank)"),
        ({"alpha": 0}, "alpha must be > 0"),
        ({"dropout": 1.0}, "dropout must be in"),
        ({"target_modules": ()}, "target_modules"),
    ],
)
def test_config_rejects_bad_values(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        WhiteBoxConfig(**kwargs)


def test_config_round_trip_and_variants():
    cfg = WhiteBoxConfig.lora(r=8, dense=True)
    assert cfg.alpha == 16 and cfg.variant_name == "r=8,dense"
    assert WhiteBoxConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert WhiteBoxConfig.full_ft().variant_name == "all"
    with pytest.warns(UserWarning, match="unknown white-box config keys"):
        WhiteBoxConfig.from_dict({"mode": "lora", "device": "cpu"})


# -- LoRA --------------------------------------------------------------------------------------


def test_lora_trains_only_lora_and_head(tiny_backbone):
    model = make(tiny_backbone, WhiteBoxConfig.lora(r=R))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    lora_layers = [m for m in model.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    # two layers x query/key/value, each A (r x in) + B (out x r); the pooler is never adapted
    assert len(lora_layers) == 2 * 3
    expected = sum(R * (m.in_features + m.out_features) for m in lora_layers)
    head = sum(p.numel() for p in model.head.parameters())
    assert model.num_trainable() == expected + head


def test_lora_dense_targets_skip_the_pooler(tiny_backbone):
    from transformers import AutoModel

    names = lora_target_names(AutoModel.from_pretrained(tiny_backbone), ("query", "key", "value", "dense"))
    assert len(names) == 2 * 6 and not any(n.startswith("pooler") for n in names)
    with pytest.raises(ConfigError, match="no linear layer"):
        lora_target_names(AutoModel.from_pretrained(tiny_backbone), ("q_lin",))


def test_lora_training_changes_lora_not_base(tiny_backbone):
    model = make(tiny_backbone, WhiteBoxConfig.lora(r=R))
    base, lora = named(model, False), named(model, True)
    fit(model)
    after_base, after_lora = named(model, False), named(model, True)
    assert all(torch.equal(base[n], after_base[n]) for n in base)
    assert any(not torch.equal(lora[n], after_lora[n]) for n in lora if "lora_B" in n)
    assert all(p.grad is None for n, p in model.encoder.model.named_parameters() if "lora_" not in n)


def test_lora_state_dict_holds_only_what_is_trained(tiny_backbone):
    model = make(tiny_backbone, WhiteBoxConfig.lora(r=R))
    state = model.state_dict()
    assert all("lora_" in k or k.startswith("head.") for k in state)
    model.load_state_dict(state)  # strict round trip
    with pytest.raises(ArtifactError, match="missing"):
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith("head.")})


# -- full fine-tuning ---------------------------------------------------------------------------


def test_full_ft_trains_every_used_weight(tiny_backbone):
    model = make(tiny_backbone, WhiteBoxConfig.full_ft())
    frozen = {n for n, p in model.encoder.model.named_parameters() if not p.requires_grad}
    assert frozen == {"pooler.dense.weight", "pooler.dense.bias"}  # off the pooled path
    before = named(model, False)
    fit(model)
    after = named(model, False)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == set(before) - frozen


def test_dropout_follows_the_wrapper(tiny_backbone):
    model = make(tiny_backbone, WhiteBoxConfig.lora(r=R))
    model.train()
    assert model.encoder.model.training
    fit(model)  # the Trainer leaves the model in eval
    assert not model.training and not model.encoder.model.training
    texts = colour_data(8).texts
    torch.testing.assert_close(model(texts), model(texts))  # eval: no dropout


# -- step 0 is zero-shot -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["lora", "full-ft"])
@pytest.mark.parametrize("normalize", [False, True])
def test_step_zero_equals_zero_shot(tiny_backbone, mode, normalize):
    task = ClassificationConfig(label_template="the {}")
    box = load_box(str(tiny_backbone), pooling="mean", normalize=normalize)
    gray = TextClassifier(box, COLOURS, config=task)
    white = make(tiny_backbone, WhiteBoxConfig(mode=mode, r=R), config=task, normalize=normalize).eval()
    torch.testing.assert_close(white.head.prototypes, gray.head.prototypes)
    texts = colour_data(20).texts
    torch.testing.assert_close(white.predict_proba(texts), gray.predict_proba(texts))


# -- artifacts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("wb", [WhiteBoxConfig.lora(r=R), WhiteBoxConfig.full_ft()], ids=["lora", "full-ft"])
def test_save_load_round_trip(tiny_backbone, tmp_path, wb):
    model = make(tiny_backbone, wb)
    fit(model)
    folder = model.save_pretrained(tmp_path / "run")
    loaded = WhiteBoxClassifier.from_pretrained(folder)
    texts = colour_data(20, seed=3).texts
    torch.testing.assert_close(loaded.predict_proba(texts), model.predict_proba(texts), rtol=0, atol=0)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["access"] == "white" and cfg["whitebox"]["mode"] == wb.mode
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    if wb.mode == "lora":  # never the base weights
        assert files == {"README.md", "adapter_config.json", "adapter_model.safetensors", "checksums.sha256"}
    else:
        assert {"encoder/model.safetensors", "encoder/config.json"} <= files


def test_lora_refuses_other_base_weights(tiny_backbone, tmp_path):
    folder = make(tiny_backbone, WhiteBoxConfig.lora(r=R)).save_pretrained(tmp_path / "run")
    other = build_tiny_backbone(tmp_path / "other", seed=1)
    with pytest.raises(SpecMismatchError, match="base weights"):
        WhiteBoxClassifier.from_pretrained(folder, backbone=str(other))


def test_from_pretrained_rejects_gray_box_folder(tiny_box, tmp_path):
    folder = TextClassifier(tiny_box, COLOURS).save_pretrained(tmp_path / "gray")
    with pytest.raises(ArtifactError, match="expected 'whitebox-classifier'"):
        WhiteBoxClassifier.from_pretrained(folder)


# -- the Trainer protocol -----------------------------------------------------------------------------


@pytest.mark.parametrize("wb", [WhiteBoxConfig.lora(r=R), WhiteBoxConfig.full_ft()], ids=["lora", "full-ft"])
def test_trainer_fits_with_checkpoints(tiny_backbone, tmp_path, wb):
    model = make(tiny_backbone, wb, config=ClassificationConfig(head="linear"))
    train, val = colour_data(48).split(0.25, seed=0)
    cfg = TrainConfig(epochs=2, batch_size=12, lr=5e-3, checkpoint_every=2)
    result = Trainer(cfg, tmp_path / "run", progress=False).fit(model, train, val)
    assert result.steps == 6 and len(result.history) == 2 and 0.0 <= result.best_metric <= 1.0
    assert result.seconds_per_step > 0
    best = WhiteBoxClassifier.from_pretrained(result.best_dir)
    assert best.evaluate(val)["accuracy"] == pytest.approx(result.best_metric)


# -- the benchmark suite, in-process, on the tiny backbone ---------------------------------------------


@pytest.fixture
def tiny_banking(tmp_path):
    """A fake banking77 folder: the colour task in the shared dataset's layout."""
    import csv

    folder = tmp_path / "data" / "banking77"
    folder.mkdir(parents=True)
    (folder / "categories.json").write_text(json.dumps(COLOURS))
    for split, n, seed in (("train", 80, 0), ("test", 24, 1)):
        data = colour_data(n, seed)
        with open(folder / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "category"])
            w.writerows((t, COLOURS[y]) for t, y in zip(data.texts, data.labels, strict=True))
    return folder.parent


def test_bench_white_box_records(tiny_backbone, tiny_banking, tmp_path):
    from exotune.bench import classification
    from exotune.bench.common import aggregate, write_results

    budget = classification.Budget(epochs=1, max_train=32, max_val=16, max_test=16, batch_size=16)
    records = []
    for name in ("lora", "full-ft", "zero-shot"):
        run = classification.run_one(name, "banking77", 0, tiny_banking, budget, str(tiny_backbone))
        records += [aggregate([run], "accuracy"), aggregate([run], "macro_f1")]
    lora, full = records[0], records[2]
    from exotune.defaults import CLASSIFICATION  # the committed tables' rates

    assert (lora["method"], lora["variant"], lora["access"], lora["lr"]) == (
        "lora",
        "r=8",
        "white",
        CLASSIFICATION.lr_for("lora"),
    )
    assert (full["method"], full["variant"], full["access"], full["lr"]) == (
        "full-ft",
        "all",
        "white",
        CLASSIFICATION.lr_for("full-ft"),
    )
    assert lora["trainable_params"] < full["trainable_params"]
    for r in (lora, full):
        assert r["steps"] == 2 and r["seconds_per_step"] > 0 and r["peak_memory_mb"] > 0
        assert r["eval_examples_per_second"] > 0 and (r["n_train"], r["n_val"], r["n_test"]) == (
            32,
            8,
            16,
        )  # 10% of 80 held out
    path = write_results("classification", records, tmp_path / "out", {"budget": {}}, "exotune bench")
    md = path.with_suffix(".md").read_text()
    assert "## banking77" in md and "| lora | r=8 | white |" in md
    assert (tmp_path / "out" / "classification_step_time.png").is_file()


def test_budget_caps_and_learning_rates():
    from exotune.bench.classification import Budget

    b = Budget()
    assert (b.train_cap("banking77"), b.train_cap("sst2"), b.val_cap("sst2")) == (None, 4000, 2000)
    assert Budget(max_train=256).train_cap("sst2") == 256
    assert (b.lr_for("dga"), b.lr_for("lora"), b.lr_for("full-ft")) == (5e-3, 2e-3, 2e-4)  # exotune.defaults


@pytest.mark.real
def test_bench_quick_white_box(shared_data, tmp_path):
    from .bench_helpers import RECORD_KEYS, quick_bench

    out = tmp_path / "results"
    required = {*RECORD_KEYS, "eval_examples_per_second", "lr"}
    doc = quick_bench("classification", shared_data, out, "--methods", "lora", "full-ft", record_keys=required)
    assert {(r["method"], r["variant"], r["access"]) for r in doc["records"]} == {
        ("lora", "r=8", "white"),
        ("full-ft", "all", "white"),
    }
    by = {r["method"]: r for r in doc["records"] if r["metric"] == "accuracy"}
    assert 0 < by["lora"]["trainable_params"] < by["full-ft"]["trainable_params"]
    assert by["full-ft"]["trainable_params"] > 20_000_000  # all of MiniLM-L6 but its pooler
    assert all(r["steps"] <= 8 for r in by.values())
    assert (out / "classification_step_time.png").is_file()


def test_bench_cli_learning_rates_reach_the_budget(monkeypatch, tmp_path, capsys):
    import exotune.bench as bench
    from exotune.cli import main

    seen = []

    def fake_run(fn, name, dataset, seed, data_dir, budget, backbone):
        seen.append((name, budget.lr_for(bench.classification.METHODS[name][0]), budget.train_cap(dataset)))
        method, variant, access = bench.classification.METHODS[name]
        return {
            "dataset": dataset,
            "split": "test",
            "method": method,
            "variant": variant,
            "access": access,
            "seed": seed,
            "trainable_params": 1,
            "train_seconds": 1.0,
            "seconds_per_step": 0.1,
            "peak_memory_mb": 1.0,
            "metrics": {"accuracy": 0.5, "macro_f1": 0.4},
        }

    monkeypatch.setattr(bench, "run_isolated", fake_run)
    argv = [
        "bench",
        "classification",
        "--datasets",
        "sst2",
        "--methods",
        "dga-both",
        "lora",
        "full-ft",
        "--seeds",
        "0",
        "--lr",
        "lora=5e-4",
        "dga=3e-3",
        "--out-dir",
        str(tmp_path),
    ]
    assert main(argv) == 0
    assert seen == [("dga-both", 3e-3, 4000), ("lora", 5e-4, 4000), ("full-ft", 2e-4, 4000)]  # full-ft: the default
    doc = json.loads((tmp_path / "classification.json").read_text())
    assert doc["budget"]["method_lr"]["lora"] == 5e-4 and doc["budget"]["train_cap"] == 4000
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["bench", "classification", "--lr", "lora"])
    assert "METHOD=LR" in capsys.readouterr().err
