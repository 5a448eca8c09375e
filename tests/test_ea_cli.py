"""``exotune ea fit | predict | report`` against a local OpenAI-compatible server."""

from __future__ import annotations

import json

import pytest

from exotune.cli import main

from .ea_fakes import FakeOpenAI, colour_task, ea_fit, one_blas_thread, write_csv  # noqa: F401


@pytest.mark.parametrize("cmd", ["fit", "predict", "report"])
def test_ea_help(capsys, cmd):
    with pytest.raises(SystemExit) as info:
        main(["ea", cmd, "--help"])
    assert info.value.code == 0
    assert f"usage: exotune ea {cmd}" in capsys.readouterr().out


def test_ea_fit_predict_report(tmp_path, capsys):
    train = write_csv(tmp_path / "train.csv", colour_task(100, seed=1))
    test = write_csv(tmp_path / "test.csv", colour_task(30, seed=3))
    out = tmp_path / "ea"
    with FakeOpenAI() as server:
        lm = ["--lm", "openai-chat", "--base-url", server.base_url, "--model", "fake", "--max-retries", "1"]
        assert ea_fit(train, lm, out) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["probe"]["calls"] == 100 and len(server.calls("chat")) == 100
        saved = json.loads((out / "lm.json").read_text())
        assert sorted(saved) == [
            "base_url",
            "label_template",
            "lm",
            "model",
            "returns",
        ]  # never a key's variable, never a path
        assert "lm.json" in (out / "checksums.sha256").read_text()
        card = (out / "README.md").read_text()  # the model card: the data and the command
        assert (
            "name: train.csv" in card
            and "exotune ea fit --file" in card
            and "README.md" in (out / "checksums.sha256").read_text()
        )
        assert main(["ea", "predict", "--adapter", str(out), "--text", "the cup is green item9"]) == 2
        assert "--trust-folder-lm" in capsys.readouterr().err  # the user's own folder: confirmed, not assumed
        assert (
            main(["ea", "predict", "--adapter", str(out), "--text", "the cup is green item9", "--trust-folder-lm"]) == 0
        )
        assert capsys.readouterr().out.startswith("green\t")
        assert (
            main(
                [
                    "ea",
                    "report",
                    "--adapter",
                    str(out),
                    "--file",
                    str(test),
                    "--base-url",
                    server.base_url,
                    "--model",
                    "fake",
                    "--out-dir",
                    str(tmp_path / "rep"),
                ]
            )
            == 0
        )
        assert "| EA |" in capsys.readouterr().out
        for name in ("report.json", "report.md", "cost_quality.png"):
            assert (tmp_path / "rep" / name).is_file()
        before = len(server.calls("chat"))
        assert (
            main(
                [
                    "ea",
                    "report",
                    "--adapter",
                    str(out),
                    "--file",
                    str(test),
                    "--trust-folder-lm",
                    "--out-dir",
                    str(tmp_path / "rep2"),
                ]
            )
            == 0
        )
        assert len(server.calls("chat")) == before  # all answers come from the cache


