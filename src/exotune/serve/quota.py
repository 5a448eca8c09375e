"""Where the token gate counts: request buckets and gradient budgets per token.

``LocalQuota`` counts in this process (one replica). ``RedisQuota`` counts in Redis, so every
replica behind a load balancer draws on the same bucket and budget: each update is one Lua
script (atomic), on Redis's own clock, under a key made from a hash of the token (never the
token). Budgets have no expiry: they survive a replica's restart. When Redis cannot be reached,
gradient calls are refused with 503, or, only if the owner chose ``fallback="local"``, counted
in the replica until Redis is back (then added to Redis's counts); never unlimited.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from exotune.errors import ConfigError, MissingDependencyError
from exotune.serve.errors import ApiError

FALLBACKS = ("refuse", "local")
SCHEMES = ("redis://", "rediss://", "unix://")
KEY_PREFIX = "exotune:quota:"
RETRY_S = 1.0  # after a failed call, Redis is not asked again for this long
SOCKET_TIMEOUT_S = 0.5
AWAY = object()  # what a call on Redis gives while Redis cannot be reached


def quota_key(token: str) -> str:
    """The name a token's counts go under: a hash of it, the same on every replica."""
    return hashlib.sha256(b"exotune quota\0" + token.encode()).hexdigest()[:32]


