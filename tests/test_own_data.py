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
        words = [
            rng.choice(["the", "a"]),
            rng.choice(["car", "sky", "leaf"]),
            "is",
            rng.choice(["fast", "slow", "big", "small"]),
            colour,
        ]
        rng.shuffle(words)
        rows.append(f"{' '.join(words)},{colour}\n")
    path.write_text("text,label\n" + "".join(rows), encoding="utf-8")
    return path


@pytest.fixture
def three_files(tmp_path) -> tuple[Path, Path, Path]:
    return (
        write_colours(tmp_path / "train.csv", 48, 0),
        write_colours(tmp_path / "val.csv", 18, 1),
        write_colours(tmp_path / "test.csv", 18, 2),
    )


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


def test_train_selects_on_the_validation_file_and_scores_the_test_file_once(
    tiny_backbone, three_files, tmp_path, capsys
):
    train, val, test = three_files
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--file",
                str(train),
                "--val-file",
                str(val),
                "--test-file",
                str(test),
                "--eval-test",
                "--backbone",
                str(tiny_backbone),
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--quiet",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["test"]) >= {"accuracy", "macro_f1"}
    # trained on all 48 rows of the training file, validated on the 18 of the validation file
    assert "on 48 examples, validating on 18" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--eval-test"], "needs --test-file"),
        (["--val-file", "{val}", "--task", "retrieval"], "--task classification"),
    ],
)
def test_split_file_misuse_is_a_clean_error(three_files, tmp_path, capsys, extra, fragment):
    train, val, _ = three_files
    argv = [
        "train",
        "--file",
        str(train),
        "--output-dir",
        str(tmp_path / "run"),
        "--backbone",
        str(tmp_path / "nope"),
        *[a.format(val=val) for a in extra],
    ]
    assert main(argv) == 2
    assert_clean_error(capsys, fragment)


