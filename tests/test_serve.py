"""The served box over HTTP (in-process TestClient): auth, limits, validation, handles, leaks."""

from __future__ import annotations

import json
import struct

import pytest
import safetensors.torch
import torch

from exotune.boxes import load_box, wire
from exotune.errors import ConfigError, WireError
from exotune.serve import ServeConfig, create_app
from exotune.serve.handles import HandleError, HandleStore, Pending

from .conftest import backbone_module
from .serve_helpers import OTHER, TOKEN, EntryBox, make_app, make_client

pytest.importorskip("fastapi")


def _inputs(box, texts=("the car is red", "a blue sky")):
    b = box.embed(list(texts))
    return {"embeds": b.embeds, "mask": b.mask}


def _forward(client, tensors, train=False):
    # safetensors' own writer, not wire.encode: these tests send what a careless client might
    body = safetensors.torch.save({k: v.clone() for k, v in tensors.items()})
    return client.post(f"/v1/forward{'?train=true' if train else ''}", content=body)


def _error(r, status, code=None, fragment=None):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "message"}
    if code:
        assert body["error"] == code
    if fragment:
        assert fragment in body["message"]
    assert "Traceback" not in r.text


# -- the codec ------------------------------------------------------------------------------


def test_wire_round_trip_and_strict_decode():
    t = {"embeds": torch.randn(2, 3, 4), "mask": torch.ones(2, 3, dtype=torch.int64)}
    msg = wire.decode(wire.encode(t, {"handle": "abc"}))
    assert msg.meta == {"handle": "abc"} and all(torch.equal(msg.tensors[k], t[k]) for k in t)
    good = wire.encode(t)
    bad = [
        b"",
        b"1234",
        good[:-5],
        struct.pack("<Q", 2**40) + b"{}",
        struct.pack("<Q", 5) + b"notjs",
        wire.encode({"x": torch.ones(2)})[:8] + b"[1, 2]" + b" " * 2,
    ]
    for data in bad:
        with pytest.raises(WireError):
            wire.decode(data)
    with pytest.raises(WireError, match="F64"):
        wire.decode(safetensors.torch.save({"x": torch.ones(2, dtype=torch.float64)}))
    with pytest.raises(WireError, match="exceeds"):
        wire.decode(good, max_bytes=10)
    with pytest.raises(WireError, match="dtype"):
        wire.encode({"x": torch.ones(2, dtype=torch.float16)})


# -- auth, rate limits, budgets ---------------------------------------------------------------


def test_auth_is_required(tiny_box):
    app = make_app(tiny_box)
    assert make_client(app, None).get("/v1/health").json() == {"status": "ok"}
    r = make_client(app, None).get("/v1/spec")
    _error(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
    _error(make_client(app, "wrong-token-999").get("/v1/spec"), 401, "unauthorized", "invalid")
    _error(
        make_client(app, None).post("/v1/encode", json={"texts": ["a"]}, headers={"Authorization": f"Basic {TOKEN}"}),
        401,
    )
    assert make_client(app).get("/v1/spec").status_code == 200


def test_create_app_refuses_no_tokens_unless_asked(tiny_box):
    with pytest.raises(ConfigError, match="token"):
        create_app(tiny_box, [])
    with pytest.raises(ConfigError, match="8 characters"):
        create_app(tiny_box, ["short"])
    app = create_app(tiny_box, None, ServeConfig(no_auth=True))
    assert make_client(app, None).get("/v1/spec").status_code == 200


def test_rate_limit_answers_429(tiny_box):
    app = make_app(tiny_box, rate_per_s=0.01, burst=2)
    client = make_client(app)
    assert [client.get("/v1/spec").status_code for _ in range(2)] == [200, 200]
    r = client.get("/v1/spec")
    _error(r, 429, "rate_limited", "rate limit")
    assert int(r.headers["retry-after"]) >= 1
    assert make_client(app, None).get("/v1/health").status_code == 200  # health is not limited


def test_gradient_budget_answers_429(tiny_box):
    app = make_app(tiny_box, grad_budget=1)
    client = make_client(app)
    handles = [wire.decode(_forward(client, _inputs(tiny_box), train=True).content).meta["handle"] for _ in range(2)]
    grad = {"grad_outputs": torch.ones(2, tiny_box.spec.output_dim)}
    assert client.post("/v1/backward", content=wire.encode(grad, {"handle": handles[0]})).status_code == 200
    _error(
        client.post("/v1/backward", content=wire.encode(grad, {"handle": handles[1]})),
        429,
        "budget_exhausted",
        "budget",
    )
    _error(_forward(client, _inputs(tiny_box), train=True), 429, "budget_exhausted")
    assert _forward(client, _inputs(tiny_box)).status_code == 200  # plain forwards still work


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        (b"not safetensors at all", 400, "header"),
        (b"\x01\x02", 400, "truncated"),
        (struct.pack("<Q", 10**12) + b"{}", 400, "exceeds"),
        (struct.pack("<Q", 4) + b"{{{{", 400, "JSON"),
    ],
)
def test_malformed_safetensors(tiny_box, body, status, fragment):
    _error(make_client(make_app(tiny_box)).post("/v1/forward", content=body), status, "bad_tensors", fragment)


