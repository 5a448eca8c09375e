"""Forward graphs kept for their backward: bounded in count, bytes and age; bound to a caller.

A training forward reserves its estimated bytes before its graph is built (``reserve``), so
concurrent forwards cannot together overshoot the bound; the graph then takes the
reservation's place (``put``) or gives it back (``release``). Expired graphs are purged on a
timer, and once enough was freed the heap's free pages go back to the system.
"""

from __future__ import annotations

import secrets
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass

from exotune.memory import release_memory

TRIM_AFTER_BYTES = 32 * 2**20  # freed since the last trim before the timer trims again


def purge_interval_s(ttl_s: float) -> float:
    """How often the timer purges: an expired graph is gone at most this long after its ttl."""
    return min(5.0, ttl_s / 4)


@dataclass
class Pending:
    """One forward made for training: its graph (kept for the backward) and its size."""

    owner: str
    graph: object  # a serve.graphs.Graph; the store never looks inside
    nbytes: int
    created: float = 0.0


class HandleError(Exception):
    """``status`` 404 (unknown, or another caller's), 410 (expired, evicted or used), 413 (too
    large for the store) or 503 (the store is full of graphs being built: retry)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HandleStore:
    """LRU store; every method takes the lock, so request threads may share it."""

    def __init__(self, max_count: int, max_bytes: int, ttl_s: float, clock=time.monotonic) -> None:
        self.max_count, self.max_bytes, self.ttl_s = max_count, max_bytes, ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._items: OrderedDict[str, Pending] = OrderedDict()
        self._gone: OrderedDict[str, str] = OrderedDict()  # handle -> owner, to answer 410 not 404
        self._bytes = 0  # held graphs ...
        self._reserved = 0  # ... and graphs being built
        self._building = 0
        self.freed_since_trim = 0
        self._timer: threading.Thread | None = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes + self._reserved

    def reserve(self, nbytes: int) -> int:
        """Room for a graph of about ``nbytes`` before it is built: older graphs are evicted
        (least recently used first) to make it; 413 if it could never fit, 503 if graphs being
        built hold the room. Give it back with ``put`` or ``release``."""
        if nbytes > self.max_bytes:
            raise HandleError(
                413,
                f"this forward would keep about {nbytes} bytes for its backward, over the "
                f"server's {self.max_bytes}; send smaller batches or shorter sequences",
            )
        with self._lock:
            self._purge_expired()
            while self._items and (
                len(self._items) + self._building >= self.max_count
                or self._bytes + self._reserved + nbytes > self.max_bytes
            ):
                self._drop(next(iter(self._items)))
            if self._building >= self.max_count or self._reserved + nbytes > self.max_bytes:
                raise HandleError(
                    503, "the server is building other forwards' graphs and has no room for this one now; retry shortly"
                )
            self._reserved += nbytes
            self._building += 1
        self._start_timer()
        return nbytes

    def release(self, reservation: int) -> None:
        with self._lock:
            self._reserved -= reservation
            self._building -= 1

    def put(self, pending: Pending, reservation: int | None = None) -> str:
        if reservation is None:
            reservation = self.reserve(pending.nbytes)
        handle = secrets.token_urlsafe(18)
        with self._lock:
            self._reserved -= reservation
            self._building -= 1
            pending.created = self._clock()
            while self._items and self._bytes + self._reserved + pending.nbytes > self.max_bytes:
                self._drop(next(iter(self._items)))  # it came out larger than estimated
            self._items[handle] = pending
            self._bytes += pending.nbytes
        return handle

    def take(self, handle: str, owner: str, check=None) -> Pending:
        """Remove and return the caller's pending forward: a handle serves one backward
        (``restore`` puts it back for a retry). ``check(pending)`` may raise to refuse the call;
        the handle then stays usable."""
        with self._lock:
            self._purge_expired()
            pending = self._items.get(handle)
            if pending is not None and pending.owner == owner:
                if check is not None:
                    check(pending)
                self._drop(handle, remember=False)
                self._remember(handle, owner)
                return pending
            if pending is None and self._gone.get(handle) == owner:
                raise HandleError(410, "handle expired, was evicted or was already used; replay the forward")
        raise HandleError(404, "unknown handle; replay the forward")

    def restore(self, handle: str, pending: Pending) -> None:
        """Make a taken handle usable again (its backward was refused), unless it expired."""
        with self._lock:
            if self._clock() - pending.created > self.ttl_s:
                return
            self._gone.pop(handle, None)
            self._items[handle] = pending
            self._bytes += pending.nbytes
            self.freed_since_trim -= pending.nbytes

    def purge_expired(self) -> int:
        """Drop what has outlived its ttl now (a timer does it too); the bytes dropped."""
        with self._lock:
            return self._purge_expired()

    def expire_all(self) -> None:
        with self._lock:
            for handle in list(self._items):
                self._drop(handle)

    def trim(self) -> bool:
        """Give freed heap pages back to the system if enough was freed since the last time."""
        with self._lock:
            if self.freed_since_trim < TRIM_AFTER_BYTES:
                return False
            self.freed_since_trim = 0
        return release_memory(collect=False)

    # -- the timer ----------------------------------------------------------------------------

    def _start_timer(self) -> None:
        if self._timer is not None:
            return
        with self._lock:
            if self._timer is not None:
                return
            self._timer = threading.Thread(
                target=_purge_loop,
                args=(weakref.ref(self), purge_interval_s(self.ttl_s)),
                name="exotune-handle-purge",
                daemon=True,
            )
        self._timer.start()

    # -- under the lock ---------------------------------------------------------------------

    def _purge_expired(self) -> int:
        now, freed = self._clock(), 0
        for handle in [h for h, p in self._items.items() if now - p.created > self.ttl_s]:
            freed += self._drop(handle)
        return freed

    def _drop(self, handle: str, remember: bool = True) -> int:
        pending = self._items.pop(handle)
        self._bytes -= pending.nbytes
        self.freed_since_trim += pending.nbytes
        if remember:
            self._remember(handle, pending.owner)
        return pending.nbytes

    def _remember(self, handle: str, owner: str) -> None:
        self._gone[handle] = owner
        while len(self._gone) > 4 * self.max_count:
            self._gone.popitem(last=False)


def _purge_loop(ref, interval_s: float) -> None:
    """Purge expired graphs every ``interval_s`` while the store lives (it holds no reference
    in between, so a store nobody uses any more is collected and the loop ends)."""
    while True:
        time.sleep(interval_s)
        store = ref()
        if store is None:
            return
        store.purge_expired()
        store.trim()
        del store
