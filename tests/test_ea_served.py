"""EA's black box played by exotune's own served box at level ``black``."""

import numpy as np
import pytest

from exotune.boxes import load_box
from exotune.ea import ServedBoxClient
from exotune.errors import BlackBoxError, ConfigError

from .serve_helpers import make_app, remote

pytest.importorskip("fastapi")
LABELS = ["red", "blue", "green"]
TEXTS = ["the car is red", "a blue sky", "green leaf is small"]


@pytest.fixture
def black_remote(tiny_backbone):
    return remote(make_app(load_box(str(tiny_backbone), access="black")))


@pytest.mark.parametrize("returns", ["labels", "scores", "embeddings"])
def test_served_black_box_answers_like_the_local_zero_shot(tiny_backbone, black_remote, returns):
    local = load_box(str(tiny_backbone))
    client = ServedBoxClient(box=black_remote, returns=returns, max_retries=0)
    outs = client.run(TEXTS, LABELS)
    z = local.encode(TEXTS).numpy()
    p = local.encode(LABELS).numpy()
    cos = (z / np.linalg.norm(z, axis=1, keepdims=True)) @ (p / np.linalg.norm(p, axis=1, keepdims=True)).T
    assert [o.label for o in outs] == cos.argmax(1).tolist()
    if returns == "labels":
        assert all(o.scores is None and o.embedding is None for o in outs)
    else:
        assert all(abs(sum(o.scores) - 1) < 1e-6 for o in outs)
    if returns == "embeddings":
        np.testing.assert_allclose(np.array([o.embedding for o in outs]), z, atol=1e-5)
    assert client.ledger.calls == len(TEXTS)
    assert client.describe()["model_digest"] == local.spec.model_digest


def test_served_client_needs_one_way_in(black_remote):
    with pytest.raises(ConfigError):
        ServedBoxClient()
    with pytest.raises(ConfigError):
        ServedBoxClient("http://127.0.0.1:1", box=black_remote)
    with pytest.raises(ConfigError, match="returns"):
        ServedBoxClient(box=black_remote, returns="logits")


def test_unreachable_server_is_a_clear_error():
    client = ServedBoxClient("http://127.0.0.1:9", token="x" * 12, max_retries=0)
    with pytest.raises((BlackBoxError, ConnectionError), match="127.0.0.1:9"):
        client.run(TEXTS, LABELS)


def test_ea_cli_with_a_served_black_box(tiny_backbone, tmp_path, capsys, monkeypatch):
    from exotune.cli import main

    from .conftest import colour_data
    from .serve_helpers import TOKEN, running_server

    data = colour_data(90, seed=1)
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "".join(f"{t},{data.label_names[y]}\n"
                                               for t, y in zip(data.texts, data.labels, strict=True)))
    monkeypatch.setenv("EXOTUNE_TOKEN", TOKEN)
    out = tmp_path / "ea"
    with running_server(make_app(load_box(str(tiny_backbone), access="black"))) as url:
        lm = ["--lm", "served-box", "--base-url", url, "--returns", "scores", "--max-retries", "1"]
        assert main(["ea", "fit", "--file", str(train), *lm, "--output-dir", str(out), "--clusters", "2",
                     "--cv-folds", "2", "--val-fraction", "0.3"]) == 0
        assert capsys.readouterr().out.count('"calls": 90') == 1
        assert main(["ea", "predict", "--adapter", str(out), "--text", "the car is red"]) == 0
        assert capsys.readouterr().out.split("\t")[0] in data.label_names
    with pytest.raises(SystemExit):
        main(["ea", "fit", "--file", str(train), "--lm", "served-box", "--output-dir", str(out), "--returns", "x"])
    assert main(["ea", "fit", "--file", str(train), "--lm", "served-box", "--output-dir", str(out)]) == 2
