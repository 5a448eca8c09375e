"""The command line, called in-process: argument errors exit 2, library errors return 2."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from exotune import cli
from exotune.cli import COMMANDS, main
from exotune.cli.configs import dga_config
from exotune.errors import DataError
from exotune.graybox import adapter_names, registry
from exotune.graybox.registry import get_entry


@pytest.fixture
def good_csv(tmp_path) -> Path:
    path = tmp_path / "good.csv"
    rows = "".join(f"example text {i},{'pos' if i % 2 else 'neg'}\n" for i in range(20))
    path.write_text("text,label\n" + rows, encoding="utf-8")
    return path


def assert_clean_error(capsys, *fragments: str) -> str:
    """The run printed one 'error: ...' line to stderr and no traceback."""
    out, err = capsys.readouterr()
    assert "error:" in err
    assert "Traceback" not in err
    assert out == ""
    for fragment in fragments:
        assert fragment in err
    return err


# -- help and version -----------------------------------------------------------------------


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: exotune" in out
    for cmd in COMMANDS:
        assert cmd in out


def test_version_exits_zero(capsys):
    from exotune import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_commands_table():
    assert {"train", "eval", "predict", "demo"} <= set(COMMANDS)
    assert all(callable(fn) for fn in COMMANDS.values())


@pytest.mark.parametrize("cmd", [*sorted(COMMANDS), "bench"])
def test_subcommand_help_exits_zero(capsys, cmd):
    with pytest.raises(SystemExit) as info:
        main([cmd, "--help"])
    assert info.value.code == 0
    assert f"usage: exotune {cmd}" in capsys.readouterr().out


# -- argument errors: argparse exits with 2 -------------------------------------------------

BAD_ARGS = [
    pytest.param([], "required", id="no-command"),
    pytest.param(["frobnicate"], "invalid choice", id="unknown-command"),
    pytest.param(["train", "--file", "x.csv"], "--output-dir", id="train-no-output-dir"),
    pytest.param(["train", "--output-dir", "o"], "--dataset", id="train-no-data"),
    pytest.param(
        ["train", "--dataset", "banking77", "--file", "x.csv", "--output-dir", "o"],
        "not allowed with",
        id="train-dataset-and-file",
    ),
    pytest.param(
        ["train", "--file", "x.csv", "--output-dir", "o", "--variant", "bogus"],
        "invalid choice",
        id="bad-variant",
    ),
    pytest.param(
        ["train", "--file", "x.csv", "--output-dir", "o", "--epochs", "notanint"],
        "invalid int value",
        id="epochs-not-int",
    ),
    pytest.param(
        ["train", "--file", "x.csv", "--output-dir", "o", "--lr", "fast"],
        "invalid float value",
        id="lr-not-float",
    ),
    pytest.param(
        ["train", "--file", "x.csv", "--output-dir", "o", "--head", "bogus"],
        "invalid choice",
        id="bad-head",
    ),
    pytest.param(["eval", "--file", "x.csv"], "--adapter", id="eval-no-adapter-or-zero-shot"),
    pytest.param(
        ["eval", "--file", "x.csv", "--adapter", "a", "--zero-shot"],
        "not allowed with",
        id="eval-adapter-and-zero-shot",
    ),
    pytest.param(
        ["eval", "--file", "x.csv", "--zero-shot", "--split", "dev"],
        "invalid choice",
        id="eval-bad-split",
    ),
    pytest.param(["predict", "--text", "hi"], "--adapter", id="predict-no-adapter"),
    pytest.param(["predict", "--adapter", "a"], "--text", id="predict-no-input"),
    pytest.param(
        ["predict", "--adapter", "a", "--text", "hi", "--input-file", "f.txt"],
        "not allowed with",
        id="predict-text-and-file",
    ),
    pytest.param(["bench", "nosuchsuite"], "invalid choice", id="bench-unknown-suite"),
    pytest.param(["demo", "--epochs", "one"], "invalid int value", id="demo-epochs-not-int"),
]


@pytest.mark.parametrize(("argv", "fragment"), BAD_ARGS)
def test_bad_arguments_exit_2(capsys, argv, fragment):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err
    assert fragment in err


# -- library errors: "error: ..." on stderr, return code 2 ----------------------------------


@pytest.mark.parametrize("who", [["--zero-shot"], ["--adapter", "no-such-adapter"]])
def test_eval_missing_file(tmp_path, capsys, who):
    missing = tmp_path / "nonexistent.csv"
    assert main(["eval", *who, "--file", str(missing)]) == 2
    assert_clean_error(capsys, str(missing), "file not found")


def test_eval_bad_file_names_line(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("text,category\nhello,a\n", encoding="utf-8")
    assert main(["eval", "--zero-shot", "--file", str(path)]) == 2
    assert_clean_error(capsys, str(path), "line 2", "'label'")


@pytest.mark.parametrize("name", ["banking77", "sst2"])
def test_eval_dataset_not_found(tmp_path, capsys, name):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", "--zero-shot", "--dataset", name, "--data-dir", str(empty)]) == 2
    assert_clean_error(capsys, str(empty / name), "EXOTUNE_DATA")


def test_eval_dataset_not_found_via_env(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EXOTUNE_DATA", str(tmp_path))
    assert main(["eval", "--zero-shot", "--dataset", "banking77"]) == 2
    assert_clean_error(capsys, str(tmp_path / "banking77"))


def test_train_missing_file(tmp_path, capsys):
    missing = tmp_path / "missing.jsonl"
    assert main(["train", "--file", str(missing), "--output-dir", str(tmp_path / "run")]) == 2
    assert_clean_error(capsys, str(missing))
    assert not (tmp_path / "run").exists()


def test_train_unknown_dataset(tmp_path, capsys):
    assert main(["train", "--dataset", "imdb", "--output-dir", str(tmp_path / "run")]) == 2
    assert_clean_error(capsys, "unknown dataset 'imdb'")


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--val-fraction", "1.5"], "fraction"),
        (["--val-fraction", "0"], "fraction"),
        (["--epochs", "0"], "epochs"),
        (["--lr", "-1"], "lr"),
        (["--text-column", "body"], "'body'"),
    ],
    ids=[
        "val-fraction-too-big",
        "val-fraction-zero",
        "epochs-zero",
        "negative-lr",
        "missing-text-column",
    ],
)
def test_train_bad_values_return_2(tmp_path, capsys, good_csv, extra, fragment):
    argv = ["train", "--file", str(good_csv), "--output-dir", str(tmp_path / "run"), *extra]
    assert main(argv) == 2
    assert_clean_error(capsys, fragment)


def test_predict_missing_adapter_and_backbone(tmp_path, capsys):
    adapter, backbone = tmp_path / "adapter", tmp_path / "backbone"
    adapter.mkdir()
    backbone.mkdir()
    assert main(["predict", "--adapter", str(adapter), "--text", "hi", "--backbone", str(backbone)]) == 2
    assert_clean_error(capsys)


@pytest.mark.parametrize(
    "texts",
    [[""], ["   "], ["hi", ""]],
    ids=["empty", "blank", "one-empty"],
)
def test_predict_empty_text(tmp_path, capsys, texts):
    argv = ["predict", "--adapter", str(tmp_path), "--backbone", str(tmp_path)]
    for text in texts:
        argv += ["--text", text]
    assert main(argv) == 2
    assert_clean_error(capsys, "non-empty")


def test_predict_missing_input_file(tmp_path, capsys):
    missing = tmp_path / "texts.txt"
    argv = [
        "predict",
        "--adapter",
        str(tmp_path),
        "--backbone",
        str(tmp_path),
        "--input-file",
        str(missing),
    ]
    assert main(argv) == 2
    assert_clean_error(capsys, str(missing), "file not found")


def test_predict_blank_input_file(tmp_path, capsys):
    path = tmp_path / "texts.txt"
    path.write_text("\n   \n\n", encoding="utf-8")
    argv = [
        "predict",
        "--adapter",
        str(tmp_path),
        "--backbone",
        str(tmp_path),
        "--input-file",
        str(path),
    ]
    assert main(argv) == 2
    assert_clean_error(capsys, "non-empty")


# -- adapter configs come from the registry ------------------------------------------------


def _train_args(*extra: str):
    return cli.build_parser().parse_args(["train", "--file", "x.csv", "--output-dir", "run", *extra])


@pytest.mark.parametrize("name", adapter_names("output"))
def test_each_output_adapter_choice_builds_its_own_config(name):
    dga = dga_config(_train_args("--output-adapter", name))
    assert type(dga.output_adapter) is get_entry("output", name).config_cls


@pytest.mark.parametrize("name", adapter_names("input", "image"))
def test_each_pixel_adapter_choice_builds_its_own_config(name):
    dga = dga_config(_train_args("--pixel-adapter", name, "--kernel-size", "5"), "image")
    assert type(dga.input_adapter) is get_entry("input", name).config_cls
    assert dga.input_adapter.kernel_size == 5


def test_options_reach_the_adapter_configs():
    dga = dga_config(_train_args("--output-adapter", "mlp", "--mlp-hidden", "7", "--no-shift", "--extra-tokens", "3"))
    assert (dga.output_adapter.hidden, dga.input_adapter.shift, dga.input_adapter.extra_tokens) == (7, False, 3)
    image = dga_config(_train_args("--pixel-adapter", "pixel-residual", "--pixel-channels", "4"), "image")
    assert image.input_adapter.channels == 4


def test_a_newly_registered_output_adapter_builds_its_own_config(monkeypatch):
    @dataclass
    class ScaleConfig:
        factor: float = 2.0

    entry = registry.AdapterEntry("output", "scale", ScaleConfig, torch.nn.Identity, ("text",))
    monkeypatch.setitem(registry._REGISTRY, ("output", "scale"), entry)  # registered for this test only
    assert type(dga_config(_train_args("--output-adapter", "scale")).output_adapter) is ScaleConfig


# -- dispatch, with the commands replaced -------------------------------------------------


def test_dispatch_passes_parsed_arguments(monkeypatch, good_csv, tmp_path):
    seen = {}

    def fake_train(args):
        seen["args"] = args
        return 0

    monkeypatch.setitem(cli.COMMANDS, "train", fake_train)
    argv = [
        "train",
        "--file",
        str(good_csv),
        "--output-dir",
        str(tmp_path / "run"),
        "--epochs",
        "3",
        "--variant",
        "input-only",
        "--lr",
        "0.01",
    ]
    assert main(argv) == 0
    args = seen["args"]
    assert args.command == "train"
    assert args.file == str(good_csv)
    assert args.dataset is None
    assert args.epochs == 3
    assert args.variant == "input-only"
    assert args.lr == pytest.approx(0.01)
    assert args.batch_size is None  # the task's default, filled in by the command (exotune.defaults)
    assert args.text_column == "text"
    assert args.label_column == "label"
    assert args.resume is False


def test_eval_split_defaults_to_test(monkeypatch):
    seen = {}

    def fake_eval(args):
        seen["args"] = args
        return 0

    monkeypatch.setitem(cli.COMMANDS, "eval", fake_eval)
    assert main(["eval", "--dataset", "sst2", "--zero-shot"]) == 0
    assert seen["args"].split == "test"
    assert seen["args"].zero_shot is True
    assert seen["args"].adapter is None


def test_exotune_error_from_command_returns_2(monkeypatch, capsys):
    def boom(args):
        raise DataError("something is wrong with line 7")

    monkeypatch.setitem(cli.COMMANDS, "predict", boom)
    assert main(["predict", "--adapter", "a", "--text", "hi"]) == 2
    assert_clean_error(capsys, "error: something is wrong with line 7")


def test_keyboard_interrupt_returns_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "predict", interrupted)
    assert main(["predict", "--adapter", "a", "--text", "hi"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_other_exceptions_propagate(monkeypatch):
    def crash(args):
        raise RuntimeError("a real bug")

    monkeypatch.setitem(cli.COMMANDS, "predict", crash)
    with pytest.raises(RuntimeError, match="a real bug"):
        main(["predict", "--adapter", "a", "--text", "hi"])


# -- regressions ---------------------------------------------------------------------------


def test_predict_non_utf8_input_file(tmp_path, capsys):
    path = tmp_path / "texts.txt"
    path.write_bytes(b"hello\n\xff\xfe bad\n")
    argv = [
        "predict",
        "--adapter",
        str(tmp_path),
        "--backbone",
        str(tmp_path),
        "--input-file",
        str(path),
    ]
    assert main(argv) == 2
    assert_clean_error(capsys, str(path))


def test_train_val_fraction_leaves_too_few(tmp_path, capsys):
    path = tmp_path / "tiny.csv"
    path.write_text("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(10)), encoding="utf-8")
    backbone = tmp_path / "backbone"
    backbone.mkdir()  # no model files: if the split is fixed, loading the backbone fails cleanly
    argv = [
        "train",
        "--file",
        str(path),
        "--output-dir",
        str(tmp_path / "run"),
        "--val-fraction",
        "0.9",
        "--backbone",
        str(backbone),
    ]
    assert main(argv) == 2
    assert_clean_error(capsys)


def test_train_with_the_same_seed_repeats_itself(tiny_backbone, good_csv, tmp_path):
    """The adapters start from random tokens: --seed must fix them too, or a resumed run could
    never be compared with an uninterrupted one."""
    from exotune.artifacts import read_tensors

    argv = [
        "train",
        "--file",
        str(good_csv),
        "--backbone",
        str(tiny_backbone),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--extra-tokens",
        "2",
        "--quiet",
        "--seed",
        "3",
    ]
    runs = []
    for name in ("a", "b"):
        assert main([*argv, "--output-dir", str(tmp_path / name)]) == 0
        runs.append(read_tensors(tmp_path / name / "best" / "adapter_model.safetensors"))
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
