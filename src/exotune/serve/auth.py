"""Bearer tokens, per-token rate limits (token buckets) and per-token gradient budgets, and a
throttle on wrong tokens per client address."""

from __future__ import annotations

import hmac
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from exotune.errors import ConfigError
from exotune.serve.errors import ApiError

ANONYMOUS = "anonymous"
MAX_ADDRESSES = 10_000  # client addresses whose failed logins are remembered (oldest forgotten)


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
                 grad_budget: int | None, clock=time.monotonic, login_failures: int = 20,
                 login_window_s: float = 60.0) -> None:
        tokens = [t for t in (tokens or []) if t]
        if any(len(t) < 8 or any(c.isspace() for c in t) for t in tokens):
            raise ConfigError("serve tokens must be at least 8 characters without whitespace")
        self._tokens = [t.encode() for t in tokens]
        self.open = not tokens
        self.rate, self.burst, self.grad_budget = rate_per_s, burst, grad_budget
        self._clock = clock
        self._lock = threading.Lock()
        self._accounts: dict[str, _Account] = {}
        self.login_failures, self.login_window_s = login_failures, login_window_s
        self._failures: OrderedDict[str, deque] = OrderedDict()  # client address -> times of wrong tokens

    def identify(self, authorization: str | None, address: str | None = None) -> str:
        """The caller's id for ``authorization``; 401 if it holds no valid token, 429 once
        ``address`` has sent ``login_failures`` wrong tokens within ``login_window_s``."""
        if self.open:
            return ANONYMOUS
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(401, "unauthorized", "missing bearer token: send 'Authorization: Bearer <token>'")
        self._throttle(address)
        given_b = given.strip().encode()
        found = None
        for i, token in enumerate(self._tokens):  # compare with every token: no early exit
            if hmac.compare_digest(given_b, token) and found is None:
                found = f"t{i}"
        if found is None:
            self._failed(address)
            raise ApiError(401, "unauthorized", "invalid bearer token")
        return found

    def _throttle(self, address: str | None) -> None:
        with self._lock:
            times = self._failures.get(address or "")
            if times is None:
                return
            now = self._clock()
            while times and now - times[0] > self.login_window_s:
                times.popleft()
            if len(times) >= self.login_failures:
                wait = self.login_window_s - (now - times[0])
                raise ApiError(429, "login_throttled", f"{len(times)} wrong tokens from this address within "
                                                       f"{self.login_window_s:g} s; retry in {wait:.0f} s", retry_after=wait)

    def _failed(self, address: str | None) -> None:
        with self._lock:
            key = address or ""
            self._failures.setdefault(key, deque(maxlen=self.login_failures)).append(self._clock())
            self._failures.move_to_end(key)
            while len(self._failures) > MAX_ADDRESSES:
                self._failures.popitem(last=False)

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

    def refund_gradient(self, caller: str) -> None:
        """Give back the unit ``spend_gradient`` took: the call it paid for was refused."""
        with self._lock:
            acc = self._accounts.get(caller)
            if acc is not None and acc.grad_calls > 0:
                acc.grad_calls -= 1

    def _check_budget(self, caller: str) -> None:
        acc = self._accounts.setdefault(caller, _Account(tokens=float(self.burst), stamp=self._clock()))
        if self.grad_budget is not None and acc.grad_calls >= self.grad_budget:
            raise ApiError(429, "budget_exhausted", f"gradient budget of {self.grad_budget} backward "
                          "calls for this token is spent; ask the box's owner for more")
