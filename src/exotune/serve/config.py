"""What the owner of a served box decides: limits, handle store bounds, auth and budgets."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from exotune.configs import ConfigBase
from exotune.errors import ConfigError
from exotune.serve.quota import FALLBACKS, check_store_url

MAX_BATCH_WAIT_MS = 1000.0  # a gathering window longer than this only adds latency


@dataclass
class ServeConfig(ConfigBase):
    """Run-time knobs of ``exotune serve``. Limits only ever tighten the box's own."""

    stateless: bool = False  # no stored graphs: backward sends the inputs again and recomputes
    no_auth: bool = False  # must be asked for explicitly; otherwise at least one token is needed
    max_batch: int | None = None  # None: the box's own limit
    max_length: int | None = None
    # texts x tokens one request may ask for (texts, and labels of /v1/scores, each); None:
    # max_batch x max_length. Tokens are counted before tokenizing, as UTF-8 bytes + 2 capped
    # at max_length: no tokenizer makes more tokens than that.
    max_tokens_per_request: int | None = None
    max_response_bytes: int = 64 * 2**20  # an answer's size, checked before the work is done
    # work the box does for one token before another's turn; None: 512 on a CPU, where work
    # grows with tokens, 8192 on a GPU, where a small call costs about what a large one does
    fair_unit_tokens: int | None = None
    box_workers: int = 1  # box calls run at once (1: one after another, fairly between tokens)
    # concurrent requests of one route gathered for up to this long into one box call (0: each
    # alone); at most max_batch rows, and of each token at most fair_unit_tokens of work
    batch_wait_ms: float = 2.0
    max_inflight_per_token: int = 4  # a token's requests beyond this wait, holding no thread
    max_body_bytes: int = 16 * 2**20
    body_timeout_s: float = 30.0  # a request body must arrive whole within this
    max_text_chars: int = 4000  # per text, for /embed, /encode and /scores
    label_cache_size: int = 16  # label sets whose encodings /scores keeps (least recently used out); 0: none
    max_handles: int = 256  # stored forward graphs awaiting their backward
    max_handle_bytes: int = 2**30  # memory those graphs may hold together (estimated)
    handle_ttl_s: float = 300.0
    rate_per_s: float = 50.0  # per token: a token bucket refilled at this rate ...
    burst: int = 100  # ... holding at most this many requests
    grad_budget: int | None = None  # backward calls per token; None: unlimited
    login_failures: int = 20  # wrong tokens one client address may send per window ...
    login_window_s: float = 60.0  # ... before it is answered 429 for the rest of the window
    # where rate buckets and gradient budgets are counted: None in this process, or a Redis URL
    # (redis://host:port/db) that replicas share; if Redis is away, gradient calls get 503
    # ("refuse") or are counted in the replica until it is back ("local", the owner's choice)
    quota_store: str | None = None
    quota_fallback: str = "refuse"

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_length", "grad_budget", "max_tokens_per_request", "fair_unit_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"ServeConfig.{name} must be an integer >= 1 or None, got {value!r}")
        for name in (
            "max_body_bytes",
            "max_text_chars",
            "max_handles",
            "max_handle_bytes",
            "burst",
            "max_response_bytes",
            "box_workers",
            "max_inflight_per_token",
            "login_failures",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"ServeConfig.{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.label_cache_size, int) or self.label_cache_size < 0:
            raise ConfigError(f"ServeConfig.label_cache_size must be an integer >= 0, got {self.label_cache_size!r}")
        if (
            isinstance(self.batch_wait_ms, bool)
            or not isinstance(self.batch_wait_ms, (int, float))
            or not 0 <= self.batch_wait_ms <= MAX_BATCH_WAIT_MS
        ):
            raise ConfigError(
                f"ServeConfig.batch_wait_ms must be a number of milliseconds from 0 to "
                f"{MAX_BATCH_WAIT_MS:g}, got {self.batch_wait_ms!r}"
            )
        for name in ("handle_ttl_s", "rate_per_s", "body_timeout_s", "login_window_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"ServeConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.quota_store is not None:
            check_store_url(self.quota_store)
        if self.quota_fallback not in FALLBACKS:
            raise ConfigError(f"ServeConfig.quota_fallback must be one of {FALLBACKS}, got {self.quota_fallback!r}")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"ServeConfig.max_length must be >= 2, got {self.max_length}")

    def public(self) -> dict:
        """What /v1/spec tells clients about the server (no tokens, nothing about the model)."""
        return {
            "stateless": self.stateless,
            "max_body_bytes": self.max_body_bytes,
            "max_response_bytes": self.max_response_bytes,
            "max_text_chars": self.max_text_chars,
            "body_timeout_s": self.body_timeout_s,
            "handle_ttl_s": self.handle_ttl_s,
            "max_handles": self.max_handles,
            "rate_per_s": self.rate_per_s,
            "burst": self.burst,
            "max_inflight_per_token": self.max_inflight_per_token,
            "batch_wait_ms": self.batch_wait_ms,
            "grad_budget": self.grad_budget,
        }


OWNER_SECRET_ENV = "EXOTUNE_OWNER_SECRET"
OWNER_SECRET_BYTES = 32  # of a generated secret


def default_secret_file() -> Path:
    """Where ``exotune serve`` keeps a generated owner secret: $XDG_CONFIG_HOME/exotune/owner-secret."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "exotune" / "owner-secret"


def owner_secret(path: str | Path | None = None) -> tuple[str, str]:
    """The owner secret of a served box and where it came from: the file ``path`` if given
    (created if missing), else ``$EXOTUNE_OWNER_SECRET``, else the default file (created if
    missing). A created file holds a fresh random secret, readable by its owner only."""
    if path is None and os.environ.get(OWNER_SECRET_ENV, "").strip():
        return _checked(os.environ[OWNER_SECRET_ENV].strip(), f"${OWNER_SECRET_ENV}"), f"${OWNER_SECRET_ENV}"
    path = Path(path).expanduser() if path is not None else default_secret_file()
    if path.is_file():
        return _checked(path.read_text(encoding="utf-8").strip(), str(path)), f"read from {path}"
    if path.exists():
        raise ConfigError(f"owner secret file {path} is not a file")
    secret = secrets.token_hex(OWNER_SECRET_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as err:
        raise ConfigError(f"cannot write a new owner secret to {path}: {err.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secret + "\n")
    return secret, f"generated in {path} (keep it: after a restart the same secret keeps adapters valid)"


def _checked(secret: str, where: str) -> str:
    from exotune.boxes.basis import SECRET_MIN_BYTES

    if len(secret.encode("utf-8")) < SECRET_MIN_BYTES:
        raise ConfigError(f"the owner secret in {where} is too short: at least {SECRET_MIN_BYTES} bytes")
    return secret


@dataclass
class ListenConfig(ConfigBase):
    """How ``exotune serve`` holds its connections (uvicorn's settings): a connection that is
    idle, or sends its request head too slowly, is cut; past ``max_connections`` new ones are
    closed as they come, so stalled clients cannot take every file descriptor."""

    keep_alive_s: float = 5.0  # an idle kept-alive connection is closed after this
    header_timeout_s: float = 10.0  # a request's line and headers must arrive within this
    max_connections: int = 512  # open at once; more are closed on accept (and requests beyond it in progress: 503)
    max_header_bytes: int = 16 * 2**10  # a request's head (line and headers)

    def __post_init__(self) -> None:
        for name in ("keep_alive_s", "header_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"ListenConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("max_connections", "max_header_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"ListenConfig.{name} must be an integer >= 1, got {value!r}")
