"""Concrete black-box clients (the interface they implement: :mod:`exotune.ea.blackbox`):
OpenAI-compatible chat and embeddings, exotune's own served box, and a plain callable."""

from __future__ import annotations

import asyncio
import inspect
import math
import os

import numpy as np

from exotune.ea.blackbox import (
    BlackBoxClient,
    BlackBoxOutput,
    Ledger,
    labels_from_embeddings,
    normalise_url,
)
from exotune.ea.prompt import PromptTemplate, parse_label, scores_from_logprobs
from exotune.errors import (
    BlackBoxError,
    ConfigError,
    MissingDependencyError,
    TransientBlackBoxError,
)


def _openai():
    try:
        import openai
    except ImportError as err:
        raise MissingDependencyError("the OpenAI clients need the 'openai' package: pip install 'exotune[ea]'") from err
    return openai


def http_hint(status: int | None, url: str, key_env: str, root_expected: bool = False) -> str:
    """What to try after a refusal: which setting holds the key (401), the other base URL (404)."""
    if status == 401:
        return f"; the key was refused: it is read from ${key_env} (another variable: --api-key-env)"
    if status != 404:
        return ""
    if root_expected and url.endswith("/v1"):
        return f"; a served box is reached at the root of 'exotune serve', without /v1: try {url[:-3]}"
    if url.endswith("/v1"):
        return f"; check the model name, or, if this server's routes are not under /v1, try {url[:-3]}"
    return f"; OpenAI-compatible servers answer under /v1: try {url}/v1"


def _translate(openai, err: Exception, url: str, key_env: str) -> Exception:
    """SDK errors -> ours, naming the URL: rate limits, 5xx, timeouts and lost connections are
    worth retrying."""
    if isinstance(err, openai.APIConnectionError):  # includes APITimeoutError
        return TransientBlackBoxError(f"{url}: {type(err).__name__}: {err}")
    if isinstance(err, openai.APIStatusError):
        status = err.status_code
        text = f"HTTP {status} from {url}: {err.message}"
        if status in (408, 409, 429) or status >= 500:
            return TransientBlackBoxError(text)
        return BlackBoxError(text + http_hint(status, url, key_env))
    return err


OPENAI_URL = "https://api.openai.com/v1"  # the SDK's endpoint when no base URL is set


class _OpenAIBase(BlackBoxClient):
    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        price_in: float = 0.0,
        price_out: float = 0.0,
        client=None,
        **common,
    ):
        super().__init__(**common)
        if not model:
            raise ConfigError("model must name the served model, got an empty value")
        self.model, self.base_url, self.api_key, self.api_key_env = model, base_url, api_key, api_key_env
        self.price_in, self.price_out = price_in, price_out  # per million tokens
        self.client = client  # an openai.AsyncOpenAI; built per run when not given
        self._sdk = None

    def endpoint(self) -> str:
        """Where the model is served, normalised: the cache keeps answers per endpoint."""
        return normalise_url(self.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL)

    def _cost(self, prompt: int, completion: int) -> float:
        return (prompt * self.price_in + completion * self.price_out) / 1e6

    async def _open(self, label_names, ledger) -> None:
        openai = _openai()
        if self.client is not None:
            self._sdk = self.client
            return
        key = self.api_key or os.environ.get(self.api_key_env) or "none"  # local servers need no key
        # the SDK's own retries are off: ours count, back off and report in one place
        self._sdk = openai.AsyncOpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=self.timeout)

    async def _close(self) -> None:
        if self._sdk is not None and self._sdk is not self.client:
            await self._sdk.close()
        self._sdk = None

    async def _call(self, fn, parse, **kwargs):
        """``parse(await fn(**kwargs))``: SDK errors translated, and an answer that is not the
        API's shape (an HTML error page, JSON cut short, missing fields) a transient error."""
        openai = _openai()
        try:
            return parse(await fn(**kwargs))
        except openai.OpenAIError as err:
            raise _translate(openai, err, self.endpoint(), self.api_key_env) from err
        except (AttributeError, TypeError, ValueError, KeyError, IndexError) as err:  # the SDK's parsing too
            raise TransientBlackBoxError(f"malformed answer from {self.model!r}: {type(err).__name__}: {err}") from err


