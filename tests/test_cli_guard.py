"""No command ends in a traceback on user input; settings are checked before anything loads;
warnings are one clean line; ``exotune --help`` imports nothing heavy."""

from __future__ import annotations

import subprocess
import sys

import pytest

from exotune import cli
from exotune.cli import main


def test_guard_turns_standard_errors_into_one_line(monkeypatch, capsys):
    def broken(args):
        raise ValueError("could not convert string to float: 'abc'\nsecond line")

    monkeypatch.setitem(cli.COMMANDS, "predict", broken)
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert main(["predict", "--adapter", "a", "--text", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ValueError: could not convert" in err and "Traceback" not in err
    monkeypatch.setitem(cli.COMMANDS, "predict", lambda args: open(args.adapter + "/nope"))  # noqa: SIM115
    assert main(["predict", "--adapter", "/no/such", "--text", "hi"]) == 2
    assert "FileNotFoundError" in capsys.readouterr().err
    monkeypatch.setenv(cli.DEBUG_ENV, "1")  # as in the tests: a real bug keeps its traceback
    monkeypatch.setitem(cli.COMMANDS, "predict", broken)
    with pytest.raises(ValueError, match="could not convert"):
        main(["predict", "--adapter", "a", "--text", "hi"])


def test_serve_checks_tokens_before_loading_the_model(monkeypatch, capsys):
    import exotune.boxes

    loaded = []
    monkeypatch.setattr(exotune.boxes, "load_box", lambda *a, **k: loaded.append(a))
    monkeypatch.setenv("EXOTUNE_TOKENS", "tok1")
    assert main(["serve", "--level", "black"]) == 2
    err = capsys.readouterr().err
    assert "at least 8 characters" in err and "EXOTUNE_TOKENS" in err and loaded == []


@pytest.mark.parametrize("port", ["99999", "0", "-5", "http"])
def test_serve_refuses_a_port_that_cannot_be_bound_before_loading(port, monkeypatch, capsys):
    import exotune.boxes

    loaded = []
    monkeypatch.setattr(exotune.boxes, "load_box", lambda *a, **k: loaded.append(a))
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--no-auth", "--port", port])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "must be a TCP port, 1 to 65535" in err and "Traceback" not in err
    assert loaded == []


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "classification", "--seeds", "0", "-1"],
        ["train", "--dataset", "banking77", "--seed", "2x", "--output-dir", "out"],
        ["ea", "fit", "--dataset", "banking77", "--seed", "4294967296", "--output-dir", "out"],
        ["bench", "vision", "--class-seed", "-3"],
    ],
)
def test_a_seed_outside_what_the_generators_take_is_an_argument_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "must be an integer from 0 to 4294967295" in err and "Traceback" not in err


def test_resume_without_checkpoint_is_a_clean_notice(tiny_backbone, tmp_path, capsys):
    path = tmp_path / "d.csv"
    path.write_text("text,label\n" + "".join(f"the car is {c},{c}\n" for c in ("red", "blue") * 6))
    assert (
        main(
            [
                "train",
                "--file",
                str(path),
                "--backbone",
                str(tiny_backbone),
                "--epochs",
                "1",
                "--quiet",
                "--output-dir",
                str(tmp_path / "run"),
                "--resume",
                "--val-fraction",
                "0.34",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "warning: no checkpoint at" in err and "UserWarning" not in err and "warnings.warn" not in err


def test_help_imports_nothing_heavy():
    code = (
        "import sys; from exotune.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'sklearn', 'transformers', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def parsers(parser):
    """``parser`` and every sub-command's parser below it."""
    import argparse

    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from parsers(child)


def test_every_option_with_a_default_says_it_in_its_help():
    import argparse

    missing = []
    for parser in parsers(cli.build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            if any(action.default is v for v in (None, False, argparse.SUPPRESS)):
                continue
            if "default" not in formatter._expand_help(action) if action.help else True:
                missing.append(f"{parser.prog} {action.option_strings[-1]}")
    assert missing == []
