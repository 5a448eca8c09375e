"""A box served over HTTP (``exotune serve``), used exactly like a local one.

``forward`` is differentiable: when a gradient is needed it asks the server to keep the graph
(``/v1/forward?train=true`` returns a handle) and its backward sends the gradient of the
outputs with that handle. If the server has dropped the handle (expired, evicted, restarted)
the forward is replayed once. Needs the 'serve' extra (httpx), imported only when used.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from exotune.boxes import wire
from exotune.boxes.base import Box, TokenBatch
from exotune.boxes.spec import BoxSpec
from exotune.errors import (
    AccessError,
    AuthenticationError,
    BoxLimitError,
    ConfigError,
    HandleExpiredError,
    MissingDependencyError,
    RateLimitError,
    RemoteError,
    RequestRejectedError,
)

GRAY = ("dark-gray", "light-gray")
TOKEN_ENV = "EXOTUNE_TOKEN"


def _httpx():
    try:
        import httpx
    except ImportError as err:
        raise MissingDependencyError("a remote box needs httpx: pip install 'exotune[serve]'") from err
    return httpx


@dataclass
class RemoteConfig:
    """Client-side knobs (never saved with an adapter)."""

    timeout_s: float = 60.0
    retries: int = 3  # on connection errors, 503 and rate-limit answers
    backoff_s: float = 0.25  # doubled after each retry ...
    max_wait_s: float = 10.0  # ... and never more than this per wait
    max_response_bytes: int = 256 * 2**20

    def __post_init__(self) -> None:
        if not self.timeout_s > 0 or self.backoff_s < 0 or self.max_wait_s < 0:
            raise ConfigError(f"RemoteConfig needs timeout_s > 0 and backoff_s, max_wait_s >= 0, got {self}")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigError(f"RemoteConfig.retries must be an integer >= 0, got {self.retries!r}")


class _RemoteForward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, box, mask, names, embeds, *entries):
        out, handle = box._forward_call(embeds, mask, names, entries, train=True)
        ctx.box, ctx.names, ctx.handle = box, names, handle
        ctx.save_for_backward(embeds, mask, *entries)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        embeds, mask, *entries = ctx.saved_tensors
        grads = ctx.box._backward_call(ctx.handle, grad_out, embeds, mask, ctx.names, entries)
        return (None, None, None, grads["embeds"], *(grads[wire_name(n)] for n in ctx.names))


def wire_name(entry_point: str) -> str:
    return f"entry.{entry_point}"


class RemoteBox(Box):
    """Client of a served box. ``stats`` counts requests, retries and forward replays."""

    def __init__(self, url: str, token: str | None = None, *, config: RemoteConfig | None = None,
                 client=None) -> None:
        httpx = _httpx()
        self.url = url.rstrip("/")
        self.config = config or RemoteConfig()
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._owns_client = client is None  # a client passed in keeps its own timeouts
        self._client = client if client is not None else httpx.Client(timeout=self.config.timeout_s)
        self.stats = {"requests": 0, "retries": 0, "replays": 0}
        info = self._request("GET", "/v1/spec").json()
        try:
            self.spec = BoxSpec.from_dict(info["spec"])
            self.server = dict(info.get("server") or {})
        except (KeyError, TypeError, ValueError) as err:
            raise RemoteError(f"{self.url}/v1/spec did not describe a box ({err})") from err

    # -- the box interface ------------------------------------------------------------------

    def embed(self, texts: list[str], max_length: int | None = None) -> TokenBatch:
        self.require(*GRAY)
        texts = _check_texts(texts)
        msg = self._tensors("POST", "/v1/embed", json={"texts": texts, "max_length": max_length})
        return TokenBatch(embeds=self._get(msg, "embeds"), mask=self._get(msg, "mask"))

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor,
                entry_tokens: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        self.require(*GRAY)
        self.check_input(embeds, mask)
        if entry_tokens:
            self.require("light-gray")
        names = tuple(sorted(entry_tokens or {}))
        entries = [entry_tokens[n] for n in names] if names else []
        need_grad = torch.is_grad_enabled() and (embeds.requires_grad or any(e.requires_grad for e in entries))
        if not need_grad:
            return self._forward_call(embeds, mask, names, entries, train=False)[0]
        return _RemoteForward.apply(self, mask, names, embeds, *entries)

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        msg = self._tensors("POST", "/v1/encode", json={"texts": _check_texts(texts)})
        return self._get(msg, "outputs")

    @torch.no_grad()
    def scores(self, texts: list[str], labels: list[str]) -> torch.Tensor:
        """Cosine similarity (N, L) of each text's output with each label text's: zero-shot."""
        texts, labels = _check_texts(texts), _check_texts(labels)
        step = self.spec.limits.max_batch
        outs = [self._get(self._tensors("POST", "/v1/scores", json={"texts": texts[i : i + step], "labels": labels}),
                          "scores") for i in range(0, len(texts), step)]
        return torch.cat(outs) if outs else torch.zeros(0, len(labels))

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> RemoteBox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:  # never show the token
        return f"RemoteBox({self.url!r}, access={self.spec.access!r}, dim={self.spec.output_dim})"

    # -- the two gradient calls -------------------------------------------------------------

    def _forward_call(self, embeds, mask, names, entries, train: bool):
        tensors = {"embeds": embeds.detach().float(), "mask": mask.detach().long()}
        tensors.update({wire_name(n): e.detach().float() for n, e in zip(names, entries, strict=True)})
        msg = self._tensors("POST", "/v1/forward", content=wire.encode(tensors),
                            params={"train": "true"} if train else None)
        out = self._get(msg, "outputs", shape=(embeds.shape[0], self.spec.output_dim))
        return out.to(device=embeds.device, dtype=embeds.dtype), msg.meta.get("handle")

    def _backward_call(self, handle, grad_out, embeds, mask, names, entries) -> dict[str, torch.Tensor]:
        tensors = {"grad_outputs": grad_out.detach().float()}
        if handle is None:  # a stateless server: send the inputs again, it recomputes
            tensors.update({"embeds": embeds.detach().float(), "mask": mask.detach().long()})
            tensors.update({wire_name(n): e.detach().float() for n, e in zip(names, entries, strict=True)})
            msg = self._tensors("POST", "/v1/backward", content=wire.encode(tensors))
        else:
            try:
                msg = self._post_backward(tensors, handle)
            except HandleExpiredError:  # expired, evicted or the server restarted: replay once
                self.stats["replays"] += 1
                _, handle = self._forward_call(embeds, mask, names, entries, train=True)
                if handle is None:
                    return self._backward_call(None, grad_out, embeds, mask, names, entries)
                msg = self._post_backward(tensors, handle)
        return self._grads(msg, embeds, names, entries)

    def _post_backward(self, tensors: dict[str, torch.Tensor], handle: str) -> wire.Message:
        return self._tensors("POST", "/v1/backward", content=wire.encode(tensors, {"handle": handle}))

    def _grads(self, msg, embeds, names, entries) -> dict[str, torch.Tensor]:
        grads = {"embeds": self._get(msg, "embeds", shape=tuple(embeds.shape)).to(embeds.device, embeds.dtype)}
        for n, e in zip(names, entries, strict=True):
            grads[wire_name(n)] = self._get(msg, wire_name(n), shape=tuple(e.shape)).to(e.device, e.dtype)
        return grads

    # -- HTTP -------------------------------------------------------------------------------

    def _tensors(self, method: str, path: str, **kwargs) -> wire.Message:
        r = self._request(method, path, **kwargs)
        try:
            return wire.decode(r.content, self.config.max_response_bytes)
        except ValueError as err:
            raise RemoteError(f"{path}: the server's answer is not a valid tensor message ({err})") from err

    def _get(self, msg: wire.Message, name: str, shape: tuple | None = None) -> torch.Tensor:
        t = msg.tensors.get(name)
        if t is None or (shape is not None and tuple(t.shape) != tuple(shape)):
            got = None if t is None else tuple(t.shape)
            raise RemoteError(f"the server's answer lacks tensor {name!r} of shape {shape} (got {got})")
        return t

    def _request(self, method: str, path: str, *, json=None, content: bytes | None = None, params=None):
        httpx, cfg = _httpx(), self.config
        headers = dict(self._headers)
        if content is not None:
            headers["Content-Type"] = wire.MEDIA_TYPE
        for attempt in range(cfg.retries + 1):
            wait = min(cfg.max_wait_s, cfg.backoff_s * 2**attempt)
            self.stats["requests"] += 1
            try:
                r = self._client.request(method, self.url + path, json=json, content=content,
                                         params=params, headers=headers)
            except httpx.TransportError as err:
                if attempt == cfg.retries:
                    raise RemoteError(f"could not reach {self.url}{path} after {attempt + 1} tries: "
                                      f"{err.__class__.__name__}: {err}") from err
            else:
                code = _error_code(r)
                retryable = r.status_code == 503 or (r.status_code == 429 and code == "rate_limited")
                if not retryable or attempt == cfg.retries:
                    if r.status_code >= 400:
                        raise _error(r, path, code)
                    return r
                wait = min(cfg.max_wait_s, max(wait, _retry_after(r)))
            self.stats["retries"] += 1
            time.sleep(wait)
        raise RemoteError(f"{path}: no answer")  # not reached: the loop returns or raises


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ConfigError("texts must be a list of strings")
    return list(texts)


def _error_code(r) -> str | None:
    if r.status_code < 400:
        return None
    try:
        return str(r.json().get("error"))
    except (ValueError, AttributeError):
        return None


def _retry_after(r) -> float:
    try:
        return float(r.headers.get("Retry-After", 0))
    except ValueError:
        return 0.0


def _error(r, path: str, code: str | None) -> Exception:
    try:
        detail = str(r.json().get("message"))
    except (ValueError, AttributeError):
        detail = r.text[:200]
    status = r.status_code
    text = f"{path}: {detail} (HTTP {status})"
    if status == 401:
        return AuthenticationError(text, status, code)
    if status == 403:
        return AccessError(text)
    if status in (404, 410) and code in ("handle_expired", "handle_unknown"):
        return HandleExpiredError(text, status, code)
    if status == 413 or code == "limit":
        return BoxLimitError(text)
    if status == 429:
        return RateLimitError(text, status, code)
    if status < 500:
        return RequestRejectedError(text, status, code)
    return RemoteError(text, status, code)


def connect(url: str, token: str | None = None, **kwargs) -> RemoteBox:
    """Open a served box: ``exotune.connect("http://127.0.0.1:8000", token=...)``.

    Without ``token``, the environment variable ``EXOTUNE_TOKEN`` is used.
    """
    return RemoteBox(url, token, **kwargs)
