"""Bearer tokens, per-token rate limits (token buckets) and per-token gradient budgets, and a
throttle on wrong tokens per client address."""

from __future__ import annotations

import hmac
import threading
import time
from collections import OrderedDict, deque

from exotune.errors import ConfigError
from exotune.serve.errors import ApiError
from exotune.serve.quota import LocalQuota, QuotaStore, quota_key

ANONYMOUS = "anonymous"
MAX_ADDRESSES = 10_000  # client addresses whose failed logins are remembered (oldest forgotten)


class TokenGate:
    """Who is calling, may they call now, and may they take one more gradient.

    Callers are known by an opaque id (``t0``, ``t1``...), never by their token, so handles
    and logs do not hold secrets. Buckets and budgets live in ``store`` (this process's by
    default; a shared one for replicas), under a hash of the token.
    """

    def __init__(
        self,
        tokens: list[str] | None,
        rate_per_s: float,
        burst: int,
        grad_budget: int | None,
        clock=time.monotonic,
        login_failures: int = 20,
        login_window_s: float = 60.0,
        store: QuotaStore | None = None,
    ) -> None:
        tokens = [t for t in (tokens or []) if t]
        if any(len(t) < 8 or any(c.isspace() for c in t) for t in tokens):
            raise ConfigError("serve tokens must be at least 8 characters without whitespace")
        self._tokens = [t.encode() for t in tokens]
        self.open = not tokens
        self.rate, self.burst, self.grad_budget = rate_per_s, burst, grad_budget
        self._clock = clock
        self._lock = threading.Lock()
        self.store = store or LocalQuota(clock)
        self._keys = {f"t{i}": quota_key(t) for i, t in enumerate(tokens)} | {ANONYMOUS: ANONYMOUS}
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
                raise ApiError(
                    429,
                    "login_throttled",
                    f"{len(times)} wrong tokens from this address within "
                    f"{self.login_window_s:g} s; retry in {wait:.0f} s",
                    retry_after=wait,
                )

    def _failed(self, address: str | None) -> None:
        with self._lock:
            key = address or ""
            self._failures.setdefault(key, deque(maxlen=self.login_failures)).append(self._clock())
            self._failures.move_to_end(key)
            while len(self._failures) > MAX_ADDRESSES:
                self._failures.popitem(last=False)

    def admit(self, caller: str) -> None:
        """Take one request from the caller's bucket, or refuse with 429."""
        wait = self.store.take(self._keys[caller], self.rate, self.burst)
        if wait > 0:
            raise ApiError(
                429,
                "rate_limited",
                f"rate limit of {self.rate:g} requests/s (burst {self.burst}) exceeded; retry in {wait:.2f} s",
                retry_after=wait,
            )

    def check_budget(self, caller: str) -> None:
        if not self.store.within(self._keys[caller], self.grad_budget):
            raise self._spent()

    def spend_gradient(self, caller: str) -> None:
        """Count one gradient call, refusing with 429 once the caller's budget is spent."""
        if not self.store.spend(self._keys[caller], self.grad_budget):
            raise self._spent()

    def refund_gradient(self, caller: str) -> None:
        """Give back the unit ``spend_gradient`` took: the call it paid for was refused."""
        self.store.refund(self._keys[caller])

    def _spent(self) -> ApiError:
        return ApiError(
            429,
            "budget_exhausted",
            f"gradient budget of {self.grad_budget} backward "
            "calls for this token is spent; ask the box's owner for more",
        )
