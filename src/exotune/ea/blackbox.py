"""The black-box client interface: texts in, outputs out, async and batched.

A subclass implements one coroutine, ``_request(texts, label_names)``, for one batch. The base
class adds what every remote model needs: the response cache, a concurrency limit, a timeout
per request, retries with exponential backoff and jitter on transient errors, and a ledger.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import random
import threading
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import ClassVar

import numpy as np

from exotune.data.text import label_texts
from exotune.errors import BlackBoxError, ConfigError, DataError, TransientBlackBoxError
from exotune.progress import progress_bar

#: set inside the event loops that ``BlackBoxClient.run`` makes for itself: nothing else runs there
_PRIVATE_LOOP: contextvars.ContextVar[bool] = contextvars.ContextVar("exotune_private_loop", default=False)


@dataclass
class BlackBoxOutput:
    """What the box said about one input. ``label`` is None when the answer could not be parsed."""

    label: int | None = None
    scores: np.ndarray | None = None  # (L,) one per label, summing to 1, when the box gives them
    confidence: float | None = None  # the box's own probability of its answer (e.g. from logprobs)
    embedding: np.ndarray | None = None  # (D,) float32
    text: str | None = None  # the raw answer
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0

    def __post_init__(self) -> None:
        # arrays, not lists of Python floats: a probe's 10,000 embeddings of 384 floats take
        # 15 MB as float32 arrays and about 120 MB as lists (32 bytes a float)
        if self.scores is not None:
            self.scores = np.asarray(self.scores, dtype=np.float64)
        if self.embedding is not None:
            self.embedding = np.asarray(self.embedding, dtype=np.float32)

    def to_json(self) -> str:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("scores", "embedding"):
            if data[name] is not None:
                data[name] = np.asarray(data[name]).tolist()
        return json.dumps(data)

    @classmethod
    def from_json(cls, raw: str) -> BlackBoxOutput:
        data = json.loads(raw)
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass
class Ledger:
    """Calls, tokens, cost and time of one run (a probe, a prediction)."""

    calls: int = 0  # inputs the box answered (cache hits excluded)
    requests: int = 0  # HTTP requests or function calls sent, retries included
    retries: int = 0
    cache_hits: int = 0
    unparseable: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts) -> None:
        with self._lock:
            for key, value in counts.items():
                setattr(self, key, getattr(self, key) + value)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


def normalise_url(url: str) -> str:
    """One spelling per endpoint: scheme and host lower-cased, default port and trailing slashes
    dropped (``HTTP://Host:80/v1/`` -> ``http://host/v1``)."""
    parts = urllib.parse.urlsplit(url.strip())
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    port = parts.port if parts.port not in (None, {"http": 80, "https": 443}.get(scheme)) else None
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{port}" if port else ""
    return urllib.parse.urlunsplit((scheme, netloc, parts.path.rstrip("/"), parts.query, ""))


def labels_from_embeddings(emb: np.ndarray, protos: np.ndarray, temperature: float = 0.05):
    """Zero-shot labels for an encoder box: cosine similarity to the label names' embeddings."""
    emb, protos = np.asarray(emb, dtype=np.float64), np.asarray(protos, dtype=np.float64)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    protos = protos / np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12)
    logits = emb @ protos.T / temperature  # (N, C)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return probs.argmax(axis=1), probs


