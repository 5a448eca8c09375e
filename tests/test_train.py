import json

import pytest
import torch

from exotune.errors import ConfigError
from exotune.graybox import DGAConfig
from exotune.tasks.classification import ClassificationConfig, TextClassifier
from exotune.train import SCHEDULES, TrainConfig, Trainer

from .conftest import backbone_module, colour_data

FAST = dict(batch_size=16, lr=2e-2, patience=None, checkpoint_every=3)


def _snapshot(box):
    return {k: v.clone() for k, v in backbone_module(box).state_dict().items()}


def test_training_touches_only_adapters_and_learns(tiny_box):
    train, val = colour_data(160, seed=0), colour_data(60, seed=1)
    before = _snapshot(tiny_box)
    model = TextClassifier(tiny_box, train.label_names, DGAConfig(), ClassificationConfig(head="linear"))
    start = model.evaluate(val)["accuracy"]
    adapter_before = {k: v.clone() for k, v in model.state_dict().items()}
    result = Trainer(TrainConfig(epochs=8, **FAST), progress=False).fit(model, train, val)
    after = backbone_module(tiny_box).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical
    assert all(p.grad is None for p in backbone_module(tiny_box).parameters())
    # both sides of the box were trained
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, adapter_before[k])}
    assert any(k.startswith("encoder.input_adapter.") for k in changed)
    assert any(k.startswith("encoder.output_adapter.") for k in changed)
    assert result.best_metric > max(start, 0.6)
    assert result.history[0]["train_loss"] > result.history[-1]["train_loss"]


def test_best_checkpoint_is_chosen_on_validation(tiny_box, tmp_path):
    train, val = colour_data(64, seed=0), colour_data(30, seed=1)
    model = TextClassifier(tiny_box, train.label_names, DGAConfig.variant("output-only"))
    result = Trainer(TrainConfig(epochs=4, **FAST), tmp_path, progress=False).fit(model, train, val)
    best_val = max(h["val_accuracy"] for h in result.history)
    assert result.best_metric == best_val
    assert result.history[result.best_epoch - 1]["val_accuracy"] == best_val
    assert model.evaluate(val)["accuracy"] == best_val  # the best weights are restored
    reloaded = TextClassifier.from_pretrained(tmp_path / "best", tiny_box)
    assert reloaded.evaluate(val)["accuracy"] == best_val


def test_early_stopping(tiny_box):
    train, val = colour_data(32, seed=0), colour_data(20, seed=1)
    model = TextClassifier(tiny_box, train.label_names, DGAConfig.variant("output-only"))
    cfg = TrainConfig(epochs=30, batch_size=16, lr=1e-9, patience=2)  # lr too small to improve
    result = Trainer(cfg, progress=False).fit(model, train, val)
    assert result.epochs_run == 3


class Crash(Exception):
    pass


def _crashing(model, at_step):
    """Make ``model.loss`` raise on its ``at_step``-th call, as a crash would."""
    original, calls = model.loss, {"n": 0}

    def loss(data):
        calls["n"] += 1
        if calls["n"] == at_step:
            raise KeyboardInterrupt
        return original(data)

    model.loss = loss
    return model


def test_resume_after_a_crash_matches_an_uninterrupted_run(tiny_box, tmp_path):
    train, val = colour_data(80, seed=0), colour_data(30, seed=1)
    cfg = TrainConfig(epochs=3, **FAST)

    def fresh():
        torch.manual_seed(0)
        return TextClassifier(tiny_box, train.label_names, DGAConfig())

    reference = fresh()
    Trainer(cfg, tmp_path / "ref", progress=False).fit(reference, train, val)

    crashed = _crashing(fresh(), at_step=9)  # mid-epoch 2 (5 steps per epoch)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, tmp_path / "run", progress=False).fit(crashed, train, val)
    state = json.loads((tmp_path / "run" / "last" / "trainer_state.json").read_text())
    assert state["state"]["global_step"] == 8  # nothing lost: saved on the way out
    resumed = fresh()
    result = Trainer(cfg, tmp_path / "run", progress=False).fit(resumed, train, val, resume=True)
    assert result.steps == 15
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, atol=1e-6, rtol=1e-5)


def test_checkpoints_are_json_and_safetensors_only(tiny_box, tmp_path):
    train, val = colour_data(32, seed=0), colour_data(20, seed=1)
    model = TextClassifier(tiny_box, train.label_names, DGAConfig())
    Trainer(TrainConfig(epochs=1, **FAST), tmp_path, progress=False).fit(model, train, val)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == [
        "best/README.md",
        "best/adapter_config.json",
        "best/adapter_model.safetensors",
        "best/checksums.sha256",
        "last/checkpoint.safetensors",
        "last/checksums.sha256",
        "last/trainer_state.json",
        "logs/epochs.csv",
        "logs/steps.csv",
    ]  # README: the model card


def test_resume_refuses_changed_settings(tiny_box, tmp_path):
    train, val = colour_data(32, seed=0), colour_data(20, seed=1)
    model = TextClassifier(tiny_box, train.label_names, DGAConfig.variant("output-only"))
    Trainer(TrainConfig(epochs=1, **FAST), tmp_path, progress=False).fit(model, train, val)
    with pytest.raises(ConfigError, match="lr"):
        Trainer(TrainConfig(epochs=1, **{**FAST, "lr": 0.5}), tmp_path, progress=False).fit(
            model, train, val, resume=True
        )


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_schedule_trains_and_resumes(schedule, tiny_box, tmp_path):
    train, val = colour_data(40, seed=0), colour_data(20, seed=1)
    model = TextClassifier(tiny_box, train.label_names, DGAConfig.variant("output-only"))
    cfg = TrainConfig(epochs=2, schedule=schedule, **FAST)
    Trainer(cfg, tmp_path, progress=False).fit(model, train, val)
    result = Trainer(cfg, tmp_path, progress=False).fit(model, train, val, resume=True)
    assert result.epochs_run == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epochs": 0}, "epochs"),
        ({"lr": 0}, "lr"),
        ({"schedule": "zigzag"}, "schedule"),
        ({"warmup_ratio": 1.0}, "warmup_ratio"),
        ({"patience": 0}, "patience"),
        ({"max_steps": 0}, "max_steps"),
    ],
)
def test_train_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kwargs)


def test_empty_data_is_refused(tiny_box):
    train = colour_data(10)
    model = TextClassifier(tiny_box, train.label_names, DGAConfig())
    with pytest.raises(ConfigError, match="non-empty"):
        Trainer(progress=False).fit(model, train, train.subset([]))


def test_grouped_batches_cover_every_example_once_with_little_padding():
    import numpy as np

    from exotune.batching import grouped_batches, length_sorted

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, size=1000)
    g = torch.Generator().manual_seed(0)
    batches = grouped_batches(lengths, 16, g, group=10)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    assert spread < 20  # random batches of 16 would spread over ~90
    again = grouped_batches(lengths, 16, torch.Generator().manual_seed(0), group=10)
    assert all((a == b).all() for a, b in zip(batches, again, strict=True))
    texts = ["a" * int(n) for n in lengths[:50]]
    order = np.concatenate(length_sorted(texts, 7))
    assert sorted(order.tolist()) == list(range(50))


def test_inference_order_is_restored(tiny_box):
    texts = ["the red car is very fast and big", "blue", "a sky", "green leaf is small today"]
    together = tiny_box.encode(texts, batch_size=2)
    one_by_one = torch.cat([tiny_box.encode([t]) for t in texts])
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=1e-5)
