"""RemoteBox against a served box: same gradients and training as local, errors, replays, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from exotune.bench.served import free_port
from exotune.cli import main
from exotune.errors import (
    AccessError,
    AuthenticationError,
    BoxLimitError,
    RateLimitError,
    RemoteError,
)
from exotune.graybox import DGAConfig, GrayBoxModel, adapter_names
from exotune.graybox.registry import get_entry
from exotune.tasks.classification import ClassificationConfig, TextClassifier
from exotune.train import TrainConfig, Trainer

from .conftest import colour_data
from .serve_helpers import TOKEN, EntryBox, input_grads, make_app, remote, running_server

pytest.importorskip("fastapi")
TEXTS = ["the car is red", "a blue sky is big", "green leaf"]


def _grads(box, ref_box, entries: dict | None = None):
    return input_grads(box, ref_box, TEXTS, entries)


def _assert_same(a, b, tol=1e-6):
    assert (a[0] - b[0]).abs().max() <= tol
    assert (a[1] - b[1]).abs().max() <= tol
    assert a[2].keys() == b[2].keys()
    assert all((a[2][k] - b[2][k]).abs().max() <= tol for k in a[2])


@pytest.mark.parametrize("stateless", [False, True])
def test_light_gray_gradients_match_with_entry_tokens(tiny_box, stateless):
    local = EntryBox(tiny_box)
    box = remote(make_app(local, stateless=stateless))
    assert [e.name for e in box.spec.entry_points] == ["layer.1", "layer.2"]
    entries = {"layer.2": torch.randn(3, 16), "layer.1": torch.randn(1, 16)}
    r, loc = _grads(box, tiny_box, entries), _grads(local, tiny_box, entries)
    _assert_same(r, loc)
    assert all(g.abs().sum() > 0 for g in r[2].values())  # the entry tokens got gradients


def _classifier(box, seed=0, input_adapter="text-shift"):
    torch.manual_seed(seed)
    name, _, kernel = input_adapter.partition(":")  # "token-lowrank:3": its kernel
    config = get_entry("input", name).config_cls(**({"kernel": int(kernel)} if kernel else {}))
    dga = DGAConfig(input_adapter=config)
    return TextClassifier(box, ["red", "blue", "green"], dga, ClassificationConfig(head="prototype"))


def _fit(model, max_steps=4):
    train, val = colour_data(48, seed=0), colour_data(12, seed=1)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=2e-2, patience=None, max_steps=max_steps)
    return Trainer(cfg, progress=False).fit(model, train, val)


@pytest.mark.parametrize("input_adapter", [*adapter_names("input", "text"), "token-lowrank:3"])
def test_dga_training_through_the_remote_box_matches_local(tiny_box, input_adapter):
    local = _classifier(tiny_box, input_adapter=input_adapter)
    start = {k: v.clone() for k, v in local.state_dict().items()}
    _fit(local)
    changed = {k for k, v in local.state_dict().items() if not torch.equal(start[k], v)}
    assert {k for k in start if k.startswith("encoder.input_adapter.")} <= changed  # every input tensor trains
    box = remote(make_app(tiny_box))
    far = _classifier(box, input_adapter=input_adapter)
    _fit(far)
    a, b = local.state_dict(), far.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert box.stats["replays"] == 0 and box.stats["retries"] == 0


def test_expired_handles_are_replayed_and_training_continues(tiny_box):
    local = _classifier(tiny_box)
    _fit(local, max_steps=3)
    app = make_app(tiny_box)
    box = remote(app)
    far = _classifier(box)
    original = far.loss

    def loss_then_expire(data):  # every handle expires between forward and backward
        value = original(data)
        app.state.service.handles.expire_all()
        return value

    far.loss = loss_then_expire
    _fit(far, max_steps=3)
    assert box.stats["replays"] == 3
    a, b = local.state_dict(), far.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_remote_errors_are_clear(tiny_backbone, tiny_box):
    from exotune.boxes import load_box

    app = make_app(tiny_box, max_batch=2, grad_budget=1)
    with pytest.raises(AuthenticationError, match="invalid bearer token"):
        remote(app, token="wrong-token-999")
    with pytest.raises(AuthenticationError, match="missing bearer token"):
        remote(app, token="")
    box = remote(app)
    batch = tiny_box.embed(TEXTS[:2])
    with pytest.raises(BoxLimitError, match="at most 2"):
        box.embed(TEXTS)
    box.forward(batch.embeds.clone().requires_grad_(True), batch.mask).sum().backward()
    with pytest.raises(RateLimitError, match="budget"):
        box.forward(batch.embeds.clone().requires_grad_(True), batch.mask).sum().backward()
    assert box.stats["retries"] == 0  # a spent budget is not retried
    black = remote(make_app(load_box(str(tiny_backbone), access="black")))
    with pytest.raises(AccessError):
        black.embed(["red"])
    with pytest.raises(AccessError):
        GrayBoxModel(black)
    assert black.encode(TEXTS).shape == (3, 16)
    assert black.scores(TEXTS, ["red", "blue"]).shape == (3, 2)


def test_retries_on_503_and_rate_limits_then_succeeds(tiny_box):
    import httpx
    from fastapi.testclient import TestClient

    inner = TestClient(make_app(tiny_box))
    answers = iter([503, 429])

    def handler(request: httpx.Request) -> httpx.Response:
        status = next(answers, None)
        if status == 429:
            return httpx.Response(
                429, json={"error": "rate_limited", "message": "slow down"}, headers={"Retry-After": "0"}
            )
        if status == 503:
            return httpx.Response(503, json={"error": "busy", "message": "busy"})
        r = inner.request(request.method, request.url.path, headers=request.headers, content=request.content)
        return httpx.Response(r.status_code, headers=r.headers, content=r.content)

    from exotune.boxes.remote import RemoteBox, RemoteConfig

    client = httpx.Client(transport=httpx.MockTransport(handler))
    box = RemoteBox("http://testserver", TOKEN, client=client, config=RemoteConfig(backoff_s=0.0))
    assert box.stats["retries"] == 2 and box.spec.output_dim == 16


def test_connection_errors_raise_after_bounded_retries():
    import exotune
    from exotune.boxes.remote import RemoteConfig

    with pytest.raises(RemoteError, match="after 3 tries"):  # 1 try + 2 retries, then a clear error
        exotune.connect(
            f"http://127.0.0.1:{free_port()}", token=TOKEN, config=RemoteConfig(retries=2, backoff_s=0.01, timeout_s=2)
        )


def test_a_real_uvicorn_server_on_loopback(tiny_box):
    import exotune

    with running_server(make_app(tiny_box)) as url:
        with exotune.connect(url, token=TOKEN) as box:
            _assert_same(_grads(box, tiny_box), _grads(tiny_box, tiny_box))
            assert TOKEN not in repr(box)
        with pytest.raises(AuthenticationError):
            exotune.connect(url, token="wrong-token-999")


# -- the command line -------------------------------------------------------------------------


@pytest.fixture
def served(monkeypatch, tmp_path):
    from exotune.cli import serve as serve_cli

    calls = []
    monkeypatch.setattr(serve_cli, "run_server", lambda app, host, port, listen=None: calls.append((app, host, port)))
    monkeypatch.delenv("EXOTUNE_TOKENS", raising=False)
    monkeypatch.delenv("EXOTUNE_OWNER_SECRET", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # where a generated owner secret goes
    return calls


def test_serve_refuses_to_start_without_a_token(tiny_backbone, served, capsys):
    assert main(["serve", "--model", str(tiny_backbone)]) == 2
    assert "refusing to serve without a token" in capsys.readouterr().err
    assert served == []


def test_serve_with_tokens_file_env_or_no_auth(tiny_backbone, served, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    tokens = tmp_path / "tokens"
    tokens.write_text(f"# owner's tokens\n{TOKEN}\n")
    argv = ["serve", "--model", str(tiny_backbone), "--port", "8123", "--max-batch", "4", "--stateless"]
    assert main([*argv, "--tokens-file", str(tokens), "--level", "black"]) == 0
    app, host, port = served[-1]
    assert (host, port) == ("127.0.0.1", 8123)
    spec = TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}).get("/v1/spec").json()
    assert spec["spec"]["access"] == "black" and spec["spec"]["limits"]["max_batch"] == 4
    assert spec["server"]["stateless"] is True
    monkeypatch.setenv("EXOTUNE_TOKENS", f"{TOKEN},another-token-1")
    assert main(argv) == 0
    assert TestClient(served[-1][0]).get("/v1/spec").status_code == 401
    monkeypatch.delenv("EXOTUNE_TOKENS")
    assert main([*argv, "--no-auth"]) == 0
    assert TestClient(served[-1][0]).get("/v1/spec").status_code == 200


def test_serve_entry_points_need_light_gray(tiny_backbone, served, capsys):
    from fastapi.testclient import TestClient

    argv = ["serve", "--model", str(tiny_backbone), "--no-auth", "--entry-points", "1"]
    assert main(argv) == 2
    assert "light-gray" in capsys.readouterr().err
    assert main([*argv, "--level", "light-gray"]) == 0
    spec = TestClient(served[-1][0]).get("/v1/spec").json()["spec"]
    assert [e["name"] for e in spec["entry_points"]] == ["point.0"]  # served: names hide which layer


def test_server_restart_mid_training_errors_clearly_then_resumes(tiny_box, tmp_path):
    """The served box goes away mid-training: the client raises a clear RemoteError, the
    trainer has saved the last completed step, and training resumes against a new server
    to the same weights as an uninterrupted run."""
    import exotune
    from exotune.boxes.remote import RemoteConfig
    from exotune.train import TrainConfig, Trainer

    from .conftest import colour_data

    train, val = colour_data(80, seed=0), colour_data(30, seed=1)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-2, patience=None, checkpoint_every=100)
    fast = RemoteConfig(retries=1, backoff_s=0.01, timeout_s=5)

    reference = _classifier(tiny_box)
    Trainer(cfg, progress=False).fit(reference, train, val)

    with running_server(make_app(tiny_box)) as url:
        box = exotune.connect(url, token=TOKEN, config=fast)
        model = _classifier(box)
        stop = {}
        original = model.loss

        def loss(data):  # the server goes down before the 7th step
            stop["n"] = stop.get("n", 0) + 1
            if stop["n"] == 7:
                url.stop()
            return original(data)

        model.loss = loss
        with pytest.raises(RemoteError, match="after 2 tries"):
            Trainer(cfg, tmp_path, progress=False).fit(model, train, val)
    state = json.loads((tmp_path / "last" / "trainer_state.json").read_text())["state"]
    assert state["global_step"] == 6  # the six completed steps were saved on the way out

    with running_server(make_app(tiny_box)) as url:  # a new server: no handle survives
        resumed = _classifier(exotune.connect(url, token=TOKEN, config=fast))
        result = Trainer(cfg, tmp_path, progress=False).fit(resumed, train, val, resume=True)
    assert result.steps == 10
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, atol=1e-5, rtol=1e-4)


def test_train_eval_and_predict_through_a_served_box(tiny_box, tmp_path, monkeypatch, capsys):
    """``--remote URL`` trains, evaluates and predicts against a served box (token from
    $EXOTUNE_TOKEN): the same adapter a local box gives, loadable against either."""
    from exotune.tasks.classification import TextClassifier

    from .conftest import colour_data

    data = colour_data(40, seed=0)
    csv = tmp_path / "train.csv"
    csv.write_text(
        "text,label\n" + "".join(f"{t},{data.label_names[y]}\n" for t, y in zip(data.texts, data.labels, strict=True))
    )
    monkeypatch.setenv("EXOTUNE_TOKEN", TOKEN)
    with running_server(make_app(tiny_box)) as url:
        argv = ["train", "--file", str(csv), "--epochs", "1", "--batch-size", "16", "--quiet"]
        assert main([*argv, "--remote", url, "--output-dir", str(tmp_path / "run")]) == 0
        assert (
            main(["eval", "--file", str(csv), "--remote", url, "--adapter", str(tmp_path / "run" / "best"), "--json"])
            == 0
        )
        assert 0 <= json.loads(capsys.readouterr().out.strip().splitlines()[-1])["accuracy"] <= 1
        assert (
            main(["predict", "--remote", url, "--adapter", str(tmp_path / "run" / "best"), "--text", "a red car"]) == 0
        )
        assert capsys.readouterr().out.split("\t")[0].split(" (")[0] in data.label_names
        assert main([*argv, "--remote", url, "--output-dir", str(tmp_path / "x"), "--entry-points", "1"]) == 2
        assert "owner chose" in capsys.readouterr().err
    local = TextClassifier.from_pretrained(tmp_path / "run" / "best", tiny_box)  # the same box, locally
    assert local.predict(["a red car"])[0] in data.label_names


def test_throughput_run_counts_timed_pairs_only_and_names_failures(tiny_box, shared_data):
    """The remote suite's load generator: warm-up pairs are not counted; a failure is counted and
    its message kept in the row, not raised."""
    from exotune.bench.remote import Budget, throughput_run

    budget = Budget(batch_size=4, pairs_per_client=2, concurrency=(1, 2), warmup_pairs=1)
    with running_server(make_app(tiny_box)) as url:
        rows = throughput_run(url, TOKEN, shared_data, budget)
        assert [(r["concurrency"], r["pairs"], r["failed"], r["errors"]) for r in rows] == [
            (1, 2, 0, []),
            (2, 4, 0, []),
        ]
    budget = Budget(batch_size=4, pairs_per_client=2, concurrency=(1,), warmup_pairs=1)
    with running_server(make_app(tiny_box, grad_budget=2)) as url:  # the warm-up and one timed pair
        (row,) = throughput_run(url, TOKEN, shared_data, budget)
    assert (row["pairs"], row["failed"]) == (1, 1)
    assert len(row["errors"]) == 1 and "budget" in row["errors"][0]