def test_ea_fit_unreachable_server_is_a_clean_error(tmp_path, capsys):
    train = write_csv(tmp_path / "train.csv", colour_task(20))
    argv = [
        "ea",
        "fit",
        "--file",
        str(train),
        "--lm",
        "openai-chat",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--model",
        "m",
        "--max-retries",
        "0",
        "--timeout",
        "2",
        "--output-dir",
        str(tmp_path / "ea"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err and "attempt" in err


def fit_folder(out, base_url):
    """``ea fit`` on 60 colour rows against ``base_url``: a small EA folder at ``out``."""
    train = write_csv(out.parent / "train.csv", colour_task(60, seed=1))
    lm = ["--lm", "openai-chat", "--base-url", base_url, "--model", "fake", "--max-retries", "0"]
    assert ea_fit(train, lm, out) == 0
    return out


def test_a_shared_folder_cannot_send_the_users_secrets_elsewhere(tmp_path, capsys, monkeypatch):
    """lm.json edited to name another server, another secret's variable and another cache path
    (its checksum re-recorded): nothing reaches that server unconfirmed, no secret but the one the
    user's flag names is ever sent, and no file is written where the folder says."""
    from exotune.artifacts import write_checksums

    evil_cache = tmp_path / "elsewhere" / "evil.sqlite"
    monkeypatch.setenv("SOME_SECRET", "s3cret-value")
    monkeypatch.setenv("OPENAI_API_KEY", "the-users-key")
    with FakeOpenAI() as good, FakeOpenAI() as evil:
        out = fit_folder(tmp_path / "ea", good.base_url)
        lm = out / "lm.json"
        lm.write_text(
            json.dumps(
                {
                    "lm": "openai-chat",
                    "base_url": evil.base_url,
                    "model": "fake",
                    "api_key_env": "SOME_SECRET",
                    "cache": str(evil_cache),
                }
            )
        )
        write_checksums(out)
        capsys.readouterr()
        predict = ["ea", "predict", "--adapter", str(out), "--text", "the cup is red item1"]
        assert main(predict) == 2
        err = capsys.readouterr().err
        assert evil.base_url in err and "--trust-folder-lm" in err and "Traceback" not in err
        assert evil.requests == [] and not evil_cache.exists()
        assert main([*predict, "--base-url", good.base_url, "--model", "fake"]) == 0  # the user's own choice
        assert evil.requests == []
        test = write_csv(tmp_path / "test.csv", colour_task(20, seed=9))
        report = ["ea", "report", "--adapter", str(out), "--file", str(test), "--out-dir", str(tmp_path / "rep")]
        assert main(report) == 2 and evil.requests == []
        assert main([*report, "--trust-folder-lm"]) == 0  # accepted: the URL, but never the secret or the path
        assert evil.requests and evil.authorizations == ["Bearer the-users-key"] * len(evil.requests)
        assert not any("s3cret" in (a or "") for a in good.authorizations + evil.authorizations)
        assert not evil_cache.exists()


@pytest.mark.parametrize("edit", [{"lm": "shell"}, {"base_url": "file:///etc/passwd"}, {"model": ["a"]}])
def test_a_malformed_lm_json_is_refused(tmp_path, capsys, edit):
    from exotune.artifacts import write_checksums

    with FakeOpenAI() as server:
        out = fit_folder(tmp_path / "ea", server.base_url)
        saved = json.loads((out / "lm.json").read_text())
        (out / "lm.json").write_text(json.dumps({**saved, **edit}))
        write_checksums(out)
        capsys.readouterr()
        assert main(["ea", "predict", "--adapter", str(out), "--text", "a red cup", "--trust-folder-lm"]) == 2
        err = capsys.readouterr().err
        assert "lm.json" in err and next(iter(edit)) in err and "Traceback" not in err


def test_an_edited_lm_json_is_refused(tmp_path, capsys):
    """lm.json is written inside the folder's checksummed write: an edit is seen."""
    with FakeOpenAI() as server:
        out = fit_folder(tmp_path / "ea", server.base_url)
        saved = json.loads((out / "lm.json").read_text())
        (out / "lm.json").write_text(json.dumps({**saved, "base_url": "http://127.0.0.1:9/v1"}))
        capsys.readouterr()
        assert main(["ea", "predict", "--adapter", str(out), "--text", "a red cup", "--trust-folder-lm"]) == 2
        assert "lm.json is corrupted" in capsys.readouterr().err


def test_ea_fit_prints_rounded_shares_and_keeps_the_label_template(tmp_path, capsys):
    train = write_csv(tmp_path / "train.csv", colour_task(60, seed=1))
    out = tmp_path / "ea"
    with FakeOpenAI() as server:
        lm = ["--lm", "openai-embeddings", "--base-url", server.base_url, "--model", "emb"]
        assert ea_fit(train, [*lm, "--label-template", "the colour {}"], out) == 0
        assert sorted(server.calls("embeddings")[0]) == sorted(f"the colour {c}" for c in colour_task(3).label_names)
    printed = capsys.readouterr().out
    summary = json.loads(printed)
    for value in (summary["lm_call_share"], *summary["val_accuracy"].values()):
        assert value == round(value, 4)
    assert "0000000" not in printed and "9999999" not in printed
    assert json.loads((out / "lm.json").read_text())["label_template"] == "the colour {}"


def test_failed_ea_fit_leaves_no_response_cache_it_created(tmp_path, capsys):
    train = write_csv(tmp_path / "train.csv", colour_task(20))
    out = tmp_path / "ea"
    argv = [
        "ea",
        "fit",
        "--file",
        str(train),
        "--lm",
        "openai-chat",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--model",
        "m",
        "--max-retries",
        "0",
        "--timeout",
        "2",
        "--output-dir",
        str(out),
    ]
    assert main(argv) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.csv"]
    mine = tmp_path / "mine.sqlite"
    mine.touch()  # a cache the user had: never removed
    assert main([*argv, "--cache", str(mine)]) == 2
    assert mine.exists()


def test_ea_fit_images_is_a_clear_error(tmp_path, capsys):
    argv = [
        "ea",
        "fit",
        "--images",
        str(tmp_path),
        "--lm",
        "openai-chat",
        "--model",
        "m",
        "--output-dir",
        str(tmp_path / "ea"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "images" in err and "Traceback" not in err