class QuotaStore(Protocol):
    def take(self, key: str, rate: float, burst: int) -> float:
        """Take one request from ``key``'s bucket: 0.0 if taken, else seconds until one is there."""

    def spend(self, key: str, budget: int | None) -> bool:
        """Count one gradient call unless ``budget`` calls are counted already (then False)."""

    def within(self, key: str, budget: int | None) -> bool:
        """Whether ``key`` may still spend one gradient call."""

    def refund(self, key: str) -> None:
        """Give back one counted gradient call."""

    def spent(self, key: str) -> int:
        """Gradient calls counted for ``key``."""


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class LocalQuota:
    """Counts in this process; gone when it stops."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        self._spent: dict[str, int] = {}

    def take(self, key: str, rate: float, burst: int) -> float:
        with self._lock:
            now = self._clock()
            b = self._buckets.setdefault(key, _Bucket(float(burst), now))
            b.tokens, b.stamp = min(float(burst), b.tokens + (now - b.stamp) * rate), now
            if b.tokens < 1.0:
                return (1.0 - b.tokens) / rate
            b.tokens -= 1.0
            return 0.0

    def spend(self, key: str, budget: int | None) -> bool:
        with self._lock:
            if budget is not None and self._spent.get(key, 0) >= budget:
                return False
            self._spent[key] = self._spent.get(key, 0) + 1
            return True

    def within(self, key: str, budget: int | None) -> bool:
        with self._lock:
            return budget is None or self._spent.get(key, 0) < budget

    def refund(self, key: str) -> None:
        with self._lock:
            if self._spent.get(key, 0) > 0:
                self._spent[key] -= 1

    def spent(self, key: str) -> int:
        with self._lock:
            return self._spent.get(key, 0)

    def drain(self) -> dict[str, int]:
        """The gradient calls counted here, forgotten (to be added to a shared store)."""
        with self._lock:
            spent, self._spent = self._spent, {}
            return spent


# KEYS[1]: the bucket (hash: tokens, stamp in ms); ARGV: rate per s, burst. Redis's clock, so all
# replicas agree. Returns 0 if a request was taken, else the wait in microseconds.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens, stamp = tonumber(b[1]) or burst, tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate / 1000)
local wait = 0
if tokens < 1 then wait = math.ceil((1 - tokens) / rate * 1e6) else tokens = tokens - 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return wait
"""
# KEYS[1]: the budget counter; ARGV[1]: the budget (-1: none). 1 if counted, 0 if spent.
_SPEND = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) >= 0 and n >= tonumber(ARGV[1]) then return 0 end
redis.call('INCR', KEYS[1])
return 1
"""
_REFUND = """
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then redis.call('DECR', KEYS[1]) end
return 0
"""


class RedisQuota:
    """Counts in the Redis at ``url`` (``redis://host:port/db``), shared by every replica."""

    def __init__(self, url: str, fallback: str = "refuse", clock=time.monotonic) -> None:
        check_store_url(url)
        if fallback not in FALLBACKS:
            raise ConfigError(f"quota fallback must be one of {FALLBACKS}, got {fallback!r}")
        try:
            import redis
        except ImportError as err:
            raise MissingDependencyError("a Redis quota store needs redis-py: pip install 'exotune[serve]'") from err
        self._errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        self._redis = redis.Redis.from_url(
            url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S
        )
        self._take, self._spend, self._refund = (self._redis.register_script(s) for s in (_TAKE, _SPEND, _REFUND))
        self.fallback, self._clock = fallback, clock
        self.local = LocalQuota(clock)  # the rate limit while Redis is away, and owed counts
        self._down_until = 0.0
        self._lock = threading.Lock()

    def _call(self, what: str, fn, *args):
        """``fn(*args)`` on Redis; AWAY if Redis is away (not asked again for RETRY_S)."""
        if self._clock() < self._down_until:
            return AWAY
        try:
            self._settle()
            return fn(*args)
        except self._errors as err:
            with self._lock:
                if self._clock() >= self._down_until:
                    print(f"quota store unreachable ({what}): {err}; {self._policy()}", file=sys.stderr)
                self._down_until = self._clock() + RETRY_S
            return AWAY

    def _policy(self) -> str:
        return (
            "gradient calls counted in this replica until it is back"
            if self.fallback == "local"
            else "gradient calls refused (503) until it is back"
        )

    def _settle(self) -> None:
        """Add what this replica counted while Redis was away."""
        owed = self.local.drain() if self.fallback == "local" else {}
        try:
            for key, n in owed.items():
                self._redis.incrby(KEY_PREFIX + "spent:" + key, n)
                owed[key] = 0
        finally:
            for key, n in owed.items():  # not added: counted again locally
                for _ in range(n):
                    self.local.spend(key, None)

    def _away(self) -> ApiError:
        return ApiError(
            503,
            "quota_store_unreachable",
            "the quota store that counts gradient budgets across "
            "this service's replicas cannot be reached; gradient calls are refused until it is back: "
            "retry in a few seconds",
            retry_after=RETRY_S,
        )

    def take(self, key: str, rate: float, burst: int) -> float:
        wait = self._call("rate", self._take, [KEY_PREFIX + "rate:" + key], [rate, burst])
        if wait is AWAY:  # this replica's own bucket: limited, if by up to N times across N replicas
            return self.local.take(key, rate, burst)
        return int(wait) / 1e6

    def spend(self, key: str, budget: int | None) -> bool:
        done = self._call("budget", self._spend, [KEY_PREFIX + "spent:" + key], [-1 if budget is None else budget])
        if done is AWAY:
            if self.fallback != "local":
                raise self._away()
            return self.local.spend(key, budget)
        return bool(int(done))

    def within(self, key: str, budget: int | None) -> bool:
        if budget is None:
            return True
        n = self._call("budget", self._redis.get, KEY_PREFIX + "spent:" + key)
        if n is AWAY:
            if self.fallback != "local":
                raise self._away()
            return self.local.within(key, budget)
        return int(n or 0) < budget

    def refund(self, key: str) -> None:
        if self._call("refund", self._refund, [KEY_PREFIX + "spent:" + key]) is AWAY:
            self.local.refund(key)

    def spent(self, key: str) -> int:
        n = self._call("budget", self._redis.get, KEY_PREFIX + "spent:" + key)
        return (0 if n is AWAY else int(n or 0)) + self.local.spent(key)


def check_store_url(url: str) -> str:
    if not isinstance(url, str) or not url.startswith(SCHEMES):
        raise ConfigError(
            f"quota store must be a Redis URL starting with one of {SCHEMES} "
            f"(say redis://127.0.0.1:6379/0), got {url!r}"
        )
    return url


def quota_store(url: str | None, fallback: str = "refuse") -> QuotaStore:
    """The store for ``--quota-store``: in this process when ``url`` is None, else Redis."""
    return LocalQuota() if url is None else RedisQuota(url, fallback)