class BlackBoxClient(ABC):
    """A model seen only through its outputs. Subclasses implement ``_request``."""

    #: what the outputs carry: "labels", "scores", "embeddings"
    provides: ClassVar[frozenset[str]] = frozenset({"labels"})

    def __init__(
        self,
        *,
        batch_size: int = 1,
        max_concurrency: int = 4,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        backoff_max: float = 20.0,
        cache=None,
        seed: int | None = None,
        label_template: str = "{}",
    ):
        for name, value, low in (
            ("batch_size", batch_size, 1),
            ("max_concurrency", max_concurrency, 1),
            ("max_retries", max_retries, 0),
        ):
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if not timeout > 0 or backoff < 0:
            raise ConfigError(f"timeout must be > 0 and backoff >= 0, got {timeout!r} and {backoff!r}")
        if not isinstance(label_template, str) or "{}" not in label_template:
            raise ConfigError(f"label_template must contain '{{}}', got {label_template!r}")
        self.label_template = label_template
        self.batch_size, self.max_concurrency, self.timeout = batch_size, max_concurrency, timeout
        self.max_retries, self.backoff, self.backoff_max = max_retries, backoff, backoff_max
        self.cache = cache
        self.ledger = Ledger()  # everything this client has done, all runs together
        self._rng = random.Random(seed)

    # -- what subclasses provide ---------------------------------------------------------------

    @abstractmethod
    async def _request(self, texts: list[str], label_names: list[str]) -> list[BlackBoxOutput]:
        """Ask the box about one batch. Raise TransientBlackBoxError for what is worth retrying."""

    def describe(self) -> dict:
        """JSON-able identity of the answers (endpoint, model, prompt template...): it keys the
        cache, and the cache keeps it beside the answers (``ResponseCache.endpoints``)."""
        return {"client": type(self).__name__}

    def label_texts(self, label_names: list[str]) -> list[str]:
        """What the box is shown for each label, the same rule for every client and for the
        gray-box heads: ``card_arrival`` -> ``card arrival``, then ``label_template``."""
        return label_texts(label_names, self.label_template)

    async def _open(self, label_names: list[str], ledger: Ledger) -> None:  # noqa: B027
        """Hook run once per run inside the event loop (open an SDK client, embed label names)."""

    async def _close(self) -> None:  # noqa: B027
        """Hook run once per run at its end."""

    # -- what the base class does --------------------------------------------------------------

    def fingerprint(self, label_names: list[str], described: dict | None = None) -> str:
        key = json.dumps({**(described or self.describe()), "labels": list(label_names)}, sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:32]

    def run(
        self,
        texts: list[str],
        label_names: list[str],
        ledger: Ledger | None = None,
        *,
        chunk: int | None = None,
        collect=None,
    ) -> list[BlackBoxOutput] | None:
        """Blocking form of :meth:`arun` (works inside a running event loop too, via a thread)."""

        async def private():
            _PRIVATE_LOOP.set(True)
            return await self.arun(texts, label_names, ledger, chunk=chunk, collect=collect)

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(private())
        result: dict = {}

        def target():
            try:
                result["out"] = asyncio.run(private())
            except BaseException as err:  # re-raised in the caller's thread
                result["err"] = err

        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
        if "err" in result:
            raise result["err"]
        return result["out"]

    async def arun(
        self,
        texts: list[str],
        label_names: list[str],
        ledger: Ledger | None = None,
        *,
        chunk: int | None = None,
        collect=None,
    ) -> list[BlackBoxOutput] | None:
        """Outputs for ``texts``, one per text; cached answers are never asked for again.

        With ``collect``, the texts go ``chunk`` at a time and each chunk's outputs are handed to
        ``collect(start, outputs)`` instead of returned: only one chunk's outputs (and those of
        texts met again later) are alive at once. The box is opened once for the whole run."""
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise DataError(f"input {i} must be a non-empty string, got {t!r}")
        ledger = ledger if ledger is not None else Ledger()
        before, t0 = ledger.to_dict(), time.perf_counter()
        described, labels = self.describe(), list(label_names)
        fp = self.fingerprint(labels, described)
        if self.cache is not None:
            self.cache.record(fp, described)
        step = chunk if collect is not None and chunk else max(len(texts), 1)
        seen = Counter(texts) if step < len(texts) else None
        again: dict[str, BlackBoxOutput] = {}  # answers to texts that come back in a later chunk
        result: list[BlackBoxOutput] = []
        opened = False
        bar = progress_bar(total=len(texts), desc=f"asking {type(self).__name__}")
        try:
            for start in range(0, len(texts), step):
                part = texts[start : start + step]
                known = {t: again[t] for t in part if t in again}
                if self.cache is not None:
                    known.update(self.cache.get_many(fp, [t for t in part if t not in known]))
                todo = list(dict.fromkeys(t for t in part if t not in known))  # unique, in order
                ledger.add(cache_hits=len(part) - sum(1 for t in part if t not in known))
                bar.update(len(part) - len(todo))
                if todo:
                    if not opened:
                        await self._open(labels, ledger)
                        opened = True
                    known.update(await self._run_batches(todo, labels, fp, ledger, bar))
                outs = [known[t] for t in part]
                if seen is not None:
                    again.update((t, known[t]) for t in part if seen[t] > 1)
                if collect is None:
                    result = outs
                else:
                    collect(start, outs)
                del known, outs
        finally:
            bar.close()
            if opened:
                await self._close()
        ledger.add(seconds=time.perf_counter() - t0)
        self.ledger.add(**{k: v - before[k] for k, v in ledger.to_dict().items()})
        return None if collect is not None else result

    async def _run_batches(self, todo, label_names, fp, ledger, bar) -> dict[str, BlackBoxOutput]:
        sem = asyncio.Semaphore(self.max_concurrency)
        done: dict[str, BlackBoxOutput] = {}

        async def one(batch):
            async with sem:
                outs = await self._with_retries(batch, label_names, ledger)
            if self.cache is not None:
                self.cache.put_many(fp, batch, outs)  # at once: a crash later loses nothing paid for
            done.update(zip(batch, outs, strict=True))
            bar.update(len(batch))
            ledger.add(
                calls=len(batch),
                unparseable=sum(o.label is None for o in outs),
                prompt_tokens=sum(o.prompt_tokens for o in outs),
                completion_tokens=sum(o.completion_tokens for o in outs),
                cost=sum(o.cost for o in outs),
            )

        # texts of like length batched together: a batch is padded to its longest text
        todo = sorted(todo, key=len)
        tasks = [
            asyncio.ensure_future(one(todo[i : i + self.batch_size])) for i in range(0, len(todo), self.batch_size)
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return done

    async def _blocking(self, fn, *args):
        """``fn(*args)``, a blocking call: in a worker thread, or right here when this loop is
        :meth:`run`'s own and requests go one at a time (nothing else to keep running, and no
        worker thread whose malloc arena keeps megabytes after the run)."""
        if self.max_concurrency == 1 and _PRIVATE_LOOP.get():
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    async def _with_retries(self, batch, label_names, ledger) -> list[BlackBoxOutput]:
        outs = await self._retrying(lambda: self._request(batch, label_names), ledger)
        if len(outs) != len(batch):
            raise BlackBoxError(f"{type(self).__name__} returned {len(outs)} outputs for {len(batch)} inputs")
        return list(outs)

    async def _retrying(self, call, ledger: Ledger):
        """``await call()`` under the timeout; transient failures (rate limits, 5xx, timeouts,
        lost connections, malformed answers) are retried with backoff, then reported clearly.
        Subclasses' ``_open`` hooks use it too, for the calls they make."""
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = min(self.backoff_max, self.backoff * 2 ** (attempt - 1))
                await asyncio.sleep(delay * (0.5 + 0.5 * self._rng.random()))  # equal jitter
                ledger.add(retries=1)
            ledger.add(requests=1)
            try:
                return await asyncio.wait_for(call(), self.timeout)
            except (TransientBlackBoxError, asyncio.TimeoutError, ConnectionError) as err:
                last = err
        kind = "timed out" if isinstance(last, asyncio.TimeoutError) else str(last)
        raise BlackBoxError(
            f"{type(self).__name__}: request failed after {self.max_retries + 1} attempts "
            f"(last error: {kind or type(last).__name__})"
        ) from last
