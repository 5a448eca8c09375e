"""A scripted OpenAI-compatible endpoint on loopback and a small synthetic task, for testing
black-box clients and for the fault drills of ``exotune bench reliability``.

``FakeOpenAI`` answers chat completions (the colour word of the text) and embeddings (the
label's axis plus hash noise). Its ``faults`` list is consumed one per request, so a test
scripts exactly which request fails and how; ``fault_drill`` runs one kind of fault against
a client, once and for good, and says whether the client behaved.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from exotune.data import TextLabelData

COLOURS = ["red", "blue", "green"]

#: what a scripted fault does to one request; ``None`` answers normally
FAULTS = {
    "429": "HTTP 429 (rate limited)",
    "500": "HTTP 500 (server error)",
    "400": "HTTP 400 (a request the server refuses for good)",
    "sleep": "no answer before the client's timeout",
    "reset": "the connection is closed without an answer",
    "html": "HTTP 200 with an HTML page instead of JSON",
    "truncated": "HTTP 200 with JSON cut short",
    "empty": "HTTP 200 with an empty JSON object",
    "garbage": "HTTP 200 with a well-formed answer that names no label",
}

#: (fault, client) pairs ``fault_drill`` runs; an embedding cannot fail to name a label
FAULT_DRILLS = [
    (kind, client)
    for kind in FAULTS
    for client in ("chat", "embeddings")
    if not (kind == "garbage" and client == "embeddings")
]


def colour_task(n: int = 90, seed: int = 0, name: str = "colours") -> TextLabelData:
    """Unique texts; the colour word is the label."""
    rng = random.Random(seed)
    nouns, adjs = ["car", "sky", "leaf", "door", "cup"], ["fast", "slow", "big", "small", "very old"]
    texts, labels = [], []
    for i in range(n):
        y = rng.randrange(3)
        texts.append(f"the {rng.choice(adjs)} {rng.choice(nouns)} is {COLOURS[y]} item{seed}x{i}")
        labels.append(y)
    return TextLabelData(texts, labels, list(COLOURS), name)


def colour_of(text: str) -> str:
    return next(c for c in COLOURS if f" {c} " in f" {text} ")


def embed(text: str, dim: int = 8) -> list[float]:
    """Deterministic: the label's axis plus hash noise."""
    h = np.random.default_rng(int(hashlib.sha256(text.encode()).hexdigest()[:8], 16))
    v = h.normal(0, 0.3, dim)
    for i, c in enumerate(COLOURS):
        if c in text.split():
            v[i] += 1.0
    return v.tolist()


