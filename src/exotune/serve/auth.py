"""Bearer tokens, per-token rate limits (token buckets) and per-token gradient budgets."""

from __future__ import annotations

import hmac
import threading
import time
from dataclasses import dataclass

from exotune.errors import ConfigError
from exotune.serve.errors import ApiError

ANONYMOUS = "anonymous"


@dataclass
class _Account:
    tokens: float  # what is left in the bucket
    stamp: float
    grad_calls: int = 0


class TokenGate:
    """Who is calling, may they call now, and may they take one more gradient.

    Callers are known by an opaque id (``t0``, ``t1``...), never by their token, so handles
    and logs do not hold secrets.
    """

    def __init__(self, tokens: list[str] | None, rate_per_s: float, burst: int,
                 grad_budget: int | None, clock=time.monotonic) -> None:
        tokens = [t for t in (tokens or []) if t]
        if any(len(t) < 8 or any(c.isspace() for c in t) for t in tokens):
            raise ConfigError("serve tokens must be at least 8 characters without whitespace")
        self._tokens = [t.encode() for t in tokens]
        self.open = not tokens
        self.rate, self.burst, self.grad_budget = rate_per_s, burst, grad_budget
        self._clock = clock
        self._lock = threading.Lock()
        self._accounts: dict[str, _Account] = {}

    def identify(self, authorization: str | None) -> str:
        if self.open:
            return ANONYMOUS
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(401, "unauthorized", "missing bearer token: send 'Authorization: Bearer <token>'")
        given_b = given.strip().encode()
        found = None
        for i, token in enumerate(self._tokens):  # compare with every token: no early exit
            if hmac.compare_digest(given_b, token) and found is None:
                found = f"t{i}"
        if found is None:
            raise ApiError(401, "unauthorized", "invalid bearer token")
        return found

    def admit(self, caller: str) -> None:
        """Take one request from the caller's bucket, or refuse with 429."""
        with self._lock:
            now = self._clock()
            acc = self._accounts.setdefault(caller, _Account(tokens=float(self.burst), stamp=now))
            acc.tokens = min(float(self.burst), acc.tokens + (now - acc.stamp) * self.rate)
            acc.stamp = now
            if acc.tokens < 1.0:
                wait = (1.0 - acc.tokens) / self.rate
                raise ApiError(429, "rate_limited", f"rate limit of {self.rate:g} requests/s "
                              f"(burst {self.burst}) exceeded; retry in {wait:.2f} s", retry_after=wait)
            acc.tokens -= 1.0

    def check_budget(self, caller: str) -> None:
        with self._lock:
            self._check_budget(caller)

    def spend_gradient(self, caller: str) -> None:
        """Count one gradient call, refusing with 429 once the caller's budget is spent."""
        with self._lock:
            self._check_budget(caller)
            self._accounts[caller].grad_calls += 1

    def _check_budget(self, caller: str) -> None:
        acc = self._accounts.setdefault(caller, _Account(tokens=float(self.burst), stamp=self._clock()))
        if self.grad_budget is not None and acc.grad_calls >= self.grad_budget:
            raise ApiError(429, "budget_exhausted", f"gradient budget of {self.grad_budget} backward "
                          "calls for this token is spent; ask the box's owner for more")
