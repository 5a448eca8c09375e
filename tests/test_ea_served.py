"""EA's black box played by exotune's own served box at level ``black``."""

import numpy as np
import pytest

from exotune.boxes import load_box
from exotune.ea import ServedBoxClient
from exotune.errors import BlackBoxError, ConfigError

from .serve_helpers import TOKEN, make_app, remote

pytest.importorskip("fastapi")
LABELS = ["red", "blue", "green"]
TEXTS = ["the car is red", "a blue sky", "green leaf is small"]


@pytest.fixture
def black_remote(tiny_backbone):
    return remote(make_app(load_box(str(tiny_backbone), access="black")))


@pytest.fixture
def black_app(tiny_backbone):
    return make_app(load_box(str(tiny_backbone), access="black"))


@pytest.mark.parametrize("way", ["http", "box"])
@pytest.mark.parametrize("returns", ["labels", "scores", "embeddings"])
def test_served_black_box_answers_like_the_local_zero_shot(tiny_backbone, black_app, returns, way):
    from fastapi.testclient import TestClient

    local = load_box(str(tiny_backbone))
    if way == "http":  # the torch-free path: safetensors answers read as numpy arrays
        client = ServedBoxClient(
            "http://testserver", TOKEN, http_client=TestClient(black_app), returns=returns, max_retries=0
        )
    else:
        client = ServedBoxClient(box=remote(black_app), returns=returns, max_retries=0)
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


def test_http_answers_are_checked(tiny_backbone, black_app):
    """A truncated tensor message, or one of the wrong shape, is a clear error, not garbage."""
    import httpx
    from fastapi.testclient import TestClient

    inner = TestClient(black_app)

    def handler(request):
        r = inner.request(request.method, str(request.url), headers=request.headers, content=request.content)
        body = r.content[:-8] if request.url.path == "/v1/scores" else r.content
        return httpx.Response(r.status_code, headers={"content-type": r.headers["content-type"]}, content=body)

    client = ServedBoxClient(
        "http://testserver", TOKEN, http_client=httpx.Client(transport=httpx.MockTransport(handler)), max_retries=0
    )
    with pytest.raises(BlackBoxError, match="not a valid tensor message"):
        client.run(TEXTS, LABELS)


def test_embedding_client_encodes_the_label_names_once_run_after_run(black_app):
    """One input per run (serving): the label names' encodings are kept, not asked for each time."""
    import json

    import httpx
    from fastapi.testclient import TestClient

    inner, asked = TestClient(black_app), []

    def handler(request):
        if request.url.path == "/v1/encode":
            asked.append(json.loads(request.content)["texts"])
        r = inner.request(request.method, str(request.url), headers=request.headers, content=request.content)
        return httpx.Response(r.status_code, headers={"content-type": r.headers["content-type"]}, content=r.content)

    client = ServedBoxClient(
        "http://testserver",
        TOKEN,
        returns="embeddings",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    first = [client.run([t], LABELS)[0].label for t in TEXTS]
    assert asked == [LABELS, *([t] for t in TEXTS)]
    assert first == [o.label for o in client.run(TEXTS, LABELS)]
    client.run(TEXTS[:1], ["blue", "red"])  # other labels: encoded again
    assert asked[-2:] == [["blue", "red"], TEXTS[:1]]


def test_ea_and_a_served_client_leave_torch_out(tiny_backbone, black_app):
    """The user's process of a black-box EA run (its report and benchmark included) never imports
    torch (about 200 MB)."""
    import json
    import subprocess
    import sys

    from fastapi.testclient import TestClient
    from safetensors.numpy import load

    inner = TestClient(black_app)
    spec = inner.get("/v1/spec", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    enc = inner.post("/v1/encode", json={"texts": TEXTS + LABELS}, headers={"Authorization": f"Bearer {TOKEN}"})
    outputs = load(enc.content)["outputs"].tolist()
    code = f"""
import json, sys
import httpx
from safetensors.numpy import save
import numpy as np
import exotune.ea
import exotune.bench.ea
import exotune.ea.report  # metrics, as the benchmark reports them
from exotune.ea import ServedBoxClient
spec, outputs, texts = json.loads({json.dumps([spec, outputs, TEXTS + LABELS])!r})
def handler(request):
    if request.url.path == "/v1/spec":
        return httpx.Response(200, json=spec)
    asked = json.loads(request.content)["texts"]
    rows = np.asarray([outputs[texts.index(t)] for t in asked], dtype=np.float32)
    return httpx.Response(200, content=save({{"outputs": rows}}))
client = ServedBoxClient("http://testserver", "t" * 12, returns="embeddings", max_retries=0,
                         http_client=httpx.Client(transport=httpx.MockTransport(handler)))
outs = client.run({TEXTS!r}, {LABELS!r})
print(json.dumps({{"torch": "torch" in sys.modules, "labels": [o.label for o in outs]}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["torch"] is False
    z, p = np.asarray(outputs[:3]), np.asarray(outputs[3:])
    cos = (z / np.linalg.norm(z, axis=1, keepdims=True)) @ (p / np.linalg.norm(p, axis=1, keepdims=True)).T
    assert got["labels"] == cos.argmax(1).tolist()


def test_unreachable_server_is_a_clear_error():
    client = ServedBoxClient("http://127.0.0.1:9", token="x" * 12, max_retries=0)
    with pytest.raises((BlackBoxError, ConnectionError), match="127.0.0.1:9"):
        client.run(TEXTS, LABELS)


def test_ea_cli_with_a_served_black_box(tiny_backbone, tmp_path, capsys, monkeypatch):
    from exotune.cli import main

    from .conftest import colour_data
    from .ea_fakes import ea_fit, write_csv
    from .serve_helpers import TOKEN, running_server

    data = colour_data(90, seed=1)
    train = write_csv(tmp_path / "train.csv", data)
    monkeypatch.setenv("EXOTUNE_TOKEN", TOKEN)
    out = tmp_path / "ea"
    with running_server(make_app(load_box(str(tiny_backbone), access="black"))) as url:
        lm = ["--lm", "served-box", "--base-url", url, "--returns", "scores", "--max-retries", "1"]
        assert ea_fit(train, lm, out) == 0
        assert capsys.readouterr().out.count('"calls": 90') == 1
        assert main(["ea", "predict", "--adapter", str(out), "--text", "the car is red"]) == 2  # not unconfirmed
        assert "--trust-folder-lm" in capsys.readouterr().err
        assert main(["ea", "predict", "--adapter", str(out), "--text", "the car is red", "--trust-folder-lm"]) == 0
        assert capsys.readouterr().out.split("\t")[0] in data.label_names
    with pytest.raises(SystemExit):
        main(["ea", "fit", "--file", str(train), "--lm", "served-box", "--output-dir", str(out), "--returns", "x"])
    assert main(["ea", "fit", "--file", str(train), "--lm", "served-box", "--output-dir", str(out)]) == 2
