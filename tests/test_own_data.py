"""A user's own data end to end: validation and test files on one label set, every method of
a suite on the user's files, and one source of defaults that matches the committed tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exotune.cli import build_parser, main
from exotune.data import load_text_files
from exotune.errors import DataError

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
COLOURS = ("red", "blue", "green")


def write_colours(path: Path, n: int, seed: int, colours=COLOURS) -> Path:
    """A CSV of the colour task: the colour word in a sentence is the label."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        colour = rng.choice(colours)
        words = [rng.choice(["the", "a"]), rng.choice(["car", "sky", "leaf"]), "is",
                 rng.choice(["fast", "slow", "big", "small"]), colour]
        rng.shuffle(words)
        rows.append(f"{' '.join(words)},{colour}\n")
    path.write_text("text,label\n" + "".join(rows), encoding="utf-8")
    return path


@pytest.fixture
def three_files(tmp_path) -> tuple[Path, Path, Path]:
    return (write_colours(tmp_path / "train.csv", 48, 0), write_colours(tmp_path / "val.csv", 18, 1),
            write_colours(tmp_path / "test.csv", 18, 2))


def assert_clean_error(capsys, *fragments: str) -> None:
    out, err = capsys.readouterr()
    assert "error:" in err and "Traceback" not in err and out == ""
    for fragment in fragments:
        assert fragment in err


# -- the loaders: one label set, by name -------------------------------------------------------


def test_validation_and_test_files_take_the_training_label_set_by_name(tmp_path):
    train = write_colours(tmp_path / "train.csv", 30, 0)
    val = write_colours(tmp_path / "val.csv", 10, 1, colours=("green",))  # a class missing: fine
    test = tmp_path / "test.csv"
    test.write_text("text,label\nthe sky is blue,blue\na leaf is green,green\n", encoding="utf-8")
    tr, va, te = load_text_files(train, val, test)
    assert tr.label_names == ["blue", "green", "red"]
    assert va.label_names == te.label_names == tr.label_names
    assert set(va.labels) == {1}  # "green" is index 0 in its own file, 1 in the training set
    assert [te.label_names[y] for y in te.labels] == ["blue", "green"]
    assert load_text_files(train)[1:] == (None, None)


def test_an_unknown_label_in_a_validation_or_test_file_is_named(tmp_path):
    train = write_colours(tmp_path / "train.csv", 30, 0, colours=("red", "blue"))
    val = write_colours(tmp_path / "val.csv", 10, 1, colours=("red", "purple", "teal"))
    with pytest.raises(DataError, match=r"val\.csv: 2 label\(s\) .*\['purple', 'teal'\]"):
        load_text_files(train, val)
    with pytest.raises(DataError, match="purple"):
        load_text_files(train, None, val)


# -- exotune train / ea fit with the user's three files ----------------------------------------


