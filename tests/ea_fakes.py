"""Test doubles for EA: a local OpenAI-compatible HTTP server and small synthetic tasks."""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from exotune.data import TextLabelData

COLOURS = ["red", "blue", "green"]


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
    """Chat completions and embeddings on 127.0.0.1. ``faults`` is consumed one per request:
    "429", "500", "400", "sleep" (longer than the client's timeout), "garbage" or None."""

    def __init__(self, answer=colour_of, logprobs: bool = True, sleep: float = 1.0):
        self.answer, self.logprobs, self.sleep = answer, logprobs, sleep
        self.faults: list[str | None] = []
        self.requests: list[tuple[str, object]] = []  # (path, texts)
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with fake.lock:
                    fault = fake.faults.pop(0) if fake.faults else None
                status, payload = fake.handle(self.path, body, fault)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

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
            return int(fault), {"error": {"message": f"scripted {fault}", "type": "test", "code": None}}
        if "embeddings" in path:
            data = [{"object": "embedding", "index": i, "embedding": embed(t)} for i, t in enumerate(texts)]
            return 200, {"object": "list", "data": data, "model": body["model"],
                         "usage": {"prompt_tokens": 3 * len(texts), "total_tokens": 3 * len(texts)}}
        answer = "I am not sure, maybe purple?" if fault == "garbage" else self.answer(texts)
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}
        if self.logprobs and body.get("logprobs"):
            top = [{"token": answer.split()[0], "logprob": -0.1, "bytes": None},
                   {"token": "blue" if "blue" not in answer else "red", "logprob": -2.5, "bytes": None}]
            choice["logprobs"] = {"content": [{"token": top[0]["token"], "logprob": -0.1, "bytes": None,
                                               "top_logprobs": top}]}
        return 200, {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                     "choices": [choice], "usage": {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22}}

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _chat_text(body) -> str:
    user = body["messages"][-1]["content"]
    return re.findall(r"Text: (.*)\nLabel:", user)[-1]


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """Small matrices, busy machine: BLAS threads only fight each other (SVD 5 s -> 20 ms)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield
