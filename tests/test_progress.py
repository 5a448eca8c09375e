"""Progress off a terminal: a log line every N seconds with count, rate and ETA; --quiet: none."""

from __future__ import annotations

import logging

from exotune.cli import main
from exotune.progress import ProgressLog, duration, progress_bar


class Lines(logging.Handler):
    """The exotune.progress lines (the CLI's logger does not propagate to the root's caplog)."""

    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    def __enter__(self):
        log = logging.getLogger("exotune.progress")
        self.level = log.level
        log.setLevel(logging.INFO)  # setLevel, not an assignment: it clears the logger's cached answers
        log.addHandler(self)
        return self

    def __exit__(self, *exc):
        log = logging.getLogger("exotune.progress")
        log.removeHandler(self)
        log.setLevel(self.level)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_log_lines_have_count_rate_and_eta():
    clock = Clock()
    bar = ProgressLog(total=100, desc="encode", every=10, clock=clock)
    with Lines() as seen:
        for i in range(5):  # 10 items every 5 s; a line every 10 s
            if i == 3:
                bar.set_postfix(loss="0.5")
            clock.now += 5
            bar.update(10)
        bar.close()
    assert seen.lines == [
        "encode: 20/100 (20%), 2/s, ETA 0m40s",
        "encode: 40/100 (40%), 2/s, ETA 0m30s, loss 0.5",
        "encode: done, 50 in 0m25s",
    ]
    assert duration(3725) == "1h02m"


def test_disabled_bar_says_nothing():
    bar = progress_bar(total=3, desc="x", enabled=False)
    with Lines() as seen:
        bar.update(3)
        bar.close()
    assert seen.lines == []


def write(path):
    path.write_text("text,label\n" + "".join(f"the car is {c},{c}\n" for c in ("red", "blue") * 8))
    return path


def test_training_off_a_terminal_logs_progress_and_quiet_silences_it(tiny_backbone, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EXOTUNE_PROGRESS_SECONDS", "0")  # a line at every step
    argv = [
        "train",
        "--file",
        str(write(tmp_path / "d.csv")),
        "--backbone",
        str(tiny_backbone),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--val-fraction",
        "0.25",
    ]
    assert main([*argv, "--output-dir", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "epoch 1/1: 1/3 (33%)" in err and "/s, ETA" in err and "\r" not in err
    assert main(["--quiet", *argv, "--output-dir", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "epoch 1/1:" not in err and "ETA" not in err and "Loading" not in err


def test_the_trainer_can_say_one_line_per_epoch_and_no_bar(tiny_box):
    """``progress="epochs"`` (a benchmark's log): a line per epoch with its validation score."""
    import pytest

    from exotune.errors import ConfigError
    from exotune.graybox import DGAConfig
    from exotune.tasks.classification import TextClassifier
    from exotune.train import TrainConfig, Trainer

    from .conftest import colour_data

    train, val = colour_data(48, seed=0), colour_data(16, seed=1)
    model = TextClassifier(tiny_box, train.label_names, DGAConfig())
    with Lines() as seen:
        Trainer(TrainConfig(epochs=2, batch_size=16, patience=None), progress="epochs").fit(model, train, val)
    assert [line.split(":")[0] for line in seen.lines] == ["epoch 1", "epoch 2"], seen.lines
    assert all("val accuracy" in line for line in seen.lines)
    with pytest.raises(ConfigError, match="progress"):
        Trainer(progress="bars")