def test_truncated_safetensors(tiny_box):
    good = wire.encode(_inputs(tiny_box))
    _error(make_client(make_app(tiny_box)).post("/v1/forward", content=good[:-7]), 400, "bad_tensors")


@pytest.mark.parametrize(
    "change, status, fragment",
    [
        (lambda t: {**t, "embeds": t["embeds"].double()}, 400, "F64"),
        (lambda t: {**t, "embeds": t["embeds"].long()}, 422, "float32"),
        (lambda t: {**t, "mask": t["mask"].float()}, 422, "int64"),
        (lambda t: {**t, "embeds": torch.cat([t["embeds"], t["embeds"][..., :1]], -1)}, 422, "shape"),
        (lambda t: {**t, "mask": t["mask"][:, :-1]}, 422, "shape"),
        (lambda t: {**t, "embeds": t["embeds"][0]}, 422, "shape"),
        (lambda t: {**t, "mask": t["mask"] * 2}, 422, "0 and 1"),
        (lambda t: {"embeds": t["embeds"]}, 422, "mask"),
        (lambda t: {**t, "weights": t["embeds"]}, 422, "unexpected"),
        (lambda t: {**t, "entry.layer.1": torch.zeros(1, 16)}, 403, "light-gray"),
    ],
)
def test_invalid_forward_inputs(tiny_box, change, status, fragment):
    r = _forward(make_client(make_app(tiny_box)), change(_inputs(tiny_box)))
    _error(r, status, None, fragment)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_inputs_are_refused(tiny_box, value):
    t = _inputs(tiny_box)
    t["embeds"][0, 1, 2] = value
    _error(_forward(make_client(make_app(tiny_box)), t), 422, "invalid", "NaN or infinite")


def test_oversize_batch_and_sequence(tiny_box):
    client = make_client(make_app(tiny_box, max_batch=2, max_length=8))
    spec = client.get("/v1/spec").json()["spec"]
    assert spec["limits"] == {"max_batch": 2, "max_length": 8}
    _error(_forward(client, _inputs(tiny_box, ["red"] * 3)), 422, "limit", "max_batch")
    _error(_forward(client, _inputs(tiny_box, ["red " * 10])), 422, "limit", "max_length")
    _error(client.post("/v1/embed", json={"texts": ["red"] * 3}), 422, "limit", "at most 2")
    _error(client.post("/v1/encode", json={"texts": ["x" * 5000]}), 422, "limit", "characters")
    batch = wire.decode(client.post("/v1/embed", json={"texts": ["red " * 10]}).content).tensors
    assert batch["embeds"].shape[1] <= 8  # embed respects the served max_length


def test_oversize_body_is_refused_early_and_when_streamed(tiny_box):
    client = make_client(make_app(tiny_box, max_body_bytes=4096))
    _error(client.post("/v1/forward", content=b"x" * 5000), 413, "limit", "4096")

    def chunks():  # no Content-Length: the bounded read must stop it
        for _ in range(10):
            yield b"y" * 1000

    _error(client.post("/v1/forward", content=chunks()), 413, "limit")
    _error(client.post("/v1/encode", content=chunks()), 413, "limit")