def test_split_files_go_with_a_file_not_a_known_dataset(tmp_path, capsys):
    val = write_colours(tmp_path / "val.csv", 5, 0)
    assert (
        main(
            [
                "train",
                "--dataset",
                "banking77",
                "--val-file",
                str(val),
                "--output-dir",
                str(tmp_path / "r"),
                "--data-dir",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert_clean_error(capsys, "go with --file")


def test_ea_fit_takes_validation_and_test_files(three_files, tmp_path, capsys):
    from exotune.ea.testing import FakeOpenAI

    train, val, test = three_files
    with FakeOpenAI() as server:
        assert (
            main(
                [
                    "ea",
                    "fit",
                    "--file",
                    str(train),
                    "--val-file",
                    str(val),
                    "--test-file",
                    str(test),
                    "--lm",
                    "openai-chat",
                    "--base-url",
                    server.base_url,
                    "--model",
                    "fake",
                    "--max-retries",
                    "1",
                    "--clusters",
                    "2",
                    "--cv-folds",
                    "2",
                    "--output-dir",
                    str(tmp_path / "ea"),
                ]
            )
            == 0
        )
    summary = json.loads(capsys.readouterr().out)
    assert summary["test"]["examples"] == 18 and 0.0 <= summary["test"]["accuracy"] <= 1.0


# -- one source of defaults ----------------------------------------------------------------------


def test_train_options_left_unset_take_the_task_defaults():
    from exotune.cli.configs import fill_train_defaults
    from exotune.defaults import CLASSIFICATION, RETRIEVAL

    def filled(*extra):
        args = build_parser().parse_args(["train", "--file", "x.csv", "--output-dir", "run", *extra])
        fill_train_defaults(args)
        return args

    args = filled()
    assert (args.lr, args.epochs, args.patience, args.batch_size) == (
        CLASSIFICATION.lr_for("dga"),
        CLASSIFICATION.epochs,
        CLASSIFICATION.patience,
        CLASSIFICATION.batch_size,
    )
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
            defaults.epochs,
            defaults.batch_size,
            defaults.patience,
            defaults.val_fraction,
        )
    suite_budget = {"classification": classification, "retrieval": retrieval}[suite].Budget()
    assert suite_budget.lr == defaults.gray_lr and suite_budget.epochs == defaults.epochs
    assert all(suite_budget.lr_for(m) == defaults.lr_for(m) for m in defaults.white_lr)


@pytest.mark.parametrize(
    "suite, dataset", [("classification", "banking77"), ("classification", "sst2"), ("retrieval", "scifact")]
)
def test_a_suite_without_lr_or_epochs_is_keyed_like_the_committed_runs(suite, dataset):
    """The default budget is the committed one, field for field: a run without --lr or --epochs
    meets the committed run log's seed-0 runs (so it reproduces them; --fresh re-runs them)."""
    from exotune.bench import classification, retrieval
    from exotune.bench.common import RunLog

    module = {"classification": classification, "retrieval": retrieval}[suite]
    log = RunLog(RESULTS / f".{suite}.runs.jsonl")
    budget = module.Budget().for_dataset(dataset)
    for method in module.METHODS:
        key = {
            "dataset": dataset,
            "method": method,
            "seed": 0,
            "backbone": "all-MiniLM-L6-v2",
            "quick": False,
            "budget": budget,
        }
        assert log.get(key) is not None, method


def test_the_ea_suite_lora_is_the_committed_one():
    from exotune.bench.ea import Budget
    from exotune.defaults import CLASSIFICATION

    doc = json.loads((RESULTS / "ea.json").read_text())
    lora = next(r for r in doc["records"] if r["method"] == "lora")
    assert lora["lr"] == CLASSIFICATION.lr_for("lora") == Budget().lora["method_lr"]["lora"]
    assert doc["budget"]["lora"]["epochs"] == Budget().lora["epochs"] == CLASSIFICATION.epochs


# -- every method of a suite on the user's data -------------------------------------------------


@pytest.fixture
def in_process(monkeypatch):
    """Each run in this process, not a fresh one: the logic is the same, minus a start per run
    (peak memory, what the fresh process is for, is not what these tests check)."""
    import exotune.bench
    import exotune.bench.ea

    def here(fn, *args):
        return fn(*args)

    monkeypatch.setattr(exotune.bench, "run_isolated", here)
    monkeypatch.setattr(exotune.bench.ea, "run_isolated", here)


def own_files(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    return [
        "--file",
        str(write_colours(folder / "train.csv", 48, 0)),
        "--val-file",
        str(write_colours(folder / "val.csv", 18, 1)),
        "--test-file",
        str(write_colours(folder / "test.csv", 18, 2)),
    ]


def test_one_command_compares_every_method_on_the_users_three_files(tiny_backbone, tmp_path, capsys, in_process):
    """The done-when of 'your own data': zero-shot, probe, DGA, LGA, LoRA and full FT on the
    user's files, selection on their validation file, test scored once, resumable."""
    pytest.importorskip("peft")
    out = tmp_path / "results"
    methods = ["zero-shot", "linear-probe", "dga-both", "lga", "lora", "full-ft"]
    argv = [
        "bench",
        "classification",
        *own_files(tmp_path / "mydata"),
        "--backbone",
        str(tiny_backbone),
        "--quick",
        "--out-dir",
        str(out),
        "--methods",
        *methods,
    ]
    assert main(argv) == 0
    table = capsys.readouterr().out
    doc = json.loads((out / "classification.json").read_text())
    records = [r for r in doc["records"] if r["metric"] == "accuracy"]
    assert [r["method"] for r in records] == ["zero-shot", "linear-probe", "dga", "lga", "lora", "full-ft"]
    assert {r["dataset"] for r in records} == {"mydata"} and "## mydata" in table
    for r in records:  # validation is the user's file, test the user's file, 3 classes
        assert (r["n_train"], r["n_val"], r["n_test"], r["n_classes"]) == (48, 18, 18, 3)
    for r in records[2:]:  # the gradient methods: both step times, the defaults' learning rates
        assert r["wall_seconds_per_step"] == pytest.approx(r["train_seconds"] / r["steps"])
        assert r["seconds_per_step"] > 0
        assert r["lr"] == doc["defaults"]["lr"][r["method"]]
    assert set(doc["data"]["sha256"]) == {"train", "val", "test"}
    assert "3 classes (trainable parameters count a head for 3)" in table
    assert "s/step (median) | s/step (wall)" in table
    for name in ("classification.md", "classification_params.png", "classification_step_time.png"):
        assert (out / name).is_file()
    assert main(argv) == 0  # resumed: every run comes from the log
    assert capsys.readouterr().err.count("logged earlier, reused") == len(methods)


@pytest.mark.slow  # a served box in its own process, two EA fits and LoRA
def test_the_ea_suite_runs_on_the_users_files(tiny_backbone, tmp_path, capsys, in_process):
    pytest.importorskip("peft")
    out = tmp_path / "ea"
    assert (
        main(
            [
                "bench",
                "ea",
                *own_files(tmp_path / "mydata"),
                "--backbone",
                str(tiny_backbone),
                "--quick",
                "--out-dir",
                str(out),
            ]
        )
        == 0
    )
    doc = json.loads((out / "ea.json").read_text())
    methods = {r["method"] for r in doc["records"]}
    assert methods == {"ea", "lm", "ssm", "linear-probe", "lora"}
    assert {r["dataset"] for r in doc["records"]} == {"mydata"}
    assert all((r["n_val"], r["n_test"]) == (18, 18) for r in doc["records"])
    assert (out / "ea.md").is_file() and (out / "ea_cost_quality.png").is_file()


def test_the_retrieval_suite_runs_on_a_beir_folder(tiny_backbone, tmp_path, capsys, in_process):
    from .test_beir import write_beir

    folder = write_beir(tmp_path / "mybeir")
    out = tmp_path / "results"
    assert (
        main(
            [
                "bench",
                "retrieval",
                "--beir-dir",
                str(folder),
                "--backbone",
                str(tiny_backbone),
                "--quick",
                "--out-dir",
                str(out),
                "--methods",
                "zero-shot",
                "dga-output-only",
            ]
        )
        == 0
    )
    doc = json.loads((out / "retrieval.json").read_text())
    assert {(r["dataset"], r["method"]) for r in doc["records"]} == {("mybeir", "zero-shot"), ("mybeir", "dga")}
    assert doc["data"]["beir_dir"] == str(folder)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["bench", "classification", "--file", "t.csv", "--test-file", "x.csv"], "--out-dir"),
        (["bench", "classification", "--file", "t.csv", "--out-dir", "o"], "--test-file"),
        (
            [
                "bench",
                "classification",
                "--file",
                "t.csv",
                "--test-file",
                "x.csv",
                "--out-dir",
                "o",
                "--datasets",
                "sst2",
            ],
            "not both",
        ),
        (["bench", "steps", "--file", "t.csv", "--test-file", "x.csv", "--out-dir", "o"], "runs on its own datasets"),
        (["bench", "retrieval", "--file", "t.csv", "--out-dir", "o"], "--beir-dir"),
        (["bench", "ea", "--beir-dir", "b", "--out-dir", "o"], "--file"),
        (["bench", "classification", "--task", "video-retrieval"], "the vision suite's options"),
        (["bench", "steps", "--videos", "v"], "--videos: the vision suite's options"),
        (["bench", "retrieval", "--unseen-classes", "0.2"], "--unseen-classes"),
    ],
)
def test_own_data_misuse_is_a_clean_error(capsys, argv, fragment):
    assert main(argv) == 2
    assert_clean_error(capsys, fragment)


def test_an_out_dir_that_is_a_file_is_a_clean_error(capsys, tmp_path):
    (tmp_path / "results").write_text("not a folder")
    assert main(["bench", "steps", "--out-dir", str(tmp_path / "results")]) == 2
    assert_clean_error(capsys, "is a file, not a folder")


def test_wall_seconds_per_step_sits_beside_the_median():
    from types import SimpleNamespace

    from exotune.bench.common import aggregate, step_seconds

    assert step_seconds(SimpleNamespace(train_seconds=10.0, steps=4, seconds_per_step=0.5)) == {
        "seconds_per_step": 0.5,
        "wall_seconds_per_step": 2.5,
    }
    runs = [
        {"dataset": "d", "method": "dga", "seed": s, "metrics": {"accuracy": 0.5}, "wall_seconds_per_step": w}
        for s, w in ((0, 1.0), (1, 3.0))
    ]
    assert aggregate(runs, "accuracy")["wall_seconds_per_step"] == 2.0
