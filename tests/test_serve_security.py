"""The served box against an attacker: work per request, fairness between tokens, admission
of training graphs, memory after abandonment, answer sizes, refused backwards, logins,
redirects, disconnects and slow connections. Each test failed before its fix."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import pytest
import torch

from exotune.boxes import Box, wire
from exotune.serve import handles as handles_module
from exotune.serve.config import ListenConfig
from exotune.serve.fair import FairScheduler
from exotune.serve.handles import HandleStore, Pending

from .serve_helpers import OTHER, TOKEN, make_app, make_client, remote, running_server

pytest.importorskip("fastapi")


class GatedBox(Box):
    """A box that records each forward's (rows, length) and stops forwards of shape ``hold``
    (rows, length) until ``go`` is set."""

    def __init__(self, inner: Box) -> None:
        self.inner, self.spec = inner, inner.spec
        self.calls: list[tuple[int, int]] = []
        self.hold, self.go, self.holding = None, threading.Event(), threading.Event()

    def embed(self, texts, max_length=None):
        return self.inner.embed(texts, max_length)

    def forward(self, embeds, mask, entry_tokens=None):
        self.calls.append(tuple(embeds.shape[:2]))
        if tuple(embeds.shape[:2]) == self.hold:
            self.holding.set()
            assert self.go.wait(30)
        return self.inner.forward(embeds, mask, entry_tokens)


def _wait_for(condition, seconds: float = 20.0) -> bool:
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def _error(r, status: int, code: str, fragment: str = "") -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["error"] == code and fragment in body["message"], body
    return body


def _inputs(box, n: int = 2) -> dict:
    batch = box.embed(["the red car", "a blue sky", "big green leaf"][:n])
    return {"embeds": batch.embeds, "mask": batch.mask}


def _train(client, tensors):
    return client.post(
        "/v1/forward?train=true", content=wire.encode(tensors), headers={"Content-Type": wire.MEDIA_TYPE}
    )


# -- item 2: work per request and fairness ------------------------------------------------------


def test_work_per_request_is_bounded_for_texts_and_labels(tiny_box):
    client = make_client(make_app(tiny_box, max_batch=4, max_tokens_per_request=20))
    server = client.get("/v1/spec").json()["server"]
    assert server["max_tokens_per_request"] == 20 and "max_labels" not in server
    _error(client.post("/v1/scores", json={"texts": ["red"], "labels": ["a"] * 5}), 422, "limit", "at most 4")
    _error(client.post("/v1/encode", json={"texts": ["the red car", "a blue sky"]}), 422, "limit", "at most 20")
    _error(client.post("/v1/scores", json={"texts": ["red"], "labels": ["the red car", "a blue sky"]}), 422, "limit")
    assert client.post("/v1/scores", json={"texts": ["red"], "labels": ["car", "sky"]}).status_code == 200
    default = make_client(make_app(tiny_box)).get("/v1/spec").json()
    limits = default["spec"]["limits"]
    assert default["server"]["max_tokens_per_request"] == limits["max_batch"] * limits["max_length"]


def test_the_black_spec_does_not_reveal_the_max_length_through_the_work_bound(tiny_backbone):
    from exotune.boxes import load_box

    black = load_box(str(tiny_backbone), access="black")
    assert "max_tokens_per_request" not in make_client(make_app(black)).get("/v1/spec").json()["server"]
    explicit = make_client(make_app(black, max_tokens_per_request=100)).get("/v1/spec").json()["server"]
    assert explicit["max_tokens_per_request"] == 100


def test_a_remote_box_sends_labels_over_max_batch_in_blocks(tiny_box):
    texts, labels = ["the red car", "a blue sky", "big leaf"], ["red", "blue", "green", "sky", "car"]
    with remote(make_app(tiny_box, max_batch=2)) as tight, remote(make_app(tiny_box)) as wide:
        got, want = tight.scores(texts, labels), wide.scores(texts, labels)
    assert got.shape == (3, 5) and torch.allclose(got, want, atol=1e-6)


def test_fair_scheduler_gives_the_next_turn_to_the_token_served_least_recently():
    scheduler, order, started = FairScheduler(1), [], threading.Event()
    release = threading.Event()

    def heavy():
        for i in range(4):
            with scheduler.turn("a"):
                order.append(f"a{i}")
                started.set()
                release.wait(10)

    t = threading.Thread(target=heavy)
    t.start()
    assert started.wait(10)

    def light():
        with scheduler.turn("b"):
            order.append("b")

    u = threading.Thread(target=light)
    u.start()
    assert _wait_for(lambda: scheduler.waiting() == 1)
    release.set()
    t.join(10)
    u.join(10)
    assert order == ["a0", "b", "a1", "a2", "a3"]


def test_a_heavy_request_delays_another_tokens_small_one_by_one_unit(tiny_box):
    box = GatedBox(tiny_box)
    app = make_app(box, tokens=(TOKEN, OTHER), fair_unit_tokens=8)
    heavy_texts = ["the red car is very fast today"] * 6  # 32 bytes each: one unit per text
    box.hold = (1, tiny_box.embed(heavy_texts[:1]).embeds.shape[1])
    answers = {}
    heavy = threading.Thread(
        target=lambda: answers.update(heavy=make_client(app).post("/v1/encode", json={"texts": heavy_texts}))
    )
    heavy.start()
    assert box.holding.wait(20)  # the heavy request is in its first unit
    light = threading.Thread(
        target=lambda: answers.update(light=make_client(app, OTHER).post("/v1/encode", json={"texts": ["red"]}))
    )
    light.start()
    assert _wait_for(lambda: app.state.service.scheduler.waiting() >= 1)
    box.hold = None
    box.go.set()
    heavy.join(30)
    light.join(30)
    assert answers["heavy"].status_code == 200 and answers["light"].status_code == 200
    lengths = [length for _, length in box.calls]
    assert len(lengths) == 7 and lengths[1] == 3 and min(lengths[:1] + lengths[2:]) > 3, lengths  # [CLS] red [SEP]


# -- item 4: concurrent training forwards are admitted before their graphs are built -----------


def test_the_graph_estimate_matches_what_the_graph_holds(tiny_box):
    app = make_app(tiny_box)
    client, service = make_client(app), app.state.service
    for n, words in ((3, 4), (1, 20)):
        t = tiny_box.embed([" ".join(["red car"] * words)] * n)
        before = service.handles.nbytes
        assert _train(client, {"embeds": t.embeds, "mask": t.mask}).status_code == 200
        held = service.handles.nbytes - before
        estimate = service.estimate_graph_bytes("t0", t.embeds, {})
        assert abs(estimate / held - 1) < 0.1, (n, words, estimate, held)


def test_concurrent_training_forwards_cannot_overshoot_the_handle_bytes(tiny_box):
    t = _inputs(tiny_box)
    probe = make_app(tiny_box)
    one = probe.state.service.estimate_graph_bytes("t0", t["embeds"], {})
    box = GatedBox(tiny_box)
    app = make_app(box, tokens=(TOKEN, OTHER), max_handle_bytes=int(1.5 * one))
    box.hold = tuple(t["embeds"].shape[:2])
    first = {}
    thread = threading.Thread(target=lambda: first.update(r=_train(make_client(app), t)))
    thread.start()
    assert box.holding.wait(20)  # its bytes are reserved; its graph is being built
    r = _train(make_client(app, OTHER), t)
    _error(r, 503, "busy", "retry")
    assert int(r.headers["retry-after"]) >= 1
    box.hold = None
    box.go.set()
    thread.join(30)
    assert first["r"].status_code == 200
    assert _train(make_client(app, OTHER), t).status_code == 200  # the older graph is evicted for it
    assert len(app.state.service.handles) == 1


def test_a_reservation_is_given_back_when_the_forward_fails():
    store = HandleStore(max_count=4, max_bytes=100, ttl_s=60)
    r = store.reserve(60)
    with pytest.raises(handles_module.HandleError) as info:
        store.reserve(60)
    assert info.value.status == 503
    store.release(r)
    assert store.nbytes == 0
    store.put(Pending("a", None, 70), store.reserve(60))
    assert store.nbytes == 70


# -- item 5: abandoned forwards --------------------------------------------------------------------


def test_expired_handles_are_purged_on_a_timer_and_memory_trimmed(monkeypatch):
    trims = []
    monkeypatch.setattr(handles_module, "release_memory", lambda collect=True: trims.append(collect) or True)
    store = HandleStore(max_count=4, max_bytes=2**40, ttl_s=0.2)
    store.put(Pending("a", None, handles_module.TRIM_AFTER_BYTES))
    assert _wait_for(lambda: len(store) == 0 and trims, 10)  # no request came: the timer did it
    assert store.nbytes == 0


# -- item 8: answer sizes --------------------------------------------------------------------------


def test_answers_are_bounded_before_the_work_is_done(tiny_box):
    box = GatedBox(tiny_box)
    client = make_client(make_app(box, max_response_bytes=500))
    assert client.get("/v1/spec").json()["server"]["max_response_bytes"] == 500
    texts = ["red car"] * 10
    _error(client.post("/v1/embed", json={"texts": texts}), 422, "limit", "/v1/embed would answer")
    _error(client.post("/v1/encode", json={"texts": texts}), 422, "limit", "at most 500")
    assert box.calls == []  # refused before any forward
    assert client.post("/v1/scores", json={"texts": texts[:3], "labels": ["car", "sky"]}).status_code == 200


# -- item 9: a refused backward --------------------------------------------------------------------


def test_a_backward_refused_for_overflow_keeps_its_handle_and_budget(tiny_box):
    client = make_client(make_app(tiny_box, grad_budget=1))
    handle = wire.decode(_train(client, _inputs(tiny_box)).content).meta["handle"]
    huge = wire.encode({"grad_outputs": torch.full((2, 16), 3e38)}, {"handle": handle})
    body = _error(client.post("/v1/backward", content=huge), 422, "invalid", "scale it down")
    assert "same handle" in body["message"] and "budget" in body["message"]
    fine = wire.encode({"grad_outputs": torch.ones(2, 16)}, {"handle": handle})
    assert client.post("/v1/backward", content=fine).status_code == 200


# -- item 10: logins, redirects, disconnects ---------------------------------------------------------


def test_wrong_tokens_are_throttled_per_address(tiny_box):
    app = make_app(tiny_box, login_failures=3)
    wrong, right = make_client(app, "w" * 16), make_client(app)
    assert [wrong.get("/v1/spec").status_code for _ in range(3)] == [401] * 3
    r = wrong.get("/v1/spec")
    _error(r, 429, "login_throttled", "wrong tokens")
    assert int(r.headers["retry-after"]) >= 1
    _error(right.get("/v1/spec"), 429, "login_throttled")  # a guess that happens to be right waits too
    assert right.get("/v1/health").status_code == 200


def test_a_trailing_slash_is_not_redirected_to_the_callers_host(tiny_box):
    client = make_client(make_app(tiny_box))
    r = client.get("/v1/spec/", headers={"Host": "evil.example"}, follow_redirects=False)
    _error(r, 404, "http")
    assert "location" not in r.headers


def test_a_client_hanging_up_is_one_log_line(tiny_box, caplog):
    app = make_app(tiny_box)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/encode",
        "raw_path": b"/v1/encode",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"authorization", f"Bearer {TOKEN}".encode()),
            (b"content-type", b"application/json"),
            (b"host", b"testserver"),
        ],
        "client": ("127.0.0.1", 5555),
        "server": ("127.0.0.1", 8000),
    }

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        pass

    with caplog.at_level(logging.INFO, logger="exotune.serve"):
        asyncio.run(app(scope, receive, send))
    records = [r for r in caplog.records if r.name == "exotune.serve"]
    assert len(records) == 1 and records[0].exc_info is None and "hung up" in records[0].getMessage(), records


# -- item 3: slow and many connections ----------------------------------------------------------------


def _socket(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.settimeout(10)
    return s


def test_slow_request_heads_and_bodies_are_cut(tiny_box):
    app = make_app(tiny_box, body_timeout_s=0.5)
    with running_server(app, ListenConfig(header_timeout_s=0.5)) as url:
        head = _socket(url)
        head.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        assert head.recv(100) == b""  # closed, not waiting for good
        body = _socket(url)
        body.sendall(
            b"POST /v1/encode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n".encode()
            + b'{"texts": '
        )
        assert body.recv(200).startswith(b"HTTP/1.1 408")
        kept = _socket(url)  # a kept-alive connection: the next request's head is timed too
        kept.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b'{"status":"ok"}'):  # the head and the body may come apart
            answer += kept.recv(500)
        assert answer.startswith(b"HTTP/1.1 200")
        kept.sendall(b"GET /v1/health HTTP/1.1\r\n")
        assert kept.recv(100) == b""
        for s in (head, body, kept):
            s.close()


def test_connections_beyond_the_cap_are_closed_on_accept(tiny_box):
    with running_server(make_app(tiny_box), ListenConfig(max_connections=2)) as url:
        held = [_socket(url) for _ in range(2)]
        extra = _socket(url)
        assert extra.recv(100) == b""
        held[0].sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert held[0].recv(200).startswith(b"HTTP/1.1 200")
        for s in (*held, extra):
            s.close()


def test_serve_flags_reach_the_app_and_the_listener(tiny_backbone, tmp_path):
    import argparse

    from exotune.cli.serve import add_serve_args, build_server, listen_config

    p = argparse.ArgumentParser()
    add_serve_args(p)
    help_text = p.format_help()
    for flag in (
        "--max-tokens-per-request",
        "--max-response-mb",
        "--fair-unit-tokens",
        "--body-timeout",
        "--header-timeout",
        "--keep-alive-timeout",
        "--max-connections",
        "--login-failures",
    ):
        assert flag in help_text
    args = p.parse_args(
        [
            "--model",
            str(tiny_backbone),
            "--no-auth",
            "--max-tokens-per-request",
            "100",
            "--max-response-mb",
            "1",
            "--header-timeout",
            "3",
            "--max-connections",
            "9",
            "--login-failures",
            "5",
            "--body-timeout",
            "7",
            "--owner-secret-file",
            str(tmp_path / "owner-secret"),
        ]
    )
    config = build_server(args).state.service.config
    assert (config.max_tokens_per_request, config.max_response_bytes, config.login_failures, config.body_timeout_s) == (
        100,
        2**20,
        5,
        7.0,
    )
    assert listen_config(args) == ListenConfig(keep_alive_s=5.0, header_timeout_s=3.0, max_connections=9)