def test_bad_json_bodies(tiny_box):
    client = make_client(make_app(tiny_box))
    _error(client.post("/v1/encode", content=b"{not json"), 400, "bad_json")
    _error(client.post("/v1/encode", json=["a"]), 400, "bad_json")
    _error(client.post("/v1/encode", json={"texts": "a"}), 422, "invalid", "list of strings")
    _error(client.post("/v1/scores", json={"texts": ["a"], "labels": []}), 422, "invalid", "labels")
    _error(client.post("/v1/embed", json={"texts": ["a"], "max_length": "x"}), 422, "invalid")
    _error(client.post("/v1/forward?train=maybe", content=b""), 422, "invalid")


@pytest.mark.parametrize(
    "path, body, status, code, fragment",
    [
        ("/v1/encode", b'{"texts": ["\\ud800"]}', 422, "invalid", "lone surrogate"),  # a JSON escape
        ("/v1/embed", b'{"texts": ["ok", "\\udfffx"]}', 422, "invalid", "text 1"),
        ("/v1/scores", b'{"texts": ["a"], "labels": ["\\ud800"]}', 422, "invalid", "'labels'"),
        ("/v1/encode", b"[" * 50_000 + b"]" * 50_000, 400, "bad_json", "nested too deep"),
        ("/v1/embed", b'{"texts": ["a"], "max_length": ' + b"9" * 5000 + b"}", 400, "bad_json", "number too long"),
        (
            "/v1/forward",
            struct.pack("<Q", 60_000) + b"[" * 30_000 + b"]" * 30_000,
            400,
            "bad_tensors",
            "nested too deep",
        ),
        (
            "/v1/backward",
            struct.pack("<Q", 5006) + b"[" + b"7" * 5000 + b"]     ",
            400,
            "bad_tensors",
            "number too long",
        ),
    ],
)
def test_hostile_bodies_are_refused_not_crashed_on(tiny_box, path, body, status, code, fragment):
    """Each of these once made the server answer 500 (an exception no handler expected)."""
    client = make_client(make_app(tiny_box))
    _error(client.post(path, content=body), status, code, fragment)
    assert client.get("/v1/spec").status_code == 200


def test_inputs_that_overflow_or_hold_no_token_are_refused(tiny_box):
    client = make_client(make_app(tiny_box))
    t = _inputs(tiny_box)
    _error(_forward(client, {**t, "embeds": torch.full_like(t["embeds"], 3e38)}), 422, "invalid", "infinite outputs")
    _error(_forward(client, {**t, "mask": torch.zeros_like(t["mask"])}), 422, "invalid", "at least one 1")
    handle = wire.decode(_forward(client, t, train=True).content).meta["handle"]
    huge = wire.encode({"grad_outputs": torch.full((2, 16), 3e38)}, {"handle": handle})
    _error(client.post("/v1/backward", content=huge), 422, "invalid", "overflowed")


def test_a_declared_content_type_must_be_the_routes(tiny_box):
    client = make_client(make_app(tiny_box))
    body = wire.encode(_inputs(tiny_box))
    _error(client.post("/v1/forward", content=body, headers={"Content-Type": "text/plain"}), 415, "media_type")
    _error(
        client.post("/v1/encode", content=b'{"texts": ["a"]}', headers={"Content-Type": wire.MEDIA_TYPE}),
        415,
        "media_type",
        "application/json",
    )
    ok = {"Content-Type": f"{wire.MEDIA_TYPE}; charset=binary"}  # parameters are ignored; absent is accepted
    assert client.post("/v1/forward", content=body, headers=ok).status_code == 200
    assert client.post("/v1/forward", content=body).status_code == 200


def test_unexpected_errors_give_a_generic_500(tiny_box):
    class Broken(EntryBox):
        def forward(self, embeds, mask, entry_tokens=None):
            raise RuntimeError("secret detail of BertLayer encoder.layer.0")

    r = _forward(make_client(make_app(Broken(tiny_box))), _inputs(tiny_box))
    _error(r, 500, "internal")
    assert "Bert" not in r.text and "secret" not in r.text


# -- handles ----------------------------------------------------------------------------------


def test_handles_are_single_use_and_bound_to_their_token(tiny_box):
    app = make_app(tiny_box, tokens=(TOKEN, OTHER))
    mine, theirs = make_client(app), make_client(app, OTHER)
    handle = wire.decode(_forward(mine, _inputs(tiny_box), train=True).content).meta["handle"]
    grad = wire.encode({"grad_outputs": torch.ones(2, 16)}, {"handle": handle})
    _error(theirs.post("/v1/backward", content=grad), 404, "handle_unknown")
    bad_shape = wire.encode({"grad_outputs": torch.ones(3, 16)}, {"handle": handle})
    _error(mine.post("/v1/backward", content=bad_shape), 422, "invalid", "grad_outputs")  # handle kept
    assert mine.post("/v1/backward", content=grad).status_code == 200
    _error(mine.post("/v1/backward", content=grad), 410, "handle_expired")  # used
    _error(theirs.post("/v1/backward", content=grad), 404, "handle_unknown")
    _error(
        mine.post("/v1/backward", content=wire.encode({"grad_outputs": torch.ones(2, 16)})), 422, "invalid", "handle"
    )
    _error(mine.post("/v1/backward", content=wire.encode({"grad_outputs": torch.ones(2, 16)}, {"handle": "nope"})), 404)


def test_handle_store_bounds():
    now = [0.0]
    store = HandleStore(max_count=2, max_bytes=100, ttl_s=10, clock=lambda: now[0])

    def pending(owner="a", nbytes=10):
        return Pending(owner, None, nbytes)

    h1, h2, h3 = store.put(pending()), store.put(pending()), store.put(pending())
    assert len(store) == 2
    with pytest.raises(HandleError) as info:  # evicted: least recently created first
        store.take(h1, "a")
    assert info.value.status == 410
    now[0] = 11.0  # h2 and h3 expire
    with pytest.raises(HandleError) as info:
        store.take(h2, "a")
    assert info.value.status == 410 and len(store) == 0
    h4, h5 = store.put(pending(nbytes=60)), store.put(pending(nbytes=60))
    assert store.nbytes == 60  # the older one was evicted to stay under max_bytes
    with pytest.raises(HandleError) as info:
        store.take(h4, "b")  # another owner's (even expired) handle reads as unknown
    assert info.value.status == 404
    assert store.take(h5, "a").nbytes == 60
    with pytest.raises(HandleError) as info:
        store.put(pending(nbytes=101))
    assert info.value.status == 413
    del h3


def test_graphs_never_backpropagated_are_freed(tiny_box):
    """An evicted (or expired) forward's graph must be freed: a soak run once found each
    abandoned forward held for good (a reference cycle through the saved-tensor hook)."""
    import gc

    def live_tensors() -> int:
        gc.collect()
        return sum(type(o) is torch.Tensor for o in gc.get_objects())

    app = make_app(tiny_box, max_handles=1)
    client = make_client(app)
    body = _inputs(tiny_box)
    _forward(client, body, train=True)
    before = live_tensors()
    for _ in range(10):
        _forward(client, body, train=True)  # each evicts the one before
    assert live_tensors() - before < 10


def test_handle_bytes_are_bounded_on_the_server(tiny_box):
    client = make_client(make_app(tiny_box, max_handle_bytes=1000))
    _error(_forward(client, _inputs(tiny_box), train=True), 413, "limit", "smaller batches")


# -- access levels ----------------------------------------------------------------------------


