"""What the owner of a served box decides: limits, handle store bounds, auth and budgets."""

from __future__ import annotations

from dataclasses import dataclass

from exotune.configs import ConfigBase
from exotune.errors import ConfigError


@dataclass
class ServeConfig(ConfigBase):
    """Run-time knobs of ``exotune serve``. Limits only ever tighten the box's own."""

    stateless: bool = False  # no stored graphs: backward sends the inputs again and recomputes
    no_auth: bool = False  # must be asked for explicitly; otherwise at least one token is needed
    max_batch: int | None = None  # None: the box's own limit
    max_length: int | None = None
    max_body_bytes: int = 16 * 2**20
    max_text_chars: int = 4000  # per text, for /embed, /encode and /scores
    max_labels: int = 1024  # label texts per /scores call
    label_cache_size: int = 16  # label sets whose encodings /scores keeps (least recently used out); 0: none
    max_handles: int = 256  # stored forward graphs awaiting their backward
    max_handle_bytes: int = 2**30  # memory those graphs may hold together (estimated)
    handle_ttl_s: float = 300.0
    rate_per_s: float = 50.0  # per token: a token bucket refilled at this rate ...
    burst: int = 100  # ... holding at most this many requests
    grad_budget: int | None = None  # backward calls per token; None: unlimited

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_length", "grad_budget"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"ServeConfig.{name} must be an integer >= 1 or None, got {value!r}")
        for name in ("max_body_bytes", "max_text_chars", "max_labels", "max_handles",
                     "max_handle_bytes", "burst"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"ServeConfig.{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.label_cache_size, int) or self.label_cache_size < 0:
            raise ConfigError(f"ServeConfig.label_cache_size must be an integer >= 0, got {self.label_cache_size!r}")
        if not self.handle_ttl_s > 0:
            raise ConfigError(f"ServeConfig.handle_ttl_s must be > 0, got {self.handle_ttl_s}")
        if not self.rate_per_s > 0:
            raise ConfigError(f"ServeConfig.rate_per_s must be > 0, got {self.rate_per_s}")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"ServeConfig.max_length must be >= 2, got {self.max_length}")

    def public(self) -> dict:
        """What /v1/spec tells clients about the server (no tokens, nothing about the model)."""
        return {
            "stateless": self.stateless,
            "max_body_bytes": self.max_body_bytes,
            "max_text_chars": self.max_text_chars,
            "max_labels": self.max_labels,
            "handle_ttl_s": self.handle_ttl_s,
            "max_handles": self.max_handles,
            "rate_per_s": self.rate_per_s,
            "burst": self.burst,
            "grad_budget": self.grad_budget,
        }
