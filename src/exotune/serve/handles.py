"""Forward graphs kept for their backward: bounded in count, bytes and age; bound to a caller."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass
class Pending:
    """One forward made for training: its outputs (with graph) and the leaves to differentiate."""

    owner: str
    outputs: torch.Tensor  # (B, O), attached to the graph
    leaves: dict[str, torch.Tensor]  # wire name -> leaf that requires grad
    nbytes: int
    created: float = 0.0


class HandleError(Exception):
    """``status`` 404 (unknown, or another caller's) or 410 (expired, evicted or used)."""

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
        self._bytes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def put(self, pending: Pending) -> str:
        if pending.nbytes > self.max_bytes:
            raise HandleError(413, f"this forward keeps about {pending.nbytes} bytes for its backward, "
                                   f"over the server's {self.max_bytes}; send smaller batches")
        handle = secrets.token_urlsafe(18)
        with self._lock:
            pending.created = self._clock()
            self._purge_expired()
            while self._items and (len(self._items) >= self.max_count
                                   or self._bytes + pending.nbytes > self.max_bytes):
                self._drop(next(iter(self._items)))  # least recently used first
            self._items[handle] = pending
            self._bytes += pending.nbytes
        return handle

    def take(self, handle: str, owner: str, check=None) -> Pending:
        """Remove and return the caller's pending forward: a handle serves one backward.

        ``check(pending)`` may raise to refuse the call; the handle then stays usable.
        """
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

    def purge_expired(self) -> None:
        """Drop what has outlived its ttl now (put and take do it too, in passing)."""
        with self._lock:
            self._purge_expired()

    def expire_all(self) -> None:
        with self._lock:
            for handle in list(self._items):
                self._drop(handle)

    # -- under the lock ---------------------------------------------------------------------

    def _purge_expired(self) -> None:
        now = self._clock()
        for handle in [h for h, p in self._items.items() if now - p.created > self.ttl_s]:
            self._drop(handle)

    def _drop(self, handle: str, remember: bool = True) -> None:
        pending = self._items.pop(handle)
        self._bytes -= pending.nbytes
        if remember:
            self._remember(handle, pending.owner)

    def _remember(self, handle: str, owner: str) -> None:
        self._gone[handle] = owner
        while len(self._gone) > 4 * self.max_count:
            self._gone.popitem(last=False)