class OpenAIChatClient(_OpenAIBase):
    """Chat completions: the prompt lists the labels; the answer is parsed to a label; label scores
    come from the first token's ``logprobs`` when the server gives them."""

    provides = frozenset({"labels", "scores"})

    def __init__(
        self,
        model: str,
        *,
        prompt: PromptTemplate | None = None,
        logprobs: bool = True,
        top_logprobs: int = 10,
        temperature: float = 0.0,
        max_tokens: int = 24,
        **kwargs,
    ):
        kwargs.setdefault("batch_size", 1)
        super().__init__(model, **kwargs)
        self.prompt = prompt or PromptTemplate()
        self.logprobs, self.top_logprobs = logprobs, top_logprobs
        self.temperature, self.max_tokens = temperature, max_tokens

    def describe(self) -> dict:
        p = self.prompt
        return {
            "client": "openai-chat",
            "endpoint": self.endpoint(),
            "model": self.model,
            "template": p.template,
            "system": p.system,
            "examples": p.examples,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "label_template": self.label_template,
        }

    async def _request(self, texts, label_names):
        return list(await asyncio.gather(*(self._one(t, label_names) for t in texts)))

    async def _one(self, text: str, label_names: list[str]) -> BlackBoxOutput:
        label_names = self.label_texts(label_names)  # shown and parsed as words, in their order
        kwargs = {
            "model": self.model,
            "messages": self.prompt.render(text, label_names),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if self.logprobs:
            kwargs.update(logprobs=True, top_logprobs=self.top_logprobs)
        return await self._call(self._sdk.chat.completions.create, lambda r: self._parse(r, label_names), **kwargs)

    def _parse(self, resp, label_names: list[str]) -> BlackBoxOutput:
        if not resp.choices:  # an answer without a choice is not an answer: worth asking again
            raise ValueError("no choices in the answer")
        usage = getattr(resp, "usage", None)
        pt, ct = (usage.prompt_tokens or 0, usage.completion_tokens or 0) if usage else (0, 0)
        choice = resp.choices[0]
        answer = (choice.message.content or "") if choice.message else ""
        out = BlackBoxOutput(
            label=parse_label(answer, label_names),
            text=answer,
            prompt_tokens=pt,
            completion_tokens=ct,
            cost=self._cost(pt, ct),
        )
        content = getattr(getattr(choice, "logprobs", None), "content", None)
        if content:
            out.confidence = math.exp(sum(t.logprob for t in content))
            first = content[0]
            top = [(a.token, a.logprob) for a in (first.top_logprobs or [])] or [(first.token, first.logprob)]
            out.scores = scores_from_logprobs(top, label_names)
        return out


class OpenAIEmbeddingClient(_OpenAIBase):
    """Embeddings; labels and scores by cosine similarity to the embedded label names."""

    provides = frozenset({"labels", "scores", "embeddings"})

    def __init__(self, model: str, *, temperature: float = 0.05, **kwargs):
        kwargs.setdefault("batch_size", 64)
        super().__init__(model, **kwargs)
        self.temperature = temperature
        self._protos: np.ndarray | None = None

    def describe(self) -> dict:
        return {
            "client": "openai-embeddings",
            "endpoint": self.endpoint(),
            "model": self.model,
            "label_template": self.label_template,
            "temperature": self.temperature,
        }

    async def _embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        def parse(resp):
            data = sorted(resp.data, key=lambda d: d.index)
            usage = getattr(resp, "usage", None)
            emb = np.asarray([d.embedding for d in data], dtype=np.float64)
            if emb.ndim != 2 or emb.shape[0] != len(texts) or not np.isfinite(emb).all():
                raise ValueError(f"{emb.shape[0] if emb.ndim else 0} finite vectors for {len(texts)} texts")
            return emb, (usage.prompt_tokens if usage else 0)

        return await self._call(self._sdk.embeddings.create, parse, model=self.model, input=texts)

    async def _open(self, label_names, ledger: Ledger) -> None:
        await super()._open(label_names, ledger)
        names = self.label_texts(label_names)
        self._protos, tokens = await self._retrying(lambda: self._embed(names), ledger)
        ledger.add(prompt_tokens=tokens, cost=self._cost(tokens, 0))

    async def _request(self, texts, label_names):
        emb, tokens = await self._embed(texts)
        labels, probs = labels_from_embeddings(emb, self._protos, self.temperature)
        share = tokens / max(len(texts), 1)
        return [
            BlackBoxOutput(
                label=int(y),
                scores=p,
                confidence=float(p.max()),
                embedding=e,
                prompt_tokens=round(share),
                cost=self._cost(share, 0),
            )
            for y, p, e in zip(labels, probs, emb, strict=True)
        ]


class CallableClient(BlackBoxClient):
    """A plain Python function as the black box: ``fn(text, label_names)`` (or, with ``batched``,
    ``fn(texts, label_names)`` returning a list). It returns, per ``returns``: a label name or
    index ("labels"), a score vector ("scores") or an embedding ("embeddings"); a BlackBoxOutput
    or a dict of its fields is taken as it is. Sync functions run in a worker thread."""

    def __init__(
        self,
        fn,
        *,
        returns: str = "labels",
        batched: bool = False,
        name: str | None = None,
        cost_per_call: float = 0.0,
        temperature: float = 0.05,
        **common,
    ):
        if returns not in ("labels", "scores", "embeddings"):
            raise ConfigError(f"returns must be 'labels', 'scores' or 'embeddings', got {returns!r}")
        if not callable(fn):
            raise ConfigError(f"fn must be callable, got {type(fn).__name__}")
        common.setdefault("batch_size", 32 if batched else 1)
        super().__init__(**common)
        self.fn, self.returns, self.batched, self.cost_per_call = fn, returns, batched, cost_per_call
        self.name = name or getattr(fn, "__qualname__", type(fn).__name__)
        self.temperature = temperature
        self._protos = None
        self.provides = frozenset(
            {"labels", "scores", "embeddings"}
            if returns == "embeddings"
            else {"labels", "scores"}
            if returns == "scores"
            else {"labels"}
        )

    def describe(self) -> dict:
        return {"client": "callable", "name": self.name, "returns": self.returns, "label_template": self.label_template}

    async def _invoke(self, arg, label_names):
        if inspect.iscoroutinefunction(self.fn):
            return await self.fn(arg, label_names)
        return await asyncio.to_thread(self.fn, arg, label_names)

    async def _open(self, label_names, ledger) -> None:
        if self.returns == "embeddings":
            self._protos = np.asarray(
                [await self._invoke(n, label_names) for n in self.label_texts(label_names)], dtype=np.float64
            )

    async def _request(self, texts, label_names):
        if self.batched:
            raw = list(await self._invoke(list(texts), label_names))
        else:
            raw = list(await asyncio.gather(*(self._invoke(t, label_names) for t in texts)))
        return [self._output(r, label_names) for r in raw]

    def _output(self, r, label_names) -> BlackBoxOutput:
        if isinstance(r, BlackBoxOutput):
            out = r
        elif isinstance(r, dict):
            out = BlackBoxOutput(**r)
        elif self.returns == "labels":
            if isinstance(r, (int, np.integer)) and not isinstance(r, bool):
                out = BlackBoxOutput(label=int(r) if 0 <= int(r) < len(label_names) else None, text=str(r))
            else:
                out = BlackBoxOutput(text=None if r is None else str(r))
        elif self.returns == "scores":
            s = np.clip(np.asarray(r, dtype=np.float64), 0, None)
            if s.shape != (len(label_names),) or s.sum() <= 0:
                raise BlackBoxError(f"fn must return {len(label_names)} non-negative scores, got shape {s.shape}")
            out = BlackBoxOutput(scores=s / s.sum())
        else:
            emb = np.asarray(r, dtype=np.float64)[None, :]
            labels, probs = labels_from_embeddings(emb, self._protos, self.temperature)
            out = BlackBoxOutput(label=int(labels[0]), scores=probs[0], embedding=emb[0])
        if isinstance(out.label, str):
            out.label = parse_label(out.label, label_names)
        if out.label is None and out.scores is not None:
            out.label = int(np.argmax(out.scores))
        if out.label is None and out.text is not None:
            out.label = parse_label(out.text, label_names)
        if out.confidence is None and out.scores is not None and out.label is not None:
            out.confidence = float(out.scores[out.label])
        out.cost = out.cost or self.cost_per_call
        return out


class ServedBoxClient(BlackBoxClient):
    """exotune's own served box as the black box (``exotune serve --level black``).

    ``returns="labels"``: the box answers with a label only (zero-shot: the label name whose
    encoding is most similar, from ``POST /v1/scores``); ``"scores"`` adds the softmax of those
    similarities; ``"embeddings"`` returns the box's outputs (``POST /v1/encode``) with the
    zero-shot label and scores. With a ``url`` the answers are read over HTTP as numpy arrays,
    without torch (``http_client``: an ``httpx.Client`` to use instead of a new one); ``box``
    takes any connected box instead. The HTTP layer's own retries handle 429/503 and lost
    connections; what still fails is reported as transient (retried here) or final.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        box=None,
        http_client=None,
        returns: str = "labels",
        temperature: float = 0.05,
        key_env: str = "EXOTUNE_TOKEN",
        **common,
    ):
        if returns not in ("labels", "scores", "embeddings"):
            raise ConfigError(f"returns must be 'labels', 'scores' or 'embeddings', got {returns!r}")
        common.setdefault("batch_size", 256)  # fewer round trips; the server sorts and batches within
        # one request at a time: the box computes one batch at a time anyway, and the requests then
        # need no worker threads, whose malloc arenas kept ~9 MB after a probe (Banking77 probe:
        # 37 s with 1, 2 or 4 in flight)
        common.setdefault("max_concurrency", 1)
        super().__init__(**common)
        self.url, self.returns, self.temperature = url, returns, temperature
        self.key_env = key_env  # where the token came from, for the message of a 401
        if (url is None) == (box is None):
            raise ConfigError("ServedBoxClient needs either url (and token) or a connected box, not both")
        self._token, self._http_client = token, http_client
        self._box = box  # with a url: an HTTP channel, connected on first use, never in __init__
        self._protos, self._proto_texts = None, None  # the label names' encodings, kept from run to run
        self.provides = frozenset(
            {"labels", "scores", "embeddings"}
            if returns == "embeddings"
            else {"labels", "scores"}
            if returns == "scores"
            else {"labels"}
        )

    def _connect(self):
        if self._box is None:
            from exotune.boxes.http import Channel

            self._box = Channel(self.url, token=self._token, client=self._http_client)
        return self._box

    def describe(self) -> dict:
        from exotune.errors import RemoteError

        try:
            spec = self._connect().spec  # the model's identity keys the cache, never the URL alone
        except RemoteError as err:
            raise self._refusal(err) from err
        info = {
            "client": "served-box",
            "endpoint": normalise_url(self.url) if self.url else None,
            "model_digest": spec.model_digest,
            "pooling": spec.pooling,
            "returns": self.returns,
            "temperature": self.temperature,
            "label_template": self.label_template,
        }
        precision = getattr(self._box, "precision", "fp32")  # a box here under autocast: its answers apart
        return info if precision == "fp32" else {**info, "precision": precision}

    def _encode(self, texts: list[str]) -> np.ndarray:
        """(N, O) float32 outputs of the box."""
        box = self._connect()
        if not hasattr(box, "message"):
            return box.encode(texts).numpy()
        return self._post(box, "/v1/encode", "outputs", texts, box.spec.output_dim)

    def _scores(self, texts: list[str], labels: list[str]) -> np.ndarray:
        """(N, L) cosine similarities of texts and label texts, computed by the box."""
        box = self._connect()
        if not hasattr(box, "message"):
            if not hasattr(box, "scores"):  # a box loaded here: as a served box's /v1/scores computes them
                a, b = (
                    z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
                    for z in (self._encode(texts), self._encode(labels))
                )
                return a @ b.T
            return box.scores(texts, labels).numpy()
        return self._post(box, "/v1/scores", "scores", texts, len(labels), labels=labels)

    @staticmethod
    def _post(channel, path: str, name: str, texts: list[str], width: int, **body) -> np.ndarray:
        from exotune.boxes.http import get

        parts = [
            get(channel.message("POST", path, arrays=True, json={"texts": part, **body}), name, (len(part), width))
            for part in channel.spec.limits.batches(texts)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, width), dtype=np.float32)

    async def _call(self, fn, *args):
        from exotune.errors import RemoteError

        try:
            return await self._blocking(fn, *args)
        except RemoteError as err:
            raise self._refusal(err) from err

    def _refusal(self, err) -> BlackBoxError:
        """A RemoteError as ours, naming the URL: transient (retried) or final, with a hint."""
        text = f"{self.url or 'the served box'}{'' if str(err).startswith('/') else ': '}{err}"
        if err.status is None or err.status == 429 or err.status >= 500:
            return TransientBlackBoxError(text)
        url = normalise_url(self.url) if self.url else ""
        return BlackBoxError(text + http_hint(err.status, url, self.key_env, root_expected=True))

    async def _open(self, label_names, ledger) -> None:
        if self.returns == "embeddings":
            texts = self.label_texts(label_names)
            if self._protos is not None and self._proto_texts == texts:  # run after run, one input each
                return
            self._protos = await self._retrying(lambda: self._call(self._encode, texts), ledger)
            self._proto_texts = texts

    async def _request(self, texts, label_names):
        if self.returns == "embeddings":
            emb = await self._call(self._encode, list(texts))
            labels, probs = labels_from_embeddings(emb, self._protos, self.temperature)
            return [
                BlackBoxOutput(label=int(y), scores=p, embedding=e) for y, p, e in zip(labels, probs, emb, strict=True)
            ]
        sims = (await self._call(self._scores, list(texts), self.label_texts(label_names))).astype(np.float64)
        logits = sims / self.temperature
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        if self.returns == "labels":
            return [BlackBoxOutput(label=int(p.argmax())) for p in probs]
        return [BlackBoxOutput(label=int(p.argmax()), scores=p) for p in probs]
