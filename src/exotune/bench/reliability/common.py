"""What the reliability sections share: the task, timed HTTP clients, answer checks."""

from __future__ import annotations

import json
import struct
import threading
import time

import numpy as np
import torch

# Strings that would reveal the hidden backbone or the server's insides if an answer held them.
LEAK_MARKERS = (
    "Bert",
    "bert.",
    "encoder.layer",
    "word_embeddings",
    "position_embeddings",
    "LayerNorm",
    "attention.self",
    "state_dict",
    "Traceback",
    "site-packages",
    "torch.",
    "transformers",
)
# Tensor names a served box may answer with.
ANSWER_TENSORS = ("outputs", "embeds", "mask", "scores")


def task_data(data_dir, rows: int):
    """Banking77's training texts if they are on disk, else the synthetic colour task."""
    from exotune.data import load_dataset
    from exotune.ea.testing import colour_task
    from exotune.errors import DatasetNotFoundError

    try:
        data = load_dataset("banking77", "train", data_dir)
    except (DatasetNotFoundError, OSError):
        return colour_task(rows, seed=0)
    return data.subset(list(range(min(rows, len(data)))))


def http_client(timeout: float = 120.0):
    """An httpx client that records (path, status or None, seconds) of every request."""
    import httpx

    class TimedClient(httpx.Client):
        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs)
            self.records: list[tuple[str, int | None, float]] = []
            self._lock = threading.Lock()

        def request(self, method, url, **kwargs):
            t0 = time.perf_counter()
            status = None
            try:
                r = super().request(method, url, **kwargs)
                status = r.status_code
                return r
            finally:
                with self._lock:
                    self.records.append((httpx.URL(str(url)).path, status, time.perf_counter() - t0))

    return TimedClient(timeout=timeout)


def connect(server, token: str | None = None):
    """(RemoteBox, its timed httpx client): each box on its own connection. Close the client."""
    from exotune.boxes.remote import RemoteBox

    client = http_client()
    return RemoteBox(server.url, token or server.token, client=client), client


def answer_problems(status: int, content_type: str, body: bytes, sent: bytes = b"") -> list[str]:
    """What is wrong with one answer: a 5xx, a refusal without a JSON message (native or OpenAI's shape), a tensor name
    the box must not send, or a string that reveals the backbone (unless the request held it)."""
    problems = []
    if status >= 500:
        problems.append(f"HTTP {status}: {body[:200]!r}")
    if 400 <= status < 500:
        try:
            data = json.loads(body)
            native = (
                isinstance(data, dict) and isinstance(data.get("error"), str) and isinstance(data.get("message"), str)
            )
            # the OpenAI-compatible routes answer in OpenAI's shape: {"error": {"message", "type", ...}}
            openai = (
                isinstance(data, dict)
                and isinstance(data.get("error"), dict)
                and isinstance(data["error"].get("message"), str)
            )
            if not (native or openai):
                raise ValueError
        except ValueError:
            problems.append(f"HTTP {status} without a JSON error and message: {body[:200]!r}")
    text = body.decode("latin-1")
    if content_type.startswith("application/vnd.exotune.safetensors") and len(body) >= 8:
        (n,) = struct.unpack("<Q", body[:8])
        names = set(json.loads(body[8 : 8 + n])) - {"__metadata__"}
        if not all(x in ANSWER_TENSORS or x.startswith("entry.") for x in names):
            problems.append(f"answer holds tensors {sorted(names)}")
        text = body[8 : 8 + n].decode()  # the data bytes are floats: only the header is text
    mine = sent.decode("latin-1")
    leaked = [m for m in LEAK_MARKERS if m in text and m not in mine]
    if leaked:
        problems.append(f"answer reveals {leaked}: {text[:200]!r}")
    return problems


def latency_summary(records, wall_s: float) -> dict:
    seconds = np.asarray([r[2] for r in records if r[1] is not None and r[1] < 400]) * 1000
    return {
        "requests": len(records),
        "failed": sum(1 for r in records if r[1] is None or r[1] >= 400),
        "server_errors": sum(1 for r in records if r[1] is not None and r[1] >= 500),
        "p50_ms": round(float(np.percentile(seconds, 50)), 1) if len(seconds) else None,
        "p99_ms": round(float(np.percentile(seconds, 99)), 1) if len(seconds) else None,
        "requests_per_s": round(len(records) / wall_s, 2) if wall_s else None,
    }


def run_threads(target, args_list: list[tuple]) -> float:
    """``target(*args)`` in one thread per args, started together; the wall seconds until all end."""
    threads = [threading.Thread(target=target, args=args) for args in args_list]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over max |b| (gradients differ in scale by orders of magnitude)."""
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))
