"""Bad input, property-based: every answer must be a 2xx or a 4xx with a JSON message, never a
5xx, never a leak, and the server must keep serving (and keep computing right) afterwards.

Two generators, both deterministic (hypothesis derandomised, no example database):
- schemathesis over the app's OpenAPI document: for every operation, cases that fit the
  schema and cases that break it (types, missing fields, query parameters, content types);
- hypothesis over the payloads the schema cannot describe: safetensors messages with every
  dtype, NaN/inf/huge values, wrong and huge shapes, truncated or corrupted bytes, hostile
  headers; JSON bodies nested deep, with huge numbers and lone surrogates; wrong content
  types; backward calls on real handles with bad gradients.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np

from exotune.bench.reliability.common import LEAK_MARKERS, answer_problems, relative_error
from exotune.boxes import wire

ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
SPECIAL = [float("nan"), float("inf"), float("-inf"), 3.4e38, -3.4e38, 1e-45, 0.0, -0.0, 1e30]
NAMES = ["embeds", "mask", "grad_outputs", "entry.layer.0", "entry.nope", "outputs", "x", "", "é", "a" * 300]
CONTENT_TYPES = [
    None,
    wire.MEDIA_TYPE,
    wire.MEDIA_TYPE + "; v=1",
    "application/json",
    "text/plain",
    "application/octet-stream",
    "multipart/form-data; boundary=x",
    "application/x-www-form-urlencoded",
    "garbage/∅".encode().decode("latin-1"),
]
HOSTILE_JSON = [
    b"[" * 100_000,
    b"[" * 50_000 + b"]" * 50_000,
    b'{"texts": ["a"], "max_length": ' + b"7" * 6000 + b"}",
    b'{"texts": ["\\ud800"]}',
    b'{"texts": ["ok", "\\udfff\\ud800"], "labels": ["a"]}',
    b"NaN",
    b'{"texts": [NaN, Infinity]}',
    b"\xef\xbb\xbf{}",
    b'{"texts": ["\xff\xfe"]}',
    b"",
    b"null",
    b'{"texts": []}',
    b'{"texts": ["a"], "labels": [' + b'"x",' * 2000 + b'"y"]}',
    b'{"texts": ' + json.dumps(["word " * 900] * 70).encode() + b"}",
]
HOSTILE_HEADERS = [
    b"[" * 30_000 + b"]" * 30_000,
    b"[" + b"9" * 5000 + b"]",
    b"null",
    b"1e999",
    b'"x"',
    b'{"__metadata__": {"handle": ' + b"1" * 5000 + b"}}",
    b'{"__metadata__": []}',
    b'{"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}',
    b'{"a": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 4]}}',
    b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}',
]


def _strategies(dim: int, out_dim: int):
    from hypothesis import strategies as st

    shapes = st.one_of(
        st.sampled_from(
            [
                [1, 4, dim],
                [2, 3, dim],
                [1, 4],
                [2, 3],
                [2, out_dim],
                [1, out_dim],
                [1, dim],
                [0, 4, dim],
                [1, 0, dim],
                [1, 4, dim + 1],
                [2**31, 2**31],
                [0, 10**12],
                [1] * 8,
                [],
            ]
        ),
        st.lists(st.integers(0, 6), max_size=4),
    )

    @st.composite
    def tensor(draw):
        name = draw(st.sampled_from(NAMES) | st.text(max_size=12))
        dtype = draw(st.sampled_from(list(ITEMSIZE)))
        shape = draw(shapes)
        count = math.prod(shape)
        if dtype == "F32" and count <= 4096:
            values = draw(st.lists(st.sampled_from(SPECIAL) | st.floats(width=32), min_size=count, max_size=count))
            data = np.asarray(values, dtype=np.float32).tobytes()
        elif dtype == "I64" and count <= 4096:
            data = np.asarray(
                draw(st.lists(st.integers(-3, 3) | st.just(2**62), min_size=count, max_size=count)), dtype=np.int64
            ).tobytes()
        else:
            data = draw(st.binary(min_size=0, max_size=64))  # the wrong length for most shapes
        cut = draw(st.sampled_from([0, 0, 0, -1, 1, -3]))
        return name, dtype, shape, data[: max(0, len(data) + cut)] if cut < 0 else data + b"\0" * cut

    @st.composite
    def message(draw):
        parts = draw(st.lists(tensor(), max_size=5))
        header, body = {}, b""
        for name, dtype, shape, data in parts:
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(body), len(body) + len(data)]}
            body += data
        meta = draw(
            st.none()
            | st.dictionaries(st.sampled_from(["handle", "x"]), st.text(max_size=40), max_size=2)
            | st.just({"handle": 5})
        )
        if meta is not None:
            header["__metadata__"] = meta
        raw = json.dumps(header).encode()
        return struct.pack("<Q", len(raw)) + raw + body

    @st.composite
    def mutated(draw, valid: bytes):
        data = bytearray(valid)
        kind = draw(st.sampled_from(["truncate", "flip", "append", "length", "splice"]))
        if kind == "truncate":
            return bytes(data[: draw(st.integers(0, len(data) - 1))])
        if kind == "flip":
            for i in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
                data[i] ^= draw(st.integers(1, 255))
            return bytes(data)
        if kind == "append":
            return bytes(data) + draw(st.binary(min_size=1, max_size=64))
        if kind == "length":
            return struct.pack("<Q", draw(st.integers(0, 2**64 - 1))) + bytes(data[8:])
        i = draw(st.integers(0, len(data)))
        return bytes(data[:i]) + draw(st.binary(max_size=32)) + bytes(data[i:])

    def hostile_header():
        return st.sampled_from(HOSTILE_HEADERS).map(lambda h: struct.pack("<Q", len(h)) + h)

    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    )
    near_valid = st.fixed_dictionaries(
        {"texts": st.lists(st.text(max_size=60), max_size=6)},
        optional={
            "labels": st.lists(st.text(max_size=20), max_size=4),
            "max_length": st.integers(-5, 10**6) | st.none() | st.text(max_size=3),
        },
    )
    json_body = st.one_of(
        json_values.map(lambda v: json.dumps(v).encode()),
        near_valid.map(lambda v: json.dumps(v).encode()),
        st.sampled_from(HOSTILE_JSON),
        st.binary(max_size=64),
    )
    return st, message, mutated, hostile_header, json_body


def _call(http, method, url, auth, body, content_type, params=None):
    headers = dict(auth)
    if content_type is not None:
        headers["Content-Type"] = content_type.encode("latin-1")  # bytes: httpx sends them as they are
    return http.request(method, url, content=body, headers=headers, params=params)


def run(server, local, budget) -> dict:
    import httpx
    from hypothesis import HealthCheck, Phase, given, settings

    from exotune.serve import ServeConfig, create_app

    problems: list[str] = []
    tried = {"openapi": 0, "payloads": 0, "edges": 0}
    classes: dict[str, int] = {}
    auth = {"Authorization": f"Bearer {server.token}"}
    http = httpx.Client(timeout=120.0)
    dim, out_dim = local.spec.input_dim, local.spec.output_dim
    batch = local.embed(["the card I ordered has not arrived", "a blue sky"])
    valid_forward = wire.encode({"embeds": batch.embeds, "mask": batch.mask})

    def check(r, sent: bytes, where: str) -> None:
        key = f"{r.status_code // 100}xx"
        classes[key] = classes.get(key, 0) + 1
        for p in answer_problems(r.status_code, r.headers.get("content-type", ""), r.content, sent):
            problems.append(f"{where}: {p}")

    def alive(where: str) -> None:
        if server.proc.poll() is not None:
            raise RuntimeError(f"the server died during {where} (exit {server.proc.returncode})")

    fuzz_settings = settings(
        max_examples=budget.fuzz_examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )

    # -- schemathesis over the OpenAPI document (the app does not serve it: built here) --------
    import schemathesis
    from schemathesis import GenerationMode

    document = create_app(local, ["x" * 16], ServeConfig()).openapi()
    schemathesis.serializer.alias(wire.MEDIA_TYPE, "application/octet-stream")  # tensor bodies: bytes as they are
    schema = schemathesis.openapi.from_dict(document)
    operations = []
    for result in schema.get_all_operations():
        op = result.ok()
        operations.append(f"{op.method.upper()} {op.path}")
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                strategy = op.as_strategy(generation_mode=mode)
            except Exception as err:  # an operation with nothing to break (no parameters, no body)
                if mode == GenerationMode.POSITIVE:
                    problems.append(f"schemathesis {op.path}: no strategy ({err})")
                continue

            where = f"{op.method.upper()} {op.path} ({mode.value})"

            @fuzz_settings
            @given(case=strategy)
            def one(case):
                tried["openapi"] += 1
                r = case.call(base_url=server.url, headers=auth, timeout=120)
                body = getattr(r.request, "body", None)
                sent = body if isinstance(body, bytes) else str(body or "").encode()
                check(_Answer(r), sent, where)  # noqa: B023 (run at once, inside this iteration)

            try:
                one()
            except Exception as err:  # hypothesis found no example, or the generator itself failed
                if "Unsatisfiable" not in type(err).__name__:
                    problems.append(f"schemathesis {op.path} {mode.value}: {type(err).__name__}: {err}"[:300])
            alive(f"schemathesis on {op.path}")

    # -- hypothesis over payloads ------------------------------------------------------------
    st, message, mutated, hostile_header, json_body = _strategies(dim, out_dim)
    tensor_routes = [("/v1/forward", None), ("/v1/forward", {"train": "true"}), ("/v1/backward", None)]
    payload = st.one_of(message(), mutated(valid_forward), hostile_header(), st.binary(max_size=128))
    per_kind = max(1, budget.wire_examples // 4)

    @settings(fuzz_settings, max_examples=per_kind * 2)
    @given(
        route=st.sampled_from(tensor_routes),
        body=payload,
        content_type=st.sampled_from([None, wire.MEDIA_TYPE, wire.MEDIA_TYPE, *CONTENT_TYPES[3:]]),
    )
    def tensor_payloads(route, body, content_type):
        tried["payloads"] += 1
        check(_call(http, "POST", server.url + route[0], auth, body, content_type, route[1]), body, route[0])

    @settings(fuzz_settings, max_examples=per_kind)
    @given(
        route=st.sampled_from(["/v1/embed", "/v1/encode", "/v1/scores"]),
        body=json_body,
        content_type=st.sampled_from(
            [None, "application/json", "application/json; charset=utf-8", *CONTENT_TYPES[1:3], "text/plain"]
        ),
    )
    def json_payloads(route, body, content_type):
        tried["payloads"] += 1
        check(_call(http, "POST", server.url + route, auth, body, content_type), body, route)

    grads = st.one_of(
        message(),
        st.lists(st.sampled_from(SPECIAL) | st.floats(width=32), min_size=2 * out_dim, max_size=2 * out_dim).map(
            lambda v: _grad(v, out_dim)
        ),
    )

    @settings(fuzz_settings, max_examples=per_kind)
    @given(body=grads, keep_handle=st.booleans())
    def backward_on_real_handles(body, keep_handle):
        tried["payloads"] += 1
        fwd = http.post(
            server.url + "/v1/forward",
            params={"train": "true"},
            content=valid_forward,
            headers={**auth, "Content-Type": wire.MEDIA_TYPE},
        )
        handle = wire.decode(fwd.content).meta["handle"]
        try:
            msg = wire.decode(body)
            tensors, meta = msg.tensors, {**msg.meta, **({"handle": handle} if keep_handle else {})}
            body = wire.encode(tensors, meta)
        except Exception:  # not decodable here either: send it as it is
            pass
        check(_call(http, "POST", server.url + "/v1/backward", auth, body, wire.MEDIA_TYPE), body, "/v1/backward")

    for fn in (tensor_payloads, json_payloads, backward_on_real_handles):
        fn()
        alive(fn.__name__)

    # -- edges the generators would rarely reach, some below HTTP (raw bytes on the socket) ----
    limit = int(http.get(server.url + "/v1/spec", headers=auth).json()["server"]["max_body_bytes"])
    for method, path, body, ctype in [
        ("GET", "/v1/forward", b"", None),
        ("DELETE", "/v1/spec", b"", None),
        ("GET", "/v1/nothing", b"", None),
        ("POST", "/v1/forward?train=maybe", valid_forward, wire.MEDIA_TYPE),
        ("POST", "/v1/forward?train=true&train=false", valid_forward, wire.MEDIA_TYPE),
        ("GET", "/v1/spec?" + "a=1&" * 2000, b"", None),
    ]:
        tried["edges"] += 1
        check(_call(http, method, server.url + path, auth, body, ctype), body, f"{method} {path[:40]}")
    token = server.token.encode()
    head = b"Host: 127.0.0.1\r\nAuthorization: Bearer " + token + b"\r\n"
    raw_cases = [  # (request bytes, body chunks, whether the answer comes from the app: JSON expected)
        (b"POST /v1/forward HTTP/1.1\r\n" + head + b"Content-Length: %d\r\n\r\n" % (limit + 1), [], True),
        (
            b"POST /v1/forward HTTP/1.1\r\n" + head + b"Transfer-Encoding: chunked\r\n\r\n",
            [b"10000\r\n" + b"\0" * 65536 + b"\r\n"] * (limit // 65536 + 2) + [b"0\r\n\r\n"],
            True,
        ),
        (b"POST /v1/forward HTTP/1.1\r\n" + head + b"Content-Length: abc\r\n\r\n", [], False),
        (b"POST /v1/forward HTTP/1.1\r\n" + head + b"Content-Length: -5\r\n\r\n", [], False),
        (
            b"GET /v1/spec HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\r\n\r\n",
            [],
            True,
        ),
        (b"GET /v1/spec HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n", [], False),
        (b"GET /v1/%ff%fe/../spec HTTP/1.1\r\n" + head + b"\r\n", [], True),
        (b"BREW /v1/spec HTTP/1.1\r\n" + head + b"\r\n", [], True),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 64, [], False),  # a TLS hello
    ]
    for request, chunks, from_app in raw_cases:
        tried["edges"] += 1
        status, ctype, body = _raw(server.port, request, chunks)
        where = f"raw {request[:30]!r}"
        if status is None:
            if from_app:
                problems.append(f"{where}: no answer")
            continue
        classes[f"{status // 100}xx"] = classes.get(f"{status // 100}xx", 0) + 1
        if from_app:
            problems += [f"{where}: {p}" for p in answer_problems(status, ctype, body, request)]
        elif status >= 500:
            problems.append(f"{where}: HTTP {status}")
    alive("edges")

    # -- still serving, and still right ----------------------------------------------------------
    health = http.get(server.url + "/v1/health").status_code
    still_right = _gradient_check(server, local)
    http.close()
    cases = sum(tried.values())
    return {
        "ok": not problems and health == 200 and still_right <= 1e-3 and classes.get("5xx", 0) == 0,
        "cases": cases,
        "by_generator": tried,
        "status_classes": classes,
        "operations": operations,
        "health_after": health,
        "relative_gradient_error_after": still_right,
        "leak_markers": list(LEAK_MARKERS),
        "problems": problems[:20],
    }


class _Answer:
    """A schemathesis response (header values are lists) seen as the object ``check`` reads."""

    def __init__(self, r) -> None:
        self.status_code, self.content = r.status_code, r.content
        self.headers = {k.lower(): v[0] if isinstance(v, list) else v for k, v in r.headers.items()}


def _grad(values, out_dim: int) -> bytes:
    import torch

    return wire.encode({"grad_outputs": torch.tensor(np.asarray(values, dtype=np.float32).reshape(2, out_dim))})


def _raw(port: int, request: bytes, chunks: list[bytes], timeout: float = 30.0):
    """Send bytes on a fresh socket; (status, content type, body) of the answer, or Nones."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(request)
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:  # the server answered and closed before reading it all: read the answer
            pass
        data = b""
        try:
            while b"\r\n\r\n" not in data or len(data) < _expected_length(data):
                block = sock.recv(65536)
                if not block:
                    break
                data += block
        except OSError:
            pass
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return None, "", b""
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.decode("latin-1").partition(":") for line in lines[1:])
    }
    return status, headers.get("content-type", ""), body


def _expected_length(data: bytes) -> int:
    head, sep, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length" and value.strip().isdigit():
            return len(head) + len(sep) + int(value.strip())
    return len(data) + 1 if not sep else len(data)


def _gradient_check(server, local) -> float:
    """One forward+backward through the server after the fuzzing, against the local box."""

    from exotune.bench.reliability.common import connect

    texts = ["my card still has not arrived", "how do I top up"]
    box, http = connect(server)
    try:
        grads = []
        for b in (box, local):
            batch = local.embed(texts)
            embeds = batch.embeds.clone().requires_grad_(True)
            b.forward(embeds, batch.mask).pow(2).sum().backward()
            grads.append(embeds.grad)
        return relative_error(grads[0], grads[1])
    finally:
        box.close()
        http.close()