def test_train_selects_on_the_validation_file_and_scores_the_test_file_once(tiny_backbone, three_files, tmp_path,
                                                                            capsys):
    train, val, test = three_files
    out = tmp_path / "run"
    assert main(["train", "--file", str(train), "--val-file", str(val), "--test-file", str(test), "--eval-test",
                 "--backbone", str(tiny_backbone), "--epochs", "1", "--batch-size", "16", "--quiet",
                 "--output-dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["test"]) >= {"accuracy", "macro_f1"}
    # trained on all 48 rows of the training file, validated on the 18 of the validation file
    assert "on 48 examples, validating on 18" in capsys.readouterr().err


@pytest.mark.parametrize("extra, fragment", [
    (["--eval-test"], "needs --test-file"),
    (["--val-file", "{val}", "--task", "retrieval"], "--task classification"),
])
def test_split_file_misuse_is_a_clean_error(three_files, tmp_path, capsys, extra, fragment):
    train, val, _ = three_files
    argv = ["train", "--file", str(train), "--output-dir", str(tmp_path / "run"), "--backbone", str(tmp_path / "nope"),
            *[a.format(val=val) for a in extra]]
    assert main(argv) == 2
    assert_clean_error(capsys, fragment)


def test_split_files_go_with_a_file_not_a_known_dataset(tmp_path, capsys):
    val = write_colours(tmp_path / "val.csv", 5, 0)
    assert main(["train", "--dataset", "banking77", "--val-file", str(val), "--output-dir", str(tmp_path / "r"),
                 "--data-dir", str(tmp_path)]) == 2
    assert_clean_error(capsys, "go with --file")


def test_ea_fit_takes_validation_and_test_files(three_files, tmp_path, capsys):
    from exotune.ea.testing import FakeOpenAI

    train, val, test = three_files
    with FakeOpenAI() as server:
        assert main(["ea", "fit", "--file", str(train), "--val-file", str(val), "--test-file", str(test),
                     "--lm", "openai-chat", "--base-url", server.base_url, "--model", "fake", "--max-retries", "1",
                     "--clusters", "2", "--cv-folds", "2", "--output-dir", str(tmp_path / "ea")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["test"]["examples"] == 18 and 0.0 <= summary["test"]["accuracy"] <= 1.0


# -- one source of defaults ----------------------------------------------------------------------


def test_train_options_left_unset_take_the_task_defaults():
    from exotune.cli.common import fill_train_defaults
    from exotune.defaults import CLASSIFICATION, RETRIEVAL

    def filled(*extra):
        args = build_parser().parse_args(["train", "--file", "x.csv", "--output-dir", "run", *extra])
        fill_train_defaults(args)
        return args

    args = filled()
    assert (args.lr, args.epochs, args.patience, args.batch_size) == (
        CLASSIFICATION.lr_for("dga"), CLASSIFICATION.epochs, CLASSIFICATION.patience, CLASSIFICATION.batch_size)
    assert filled("--entry-tokens", "2").lr == CLASSIFICATION.lr_for("lga")
    assert (filled("--task", "retrieval").lr, filled("--task", "retrieval").epochs) == (RETRIEVAL.gray_lr, 10)
    assert filled("--lr", "0.1", "--epochs", "2").lr == 0.1


@pytest.mark.parametrize("suite", ["classification", "retrieval"])
def test_the_defaults_are_what_the_committed_tables_were_made_with(suite):
    from exotune.bench import classification, retrieval
    from exotune.defaults import TASK_DEFAULTS

    doc = json.loads((RESULTS / f"{suite}.json").read_text())
    defaults = TASK_DEFAULTS[suite]
    rows = [r for r in doc["records"] if r.get("lr") is not None]
    assert rows
    for r in rows:
        assert r["lr"] == pytest.approx(defaults.lr_for(r["method"])), (r["dataset"], r["method"])
    budgets = doc["budget"].values() if suite == "classification" else [doc["budget"]]
    for b in budgets:
        assert (b["epochs"], b["batch_size"], b["patience"], b["val_fraction"]) == (
            defaults.epochs, defaults.batch_size, defaults.patience, defaults.val_fraction)
    suite_budget = {"classification": classification, "retrieval": retrieval}[suite].Budget()
    assert suite_budget.lr == defaults.gray_lr and suite_budget.epochs == defaults.epochs
    assert all(suite_budget.lr_for(m) == defaults.lr_for(m) for m in defaults.white_lr)


def test_the_ea_suite_lora_is_the_committed_one():
    from exotune.bench.ea import Budget
    from exotune.defaults import CLASSIFICATION

    doc = json.loads((RESULTS / "ea.json").read_text())
    lora = next(r for r in doc["records"] if r["method"] == "lora")
    assert lora["lr"] == CLASSIFICATION.lr_for("lora") == Budget().lora["method_lr"]["lora"]
    assert doc["budget"]["lora"]["epochs"] == Budget().lora["epochs"] == CLASSIFICATION.epochs
