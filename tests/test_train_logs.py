"""Training logs and control: CSV logs of steps and epochs, Trainer callbacks, TensorBoard only
with its extra, a non-empty run folder refused without --resume or --overwrite, and a finished
run extended by resuming with more epochs."""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest

from exotune.callbacks import LOGS_DIR, TrainerCallback
from exotune.cli import main
from exotune.errors import ConfigError
from exotune.graybox import DGAConfig
from exotune.tasks.classification import TextClassifier
from exotune.train import TrainConfig, Trainer

from .conftest import colour_data

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = dict(batch_size=16, lr=2e-2, patience=None, checkpoint_every=3)


def rows(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


class Recorder(TrainerCallback):
    def __init__(self):
        self.calls = {"on_train_begin": [], "on_step": [], "on_evaluate": [], "on_epoch": []}

    def on_train_begin(self, info):
        self.calls["on_train_begin"].append(info)

    def on_step(self, info):
        self.calls["on_step"].append(info)

    def on_evaluate(self, metrics):
        self.calls["on_evaluate"].append(metrics)

    def on_epoch(self, info):
        self.calls["on_epoch"].append(info)


def model_and_data(box):
    train, val = colour_data(48, seed=0), colour_data(20, seed=1)
    return TextClassifier(box, train.label_names, DGAConfig.variant("output-only")), train, val


def test_callbacks_and_csv_logs(tiny_box, tmp_path):
    model, train, val = model_and_data(tiny_box)
    spy = Recorder()
    result = Trainer(TrainConfig(epochs=2, **FAST), tmp_path, progress=False, callbacks=[spy]).fit(model, train, val)
    assert result.steps == 6  # 48 examples, batches of 16, 2 epochs
    steps = spy.calls["on_step"]
    assert [s["step"] for s in steps] == list(range(1, 7)) and [s["epoch"] for s in steps] == [1] * 3 + [2] * 3
    assert all(s["lr"] > 0 and s["loss"] > 0 for s in steps)
    assert [e["epoch"] for e in spy.calls["on_epoch"]] == [1, 2]
    assert spy.calls["on_epoch"] == result.history
    assert [m["accuracy"] for m in spy.calls["on_evaluate"]] == [h["val_accuracy"] for h in result.history]
    assert spy.calls["on_train_begin"] == [{"epoch": 0, "global_step": 0, "total_steps": 6}]
    logged = rows(tmp_path / LOGS_DIR / "steps.csv")
    assert [int(r["step"]) for r in logged] == list(range(1, 7))
    assert [float(r["loss"]) for r in logged] == pytest.approx([s["loss"] for s in steps])
    assert [float(r["lr"]) for r in logged] == pytest.approx([s["lr"] for s in steps])
    epochs = rows(tmp_path / LOGS_DIR / "epochs.csv")
    assert [float(r["val_accuracy"]) for r in epochs] == pytest.approx([h["val_accuracy"] for h in result.history])


def test_per_group_learning_rates_are_logged(tiny_box, tmp_path):
    model, train, val = model_and_data(tiny_box)
    cfg = TrainConfig(epochs=1, **{**FAST, "lr": 1e-2}, lr_output=5e-3)
    Trainer(cfg, tmp_path, progress=False).fit(model, train, val)
    first = rows(tmp_path / LOGS_DIR / "steps.csv")[0]
    assert {"lr_output", "lr_head"} <= set(first)


def test_tensorboard_is_refused_without_its_extra(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'exotune\[tensorboard\]'"):
        Trainer(TrainConfig(epochs=1, **FAST), tmp_path, report_to=["tensorboard"])
    with pytest.raises(ConfigError, match="report_to"):
        Trainer(TrainConfig(), tmp_path, report_to=["wandb"])


def test_tensorboard_event_files(tiny_box, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, train, val = model_and_data(tiny_box)
    Trainer(TrainConfig(epochs=1, **FAST), tmp_path, progress=False, report_to=["tensorboard"]).fit(model, train, val)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr", "epoch/val_accuracy"} <= set(events.Tags()["scalars"])
    assert [s.step for s in events.Scalars("train/loss")] == [1, 2, 3]


def test_resume_with_more_epochs_extends_a_finished_run(tiny_box, tmp_path):
    model, train, val = model_and_data(tiny_box)
    Trainer(TrainConfig(epochs=1, **FAST), tmp_path, progress=False).fit(model, train, val)
    model, _, _ = model_and_data(tiny_box)
    again = Trainer(TrainConfig(epochs=1, **FAST), tmp_path, progress=False).fit(model, train, val, resume=True)
    assert again.epochs_run == 1 and again.steps == 3  # finished: nothing more to do
    model, _, _ = model_and_data(tiny_box)
    longer = Trainer(TrainConfig(epochs=3, **FAST), tmp_path, progress=False).fit(model, train, val, resume=True)
    assert longer.epochs_run == 3 and longer.steps == 9 and [h["epoch"] for h in longer.history] == [1, 2, 3]
    assert [int(r["step"]) for r in rows(tmp_path / LOGS_DIR / "steps.csv")] == list(range(1, 10))
    assert [int(r["epoch"]) for r in rows(tmp_path / LOGS_DIR / "epochs.csv")] == [1, 2, 3]
    model, _, _ = model_and_data(tiny_box)
    with pytest.raises(ConfigError, match="has run 3 epochs already"):
        Trainer(TrainConfig(epochs=2, **FAST), tmp_path, progress=False).fit(model, train, val, resume=True)


def test_train_refuses_a_non_empty_output_dir_without_resume_or_overwrite(tiny_backbone, tmp_path, capsys):
    data = colour_data(30)
    file = tmp_path / "colours.csv"
    file.write_text(
        "text,label\n" + "".join(f"{t},{data.label_names[y]}\n" for t, y in zip(data.texts, data.labels, strict=True))
    )
    out = tmp_path / "run"
    argv = [
        "train",
        "--file",
        str(file),
        "--backbone",
        str(tiny_backbone),
        "--batch-size",
        "16",
        "--quiet",
        "--output-dir",
        str(out),
    ]
    assert main([*argv, "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main([*argv, "--epochs", "1"]) == 2
    assert "--overwrite starts over" in capsys.readouterr().err
    assert main([*argv, "--epochs", "2", "--resume"]) == 0  # extends the finished run
    assert [h["epoch"] for h in json.loads((out / "summary.json").read_text())["history"]] == [1, 2]
    (out / "notes.txt").write_text("mine")
    assert main([*argv, "--epochs", "1", "--overwrite"]) == 0  # starts over: the old run's entries are gone
    assert [h["epoch"] for h in json.loads((out / "summary.json").read_text())["history"]] == [1]
    assert len(rows(out / LOGS_DIR / "epochs.csv")) == 1
    assert (out / "notes.txt").read_text() == "mine"
