"""Trainer callbacks: hooks for users' own integrations, and the run folder's logs (CSV always,
TensorBoard with the optional extra).

A callback overrides any of ``on_train_begin``, ``on_step``, ``on_evaluate`` and ``on_epoch``;
each receives a plain dict, so that an integration depends on no class of exotune's:

- ``on_train_begin({"epoch", "global_step", "total_steps"})``: where the run starts (a resumed
  run starts where its checkpoint stopped);
- ``on_step({"step", "epoch", "loss", "lr", "lr_<group>"...})``: after each optimisation step;
- ``on_evaluate({"epoch", <metric>: value...})``: after each validation pass;
- ``on_epoch({"epoch", "train_loss", "val_<metric>"...})``: at the end of each epoch.
"""

from __future__ import annotations

import csv
from pathlib import Path

from exotune.errors import ConfigError

LOGS_DIR = "logs"
STEPS_CSV, EPOCHS_CSV = "steps.csv", "epochs.csv"
TENSORBOARD_DIR = "tensorboard"
REPORT_TO = ("tensorboard",)


class TrainerCallback:
    """No-op hooks; subclass and override the ones you need."""

    def on_train_begin(self, info: dict) -> None:
        pass

    def on_step(self, info: dict) -> None:
        pass

    def on_evaluate(self, metrics: dict) -> None:
        pass

    def on_epoch(self, info: dict) -> None:
        pass

    def on_train_end(self) -> None:
        pass


class _CSVFile:
    """Rows appended to a CSV file whose columns are the first row's (later keys are dropped)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fields: list[str] | None = None
        if path.is_file():
            with path.open(newline="", encoding="utf-8") as f:
                self.fields = next(csv.reader(f), None)

    def keep(self, last: int, key: str) -> None:
        """Drop the rows whose ``key`` is above ``last`` (written after the checkpoint a run resumes from)."""
        if not self.path.is_file():
            return
        with self.path.open(newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r.get(key, "").isdigit() and int(r[key]) <= last]
        if self.fields:
            self._write(rows, "w", header=True)

    def append(self, row: dict) -> None:
        header = self.fields is None
        if header:
            self.fields = list(row)
        self._write([row], "a", header)

    def _write(self, rows: list[dict], mode: str, header: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open(mode, newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if header:
                writer.writeheader()
            writer.writerows(rows)


class CSVLogger(TrainerCallback):
    """``logs/steps.csv`` (step, epoch, loss, learning rates) and ``logs/epochs.csv`` (the
    epoch's mean loss and validation metrics) in the run folder; a resumed run appends."""

    def __init__(self, output_dir: str | Path) -> None:
        folder = Path(output_dir) / LOGS_DIR
        self.steps, self.epochs = _CSVFile(folder / STEPS_CSV), _CSVFile(folder / EPOCHS_CSV)

    def on_train_begin(self, info: dict) -> None:
        self.steps.keep(info["global_step"], "step")
        self.epochs.keep(info["epoch"], "epoch")

    def on_step(self, info: dict) -> None:
        self.steps.append(info)

    def on_epoch(self, info: dict) -> None:
        self.epochs.append(info)


class TensorBoardLogger(TrainerCallback):
    """TensorBoard event files in ``tensorboard/`` of the run folder (the 'tensorboard' extra)."""

    def __init__(self, output_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--report-to tensorboard needs TensorBoard: pip install 'exotune[tensorboard]'") from None
        self.writer = SummaryWriter(str(Path(output_dir) / TENSORBOARD_DIR))

    def on_step(self, info: dict) -> None:
        for key in ("loss", *(k for k in info if k.startswith("lr"))):
            self.writer.add_scalar(f"train/{key}", info[key], info["step"])

    def on_epoch(self, info: dict) -> None:
        for key, value in info.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"epoch/{key}", value, info["epoch"])

    def on_train_end(self) -> None:
        self.writer.flush()
        self.writer.close()


def check_report_to(report_to: tuple[str, ...] | list[str]) -> None:
    """``report_to`` names known loggers whose packages are installed (checked before a run)."""
    unknown = [r for r in report_to if r not in REPORT_TO]
    if unknown:
        raise ConfigError(f"report_to must name some of {REPORT_TO}, got {unknown}")
    if "tensorboard" in report_to:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("--report-to tensorboard needs TensorBoard: pip install 'exotune[tensorboard]'")


def loggers(output_dir: str | Path, report_to: tuple[str, ...] | list[str] = ()) -> list[TrainerCallback]:
    """The run folder's loggers: CSV always, and those ``report_to`` names."""
    check_report_to(report_to)
    return [CSVLogger(output_dir), *(TensorBoardLogger(output_dir) for r in report_to if r == "tensorboard")]
