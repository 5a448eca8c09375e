"""The HTTP side of a served box, without torch: requests with retries, errors mapped to
exotune's, and the spec. ``RemoteBox`` builds its tensors on it; a black-box client reads the
answers of ``/v1/encode`` and ``/v1/scores`` as numpy arrays through it alone.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from exotune.boxes import wire
from exotune.boxes.spec import BoxSpec
from exotune.configs import ConfigBase
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

TOKEN_ENV = "EXOTUNE_TOKEN"


def _httpx():
    try:
        import httpx
    except ImportError as err:
        raise MissingDependencyError("a remote box needs httpx: pip install 'exotune[serve]'") from err
    return httpx


@dataclass
class RemoteConfig(ConfigBase):
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


class Channel:
    """One served box's URL, token and HTTP client (an ``httpx.Client``, safe across threads).
    ``stats`` counts requests and retries; ``spec`` and ``server`` come from ``/v1/spec``."""

    def __init__(self, url: str, token: str | None = None, *, config: RemoteConfig | None = None, client=None) -> None:
        httpx = _httpx()
        self.url = url.rstrip("/")
        self.config = config or RemoteConfig()
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        self._token = token  # kept for the server's other boxes (``at``); never shown
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._owns_client = client is None  # a client passed in keeps its own timeouts
        self._client = client if client is not None else httpx.Client(timeout=self.config.timeout_s)
        self.stats = {"requests": 0, "retries": 0, "replays": 0}
        info = self.request("GET", "/v1/spec").json()
        # a server of several towers (a CLIP model's text and image): each is a box under /<name>
        self.towers = list(info["towers"]) if isinstance(info, dict) and isinstance(info.get("towers"), list) else None
        if self.towers is not None:
            self.spec, self.server = None, {}
            return
        try:
            self.spec = BoxSpec.from_dict(info["spec"])
            self.server = dict(info.get("server") or {})
        except (KeyError, TypeError, ValueError) as err:
            raise RemoteError(f"{self.url}/v1/spec did not describe a box ({err})") from err

    def at(self, url: str) -> Channel:
        """A channel to another box of the same server (a prompt's), at ``url``, with the same
        token, settings and HTTP client."""
        return Channel(url, self._token, config=self.config, client=self._client)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def message(self, method: str, path: str, *, arrays: bool = False, **kwargs) -> wire.Message:
        """The answer's tensors: torch tensors, or numpy arrays with ``arrays``."""
        r = self.request(method, path, **kwargs)
        decode = wire.decode_arrays if arrays else wire.decode
        try:
            return decode(r.content, self.config.max_response_bytes)
        except ValueError as err:
            raise RemoteError(f"{path}: the server's answer is not a valid tensor message ({err})") from err

    def request(self, method: str, path: str, *, json=None, content: bytes | None = None, params=None):
        httpx, cfg = _httpx(), self.config
        headers = dict(self._headers)
        if content is not None:
            headers["Content-Type"] = wire.MEDIA_TYPE
        for attempt in range(cfg.retries + 1):
            wait = min(cfg.max_wait_s, cfg.backoff_s * 2**attempt)
            self.stats["requests"] += 1
            try:
                r = self._client.request(
                    method, self.url + path, json=json, content=content, params=params, headers=headers
                )
            except httpx.TransportError as err:
                if attempt == cfg.retries:
                    raise RemoteError(
                        f"could not reach {self.url}{path} after {attempt + 1} tries: {err.__class__.__name__}: {err}"
                    ) from err
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


def get(msg: wire.Message, name: str, shape: tuple | None = None):
    """Tensor ``name`` of ``msg``, checked against ``shape`` when given."""
    t = msg.tensors.get(name)
    if t is None or (shape is not None and tuple(t.shape) != tuple(shape)):
        got = None if t is None else tuple(t.shape)
        raise RemoteError(f"the server's answer lacks tensor {name!r} of shape {shape} (got {got})")
    return t


def check_texts(texts) -> list[str]:
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
