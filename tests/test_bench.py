"""Benchmark-suite logic that needs no model: reusing logged runs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from exotune.bench import classification
from exotune.bench.common import RunLog
from exotune.bench.ea import Budget, logged_run


def test_ea_reuses_the_classification_lora_run(tmp_path):
    log_path = tmp_path / ".classification.runs.jsonl"
    budget = Budget()
    budget.lora["method_lr"] = {"lora": 2e-3}
    assert logged_run("lora", "banking77", 0, budget, None, log_path) is None  # no log yet
    same = classification.Budget(epochs=5, lr=5e-3, method_lr={"lora": 2e-3, "full-ft": 2e-4}).for_dataset("banking77")
    other_lr = classification.Budget(epochs=5, method_lr={"lora": 1e-3}).for_dataset("banking77")
    other_epochs = classification.Budget(epochs=3, method_lr={"lora": 2e-3}).for_dataset("banking77")
    log = RunLog(log_path)
    key = {"dataset": "banking77", "method": "lora", "backbone": "all-MiniLM-L6-v2", "quick": False}
    log.add({**key, "seed": 0, "budget": other_lr}, {"tag": "other lr"})
    log.add({**key, "seed": 0, "budget": other_epochs}, {"tag": "other epochs"})
    log.add({**key, "seed": 1, "budget": same}, {"tag": "other seed"})
    log.add({**key, "method": "dga", "seed": 0, "budget": same}, {"tag": "other method"})
    assert logged_run("lora", "banking77", 0, budget, None, log_path) is None
    log.add({**key, "seed": 0, "budget": same}, {"tag": "this one"})
    assert logged_run("lora", "banking77", 0, budget, None, log_path) == {"tag": "this one"}  # DGA's lr: no matter
    assert logged_run("lora", "banking77", 0, budget, "/some/other/backbone", log_path) is None
    assert logged_run("lora", "sst2", 0, budget, None, log_path) is None  # another dataset
    probe = {**key, "method": "linear-probe", "seed": 0}
    log.add({**probe, "budget": other_lr}, {"tag": "probe, LoRA's lr differs"})
    assert logged_run("linear-probe", "banking77", 0, budget, None, log_path) == {"tag": "probe, LoRA's lr differs"}
    sst2 = classification.Budget(epochs=5, method_lr={"lora": 2e-3}).for_dataset("sst2")
    log.add({**key, "dataset": "sst2", "seed": 0, "budget": sst2}, {"tag": "sst2, its caps"})
    assert logged_run("lora", "sst2", 0, budget, None, log_path) == {"tag": "sst2, its caps"}


def test_aggregate_and_table_carry_run_notes():
    from exotune.bench.common import aggregate, markdown_table

    runs = [
        {
            "dataset": "d",
            "method": "lga",
            "variant": "tokens=2",
            "access": "light-gray",
            "seed": s,
            "metrics": {"accuracy": a},
            "trainable_params": 10,
            "lr": 1e-3,
            "train_seconds": t,
            "seconds_per_step": t / 100,
            "peak_memory_mb": 100.0,
            **({"note": "shared CPU"} if s == 1 else {}),
        }
        for s, a, t in ((0, 0.5, 10.0), (1, 0.7, 30.0))
    ]
    rec = aggregate(runs, "accuracy")
    assert rec["mean"] == 0.6 and rec["train_seconds"] == 20.0 and rec["notes"] == ["seed 1: shared CPU"]
    assert "note" not in rec
    table = markdown_table({"suite": "s", "command": "c", "date": "today", "machine": "m", "records": [rec]})
    assert "| lga | tokens=2 | light-gray | accuracy | 0.6000 ± 0.1000 |" in table
    assert "- lga (tokens=2), seed 1: shared CPU" in table


def test_a_dataset_cap_keys_only_that_dataset():
    """Changing SST-2's sample must not orphan Banking77's logged runs (and vice versa)."""
    base, other = classification.Budget(), classification.Budget(dataset_max_train={"sst2": 123})
    assert base.for_dataset("banking77") == other.for_dataset("banking77")
    assert base.for_dataset("sst2") != other.for_dataset("sst2")
    assert other.for_dataset("sst2")["train_cap"] == 123
    assert classification.Budget(max_train=7).for_dataset("banking77")["train_cap"] == 7


def test_a_spawned_run_reports_its_own_peak_not_its_parents():
    """ru_maxrss survives exec: a worker would inherit the parent's resident memory as its 'peak'."""
    from exotune.bench.common import peak_memory_mb, run_isolated

    ballast = bytearray(256 * 2**20)
    for i in range(0, len(ballast), 4096):  # resident, not just reserved
        ballast[i] = 1
    assert peak_memory_mb() > 256
    assert run_isolated(peak_memory_mb) < 200  # a bare interpreter with numpy, far below the parent
    del ballast


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(condition, limit: float = 60.0) -> bool:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_killed_suite_leaves_no_run_behind():
    """A suite killed mid-run (its worker spawned) must not leave the run computing on the cores."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from exotune.bench.common import run_isolated; run_isolated(time.sleep, 600)",
        ]
    )
    try:

        def worker() -> int | None:
            for d in Path("/proc").iterdir():
                try:
                    stat = (d / "stat").read_text()
                    if (
                        d.name.isdigit()
                        and int(stat.split(")")[-1].split()[1]) == parent.pid
                        and b"spawn_main" in (d / "cmdline").read_bytes()
                    ):
                        return int(d.name)
                except (OSError, ValueError, IndexError):
                    continue
            return None

        assert _wait_for(lambda: worker() is not None), "the suite never started its worker"
        child = worker()
        parent.kill()
        parent.wait()
        assert _wait_for(lambda: not _alive(child)), "the worker outlived its suite"
    finally:
        parent.kill()


def test_the_validation_curve_of_every_seed_is_kept():
    from exotune.bench.common import aggregate, val_curve
    from exotune.train import TrainResult

    result = TrainResult(
        best_metric=0.8,
        best_epoch=1,
        epochs_run=2,
        steps=4,
        train_seconds=1.0,
        seconds_per_step=0.1,
        history=[{"epoch": 1, "val_accuracy": 0.8}, {"epoch": 2, "val_accuracy": 0.75}],
    )
    assert val_curve(result, "accuracy") == [0.8, 0.75]
    runs = [{"seed": s, "metrics": {"accuracy": 0.7 + s / 10}, "val_curve": [0.5, 0.6 + s / 10]} for s in (0, 1)]
    rec = aggregate(runs, "accuracy")
    assert rec["val_curves"] == {"0": [0.5, 0.6], "1": [0.5, 0.7]}
    assert "val_curve" not in rec


def _phrases(path, n):
    """A labelled CSV of ``n`` phrases of 1 to 12 words, both labels at every length."""
    rows = ["text,label"] + [f"{' '.join(['word'] * (1 + i % 12))},{'ab'[i % 2]}" for i in range(n)]
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_a_validation_length_keeps_long_phrases_and_leaves_train_alone(tmp_path):
    from exotune.bench.sources import UserFiles
    from exotune.errors import DataError

    files = UserFiles(_phrases(tmp_path / "train.csv", 240), _phrases(tmp_path / "test.csv", 24))
    train, val, test = classification.split_data("d", files, classification.Budget(), 0)
    long_train, long_val, long_test = classification.split_data("d", files, classification.Budget(val_min_words=10), 0)
    assert long_train.texts == train.texts and long_test.texts == test.texts  # same training sample
    assert long_val.texts == [t for t in val.texts if len(t.split()) >= 10] and 0 < len(long_val) < len(val)
    with pytest.raises(DataError, match="--val-min-words"):
        classification.split_data("d", files, classification.Budget(val_min_words=13), 0)
    # a budget without it is keyed as before (logged runs still match); with it, apart
    assert "val_min_words" not in classification.Budget().for_dataset("sst2")
    assert classification.Budget(val_min_words=10).for_dataset("sst2")["val_min_words"] == 10


def test_a_validation_length_is_the_classification_suites_alone(tmp_path):
    from exotune.bench import check_options
    from exotune.bench.common import BenchOptions
    from exotune.errors import ConfigError

    check_options(BenchOptions(suite="classification", val_min_words=10, val_fraction=0.3, max_val=500))
    with pytest.raises(ConfigError, match="--val-min-words"):
        check_options(BenchOptions(suite="retrieval", val_min_words=10))
    with pytest.raises(ConfigError, match="--val-fraction, --max-val"):
        check_options(BenchOptions(suite="ea", val_fraction=0.3, max_val=500))


def test_a_larger_validation_share_and_cap_reach_the_split_and_the_runs_key(tmp_path):
    """``--val-fraction`` / ``--max-val``: more validation examples, the same test; a budget
    with them is logged apart from the default one, which keeps its key."""
    from exotune.bench.sources import UserFiles

    files = UserFiles(_phrases(tmp_path / "train.csv", 400), _phrases(tmp_path / "test.csv", 24))
    _, val, test = classification.split_data("d", files, classification.Budget(), 0)
    wide = classification.Budget(val_fraction=0.3, max_val=100)
    _, wide_val, wide_test = classification.split_data("d", files, wide, 0)
    assert len(val) == 40 and len(wide_val) == 100 and wide_test.texts == test.texts
    _, long_val, _ = classification.split_data("d", files, classification.Budget(val_fraction=0.3, val_min_words=10), 0)
    assert len(long_val) > 10 and all(len(t.split()) >= 10 for t in long_val.texts)  # 120 carved, then the long ones
    default = classification.Budget().for_dataset("sst2")
    assert (default["val_fraction"], default["val_cap"]) == (0.1, 2000)
    assert (wide.for_dataset("sst2")["val_fraction"], wide.for_dataset("sst2")["val_cap"]) == (0.3, 100)


def test_the_validation_options_parse_into_the_bench_options():
    import argparse

    from exotune.cli.bench import add_bench_args

    p = argparse.ArgumentParser()
    add_bench_args(p)
    args = p.parse_args(["--val-fraction", "0.3", "--max-val", "8000", "--val-min-words", "10"])
    assert (args.val_fraction, args.max_val, args.val_min_words) == (0.3, 8000, 10)
    for bad in (["--val-fraction", "1.5"], ["--val-fraction", "0"], ["--max-val", "0"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)


@pytest.mark.parametrize("method", ["dga-both", "lora"])
def test_a_prototype_start_reaches_every_trained_method(tmp_path, monkeypatch, tiny_backbone, method):
    """``--prototype-start class-means``: gray and white methods alike start at the class means
    of the same training sample; the budget is keyed apart, and other suites refuse it."""
    from exotune.bench import check_options
    from exotune.bench.common import BenchOptions
    from exotune.bench.sources import UserFiles
    from exotune.errors import ConfigError
    from exotune.tasks.classification import ClassificationConfig

    started = {}

    def fit(model, train, val, test, budget, lrs, seed):
        started["model"] = model
        return {}

    monkeypatch.setattr(classification, "_fit", fit)
    files = UserFiles(_phrases(tmp_path / "train.csv", 64), _phrases(tmp_path / "test.csv", 12))
    budget = classification.Budget(prototype_start="class-means")
    classification.run_one(method, "d", 0, files, budget, str(tiny_backbone))
    model = started["model"]
    assert model.config.prototype_start == "class-means"
    names = classification._gradient_model(
        method, classification.split_data("d", files, budget, 0)[0], ClassificationConfig(), str(tiny_backbone)
    )[0]
    assert not torch.allclose(model.head.prototypes, names.head.prototypes)  # not the class names
    assert "prototype_start" not in classification.Budget().for_dataset("sst2")
    assert budget.for_dataset("sst2")["prototype_start"] == "class-means"
    with pytest.raises(ConfigError, match="--prototype-start"):
        check_options(BenchOptions(suite="retrieval", prototype_start="class-means"))


def test_quick_keeps_the_validation_length(tmp_path, monkeypatch):
    """``--quick`` swaps in the smoke test's sizes, not another kind of validation."""
    import exotune.bench
    from exotune.bench.common import BenchOptions

    class Started(Exception):
        pass

    def first_run(fn, name, dataset, seed, source, budget, backbone):
        raise Started(budget)

    monkeypatch.setattr(exotune.bench, "run_isolated", first_run)
    files = {"file": _phrases(tmp_path / "train.csv", 48), "test_file": _phrases(tmp_path / "test.csv", 12)}
    opts = BenchOptions("classification", methods=["zero-shot"], quick=True, out_dir=str(tmp_path / "out"))
    with pytest.raises(Started) as started:
        exotune.bench.run_suite(BenchOptions(**{**vars(opts), **files, "val_min_words": 10}))
    assert started.value.args[0].val_min_words == 10 and started.value.args[0].epochs == 1
    with pytest.raises(Started) as started:  # an --epochs or --patience given holds under --quick too
        exotune.bench.run_suite(BenchOptions(**{**vars(opts), **files, "epochs": 3, "patience": 2}))
    quick = started.value.args[0]
    assert (quick.epochs, quick.patience, quick.max_train) == (3, 2, 256)