def test_black_level_refuses_gradients_but_answers_encode_and_scores(tiny_backbone, tiny_box):
    black = load_box(str(tiny_backbone), access="black")
    client = make_client(make_app(black))
    assert client.get("/v1/spec").json()["spec"]["access"] == "black"
    _error(client.post("/v1/embed", json={"texts": ["red"]}), 403, "access", "black")
    _error(_forward(client, _inputs(tiny_box), train=True), 403, "access")
    _error(client.post("/v1/backward", content=wire.encode({"grad_outputs": torch.ones(1, 16)})), 403, "access")
    out = wire.decode(client.post("/v1/encode", json={"texts": ["the red car", "sky"]}).content).tensors["outputs"]
    assert torch.allclose(out, tiny_box.encode(["the red car", "sky"]), atol=1e-6)
    scores = wire.decode(
        client.post("/v1/scores", json={"texts": ["the red car"], "labels": ["red", "blue", "green"]}).content
    )
    ref = (
        torch.nn.functional.normalize(tiny_box.encode(["the red car"]), dim=-1)
        @ torch.nn.functional.normalize(tiny_box.encode(["red", "blue", "green"]), dim=-1).T
    )
    assert torch.allclose(scores.tensors["scores"], ref, atol=1e-6)


class _CountingBox:
    """A box that counts the texts it encodes (the label cache should spare the label texts)."""

    def __init__(self, box):
        self.box, self.spec, self.encoded = box, box.spec, []

    def encode(self, texts, batch_size=128):
        self.encoded.append(list(texts))
        return self.box.encode(texts, batch_size=batch_size)


@pytest.mark.parametrize("cache_size", [0, 1])
def test_scores_encode_a_label_set_once_with_identical_scores(tiny_backbone, cache_size):
    box = _CountingBox(load_box(str(tiny_backbone), access="black"))
    client = make_client(make_app(box, label_cache_size=cache_size))
    colours, shapes = ["red", "blue", "green"], ["round", "square"]

    def scores(texts, labels):
        r = client.post("/v1/scores", json={"texts": texts, "labels": labels})
        return wire.decode(r.content).tensors["scores"]

    first = scores(["the red car", "sky"], colours)
    assert torch.equal(scores(["the red car"], colours), first[:1])  # cached or not: the same bits
    scores(["a ball"], shapes)  # with room for one set, this one evicts the colours
    scores(["sky"], colours)
    label_encodes = [t for t in box.encoded if t in (colours, shapes)]
    assert label_encodes == ([colours, colours, shapes, colours] if cache_size == 0 else [colours, shapes, colours])


def test_label_cache_size_is_validated():
    with pytest.raises(ConfigError, match="label_cache_size"):
        ServeConfig(label_cache_size=-1)


def test_entry_tokens_are_validated_at_light_gray(tiny_box):
    client = make_client(make_app(EntryBox(tiny_box, max_tokens=2)))
    t = _inputs(tiny_box)
    assert _forward(client, {**t, "entry.layer.1": torch.randn(2, 16)}).status_code == 200
    _error(_forward(client, {**t, "entry.layer.9": torch.randn(1, 16)}), 422, "invalid", "unknown entry point")
    _error(_forward(client, {**t, "entry.layer.1": torch.randn(3, 16)}), 422, "invalid", "1 <= n <= 2")
    _error(_forward(client, {**t, "entry.layer.1": torch.full((1, 16), float("nan"))}), 422, "invalid", "NaN")


# -- nothing about the backbone leaks ---------------------------------------------------------


def _forbidden_strings(box) -> set[str]:
    module = backbone_module(box)
    keys = set(module.state_dict())
    names = keys | {k.rsplit(".", 1)[0] for k in keys} | {"word_embeddings", "encoder.layer"}
    names |= {type(m).__name__ for m in module.modules()} | {"BertModel", "BertLayer"}
    return {n for n in names if len(n) >= 5}


def _weight_windows(box, skip=()) -> set[bytes]:
    """Every 8-byte run (two consecutive float32 values) of every non-constant weight."""
    windows = set()
    for name, t in backbone_module(box).state_dict().items():
        if not t.is_floating_point() or t.numel() < 2 or bool((t == t.flatten()[0]).all()) or name in skip:
            continue
        raw = t.detach().float().contiguous().numpy().tobytes()
        windows.update(raw[i : i + 8] for i in range(0, len(raw) - 7, 4))
    windows.discard(bytes(8))  # zeros (the padding row, zero gradients) reveal nothing
    return windows