class FakeOpenAI:
    """Chat completions and embeddings on 127.0.0.1. ``faults`` is consumed one per request
    (see ``FAULTS``). ``requests`` logs (path, texts) of every request received, ``answered``
    the texts of every well-formed 200 answer sent; ``on_request(n)``, if set, is called with
    the running count before the n-th request is answered (a drill kills its client there);
    when it returns False the connection is closed without an answer."""

    def __init__(self, answer=colour_of, logprobs: bool = True, sleep: float = 1.0):
        self.answer, self.logprobs, self.sleep = answer, logprobs, sleep
        self.faults: list[str | None] = []
        self.requests: list[tuple[str, object]] = []  # (path, texts)
        self.answered: list[object] = []
        self.on_request = None
        self.authorizations: list[str | None] = []  # the Authorization header of every request
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with fake.lock:
                    fake.authorizations.append(self.headers.get("Authorization"))
                    fault = fake.faults.pop(0) if fake.faults else None
                    count = len(fake.requests) + 1
                if fake.on_request is not None and fake.on_request(count) is False:
                    fault = "reset"  # the hook says: no answer to this one
                status, payload, texts = fake.handle(self.path, body, fault)
                if fault == "reset":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                data, kind = _body(payload, fault)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return
                if status == 200 and fault not in ("html", "truncated", "empty"):
                    with fake.lock:
                        fake.answered.append(texts)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def calls(self, path: str = "") -> list:
        return [t for p, t in self.requests if path in p]

    def handle(self, path, body, fault):
        texts = body.get("input") if "embeddings" in path else _chat_text(body)
        with self.lock:
            self.requests.append((path, texts))
        if fault == "sleep":
            time.sleep(self.sleep)
        if fault in ("429", "500", "400"):
            return int(fault), {"error": {"message": f"scripted {fault}", "type": "test", "code": None}}, texts
        if "embeddings" in path:
            data = [{"object": "embedding", "index": i, "embedding": embed(t)} for i, t in enumerate(texts)]
            return (
                200,
                {
                    "object": "list",
                    "data": data,
                    "model": body["model"],
                    "usage": {"prompt_tokens": 3 * len(texts), "total_tokens": 3 * len(texts)},
                },
                texts,
            )
        answer = "I am not sure, maybe purple?" if fault == "garbage" else self.answer(texts)
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}
        if self.logprobs and body.get("logprobs"):
            top = [
                {"token": answer.split()[0], "logprob": -0.1, "bytes": None},
                {"token": "blue" if "blue" not in answer else "red", "logprob": -2.5, "bytes": None},
            ]
            choice["logprobs"] = {
                "content": [{"token": top[0]["token"], "logprob": -0.1, "bytes": None, "top_logprobs": top}]
            }
        return (
            200,
            {
                "id": "c",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [choice],
                "usage": {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22},
            },
            texts,
        )

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def fault_drill(kind: str, client: str = "chat", max_retries: int = 2) -> dict:
    """One fault kind against one client: once (must be retried to the right answer) and for
    good (a clear error after max_retries + 1 attempts; at once for a refusal: 400)."""
    from exotune.ea.blackbox import Ledger
    from exotune.ea.clients import OpenAIChatClient, OpenAIEmbeddingClient
    from exotune.errors import BlackBoxError

    cls = OpenAIChatClient if client == "chat" else OpenAIEmbeddingClient
    text = "the big car is blue item0x0"
    fast = {"max_retries": max_retries, "backoff": 0.01, "backoff_max": 0.05, "timeout": 0.5}
    out = {"drill": f"black box ({client}): {FAULTS[kind]}", "client": client, "kind": kind}
    with FakeOpenAI(sleep=1.0) as lm:
        lm.faults = [kind]
        ledger = Ledger()
        try:
            answer = cls("fake", base_url=lm.base_url, api_key="k", **fast).run([text], COLOURS, ledger)[0]
            out["once"] = f"label {answer.label}, {ledger.retries} retries, {ledger.unparseable} unparseable"
        except BlackBoxError as err:
            answer, out["once"] = None, f"error: {err}"
        lm.faults = [kind] * (max_retries + 5)
        before = len(lm.requests)
        try:
            cls("fake", base_url=lm.base_url, api_key="k", **fast).run(["the small cup is red item0x1"], COLOURS)
            out["persistent"], clear = "no error", kind == "garbage"
        except BlackBoxError as err:
            out["persistent"], clear = f"BlackBoxError: {err}"[:300], True
        except Exception as err:  # anything else is not a clear error
            out["persistent"], clear = f"{type(err).__name__}: {err}"[:300], False
        attempts = len(lm.requests) - before
    if kind == "400":  # a refusal: not retried, reported at once
        out["ok"] = answer is None and clear and attempts == 1
    elif kind == "garbage":  # a well-formed answer naming no label: recorded as such, never retried
        out["ok"] = answer is not None and (answer.label is None) == (client == "chat") and ledger.retries == 0
    else:
        out["ok"] = (
            answer is not None and answer.label == 1 and ledger.retries == 1 and clear and attempts == max_retries + 1
        )
    out["attempts_when_persistent"] = attempts
    return out


def _body(payload: dict, fault: str | None) -> tuple[bytes, str]:
    data = json.dumps(payload).encode()
    if fault == "html":
        return b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"
    if fault == "truncated":
        return data[: len(data) // 2], "application/json"
    if fault == "empty":
        return b"{}", "application/json"
    return data, "application/json"


def _chat_text(body) -> str:
    user = body["messages"][-1]["content"]
    return re.findall(r"Text: (.*)\nLabel:", user)[-1]
