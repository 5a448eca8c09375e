"""Sharing the box fairly between tokens: work runs in bounded units, and when the box frees
up, the next unit is the one of the token served least recently.

One token's heaviest allowed request is many units; another token's small request waits for
at most the unit in progress (per worker) before its own turn, whatever the queue holds.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import deque
from contextlib import contextmanager


class FairScheduler:
    """``with scheduler.turn(caller): <one unit of box work>``: at most ``workers`` units at
    once; among waiting callers, the one whose last turn is oldest goes first (round robin),
    and a caller's own units keep their order."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self._cond = threading.Condition()
        self._active = 0
        self._waiting: dict[str, deque] = {}
        self._last: dict[str, int] = {}  # caller -> the turn it last got (0: never)
        self._turns = itertools.count(1)
        self._arrivals = itertools.count()

    @contextmanager
    def turn(self, caller: str):
        ticket = next(self._arrivals)
        with self._cond:
            self._waiting.setdefault(caller, deque()).append(ticket)
            while not (self._active < self.workers and self._next() == (caller, ticket)):
                self._cond.wait()
            queue = self._waiting[caller]
            queue.popleft()
            if not queue:
                del self._waiting[caller]
            self._last[caller] = next(self._turns)
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                if len(self._last) > 4096:  # forget callers not waiting now: their next turn is early anyway
                    self._last = {c: t for c, t in self._last.items() if c in self._waiting}
                self._cond.notify_all()

    def also_served(self, callers) -> None:
        """``callers`` were served in a turn just given to another (riding in its batch): their
        next turn comes after those of callers not served since."""
        with self._cond:
            now = next(self._turns)
            for caller in callers:
                self._last[caller] = now

    def waiting(self) -> int:
        """Units waiting for their turn now."""
        with self._cond:
            return sum(len(q) for q in self._waiting.values())

    def _next(self) -> tuple[str, int]:
        caller = min(self._waiting, key=lambda c: (self._last.get(c, 0), self._waiting[c][0]))
        return caller, self._waiting[caller][0]


class InflightLimit:
    """At most ``limit`` requests of one caller in the thread pool at once; the rest wait here,
    on the event loop, so one token cannot take every worker thread."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._users: dict[str, int] = {}

    async def __call__(self, caller: str, fn, *args):
        from starlette.concurrency import run_in_threadpool

        slot = self._slots.setdefault(caller, asyncio.Semaphore(self.limit))
        self._users[caller] = self._users.get(caller, 0) + 1
        try:
            async with slot:
                return await run_in_threadpool(fn, *args)
        finally:
            self._users[caller] -= 1
            if not self._users[caller]:  # nobody holds or waits for it: forget it
                del self._users[caller], self._slots[caller]