def _requests(client, box) -> dict[tuple[str, str], list]:
    """Valid and invalid requests for every route; a new route must be added here."""
    t = _inputs(box)
    fwd = _forward(client, t, train=True)
    handle = wire.decode(fwd.content).meta["handle"]
    grad = wire.encode({"grad_outputs": torch.randn(2, box.spec.output_dim)}, {"handle": handle})
    texts = {"texts": ["the red car", "blue sky"]}
    name = client.app.state.model_name
    return {
        ("get", "/v1/health"): [lambda: client.get("/v1/health")],
        ("get", "/v1/spec"): [lambda: client.get("/v1/spec")],
        ("post", "/v1/embed"): [
            lambda: client.post("/v1/embed", json=texts),
            lambda: client.post("/v1/embed", json={"texts": 3}),
        ],
        ("post", "/v1/forward"): [
            lambda: fwd,
            lambda: _forward(client, t),
            lambda: _forward(client, {**t, "embeds": t["embeds"][..., :3]}),
        ],
        ("post", "/v1/backward"): [
            lambda: client.post("/v1/backward", content=grad),
            lambda: client.post("/v1/backward", content=grad),
        ],
        ("post", "/v1/encode"): [
            lambda: client.post("/v1/encode", json=texts),
            lambda: client.post("/v1/encode", content=b"\xff"),
        ],
        ("post", "/v1/scores"): [
            lambda: client.post("/v1/scores", json={**texts, "labels": ["red", "blue"]}),
            lambda: client.post("/v1/scores", json=texts),
        ],
        ("post", "/v1/embeddings"): [
            lambda: client.post("/v1/embeddings", json={"model": name, "input": texts["texts"]}),
            lambda: client.post("/v1/embeddings", json={"model": "other", "input": "x"}),
        ],
        ("get", "/v1/models"): [lambda: client.get("/v1/models")],
        ("get", "/v1/models/{model}"): [lambda: client.get(f"/v1/models/{name}"), lambda: client.get("/v1/models/x")],
    }


def test_no_route_reveals_the_backbone(tiny_box):
    app = make_app(tiny_box)
    client = make_client(app)
    routes = {(m, p) for p, item in app.openapi()["paths"].items() for m in item}
    requests = _requests(client, tiny_box)
    assert routes == set(requests), "every route in the OpenAPI document must be checked"
    forbidden = _forbidden_strings(tiny_box)
    all_windows = _weight_windows(tiny_box)
    # /v1/embed returns rows of the input-embedding table by design (the dark-gray contract)
    embed_windows = _weight_windows(tiny_box, skip={"embeddings.word_embeddings.weight"})
    checked = 0
    for (_method, path), calls in requests.items():
        for call in calls:
            r = call()
            texts = [json.dumps(dict(r.headers))]
            if r.headers.get("content-type") == wire.MEDIA_TYPE:
                (n,) = struct.unpack("<Q", r.content[:8])
                texts.append(r.content[8 : 8 + n].decode())  # header: tensor names + metadata
                wire.decode(r.content)
                body = r.content[8 + n :]
                windows = embed_windows if path == "/v1/embed" else all_windows
                assert not any(body[i : i + 8] in windows for i in range(len(body) - 7)), path
            else:
                texts.append(r.text)
            blob = "\n".join(texts)
            leaked = [s for s in forbidden if s in blob]
            assert not leaked, f"{path} reveals {leaked}"
            checked += 1
    assert checked == sum(len(calls) for calls in requests.values())
    # the byte check works: an /embed answer does hold input-embedding rows
    body = client.post("/v1/embed", json={"texts": ["red"]}).content
    assert any(body[i : i + 8] in all_windows for i in range(len(body) - 7))
    assert "Bert" not in json.dumps(app.openapi())


def test_serve_limits_malloc_arenas_unless_the_environment_chose(monkeypatch):
    import platform
    import sys

    from exotune.cli.serve import limit_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False  # the owner's own setting wins
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert limit_malloc_arenas() is glibc
