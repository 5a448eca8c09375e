"""Gathering concurrent requests for the same route into one box call.

A unit of work (a slice of one request, at most one fair unit) arriving when no batch of
its route is gathering opens one and leads it: for ``wait_s``, and then for as long as it
waits for its leader's turn on the fair scheduler (the box busy with other work), it takes
in the units of other requests that arrive; with the turn it closes and runs them all as one
call. Each request still gets exactly its own answer (the
route's ``call`` splits the call's result back) or its own error: when a gathered call
fails, each unit is run again alone, so a bad row fails only its own request.

Fairness between tokens stays the scheduler's: a batch is one turn, holds at most
``max_rows`` rows and, of each token, at most one fair unit of work (a token with several
requests in flight cannot fill a batch; its other units wait for the next). Only a request's
first unit rides in another's batch: the next units of a request already served lead their
own, and wait for their turn as the round robin says. The tokens riding in a batch count as
served with that turn.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from exotune.serve.fair import FairScheduler


@dataclass(eq=False)
class Job:
    """One unit of one request: what the route's ``call`` takes, and what it weighs."""

    caller: str
    payload: Any
    rows: int
    work: int  # tokens, as the fair scheduler counts them
    first: bool = True  # the first unit of its request (else it leads its own batch)


@dataclass(eq=False)
class _Batch:
    jobs: list[Job]
    deadline: float
    work: dict[str, int] = field(default_factory=dict)  # caller -> its work in the batch
    closed: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    outcomes: list[Any] = field(default_factory=list)  # per job: its result, or the exception it raises

    @property
    def rows(self) -> int:
        return sum(j.rows for j in self.jobs)


class Batcher:
    """``batcher.run(key, job, call)``: ``job`` answered by ``call(payloads) -> results`` (one per
    payload, in order; an exception instance for a payload that failed alone), gathered with the
    jobs of the same ``key`` arriving within ``wait_s``. ``key=None`` or ``wait_s=0``: alone."""

    def __init__(self, scheduler: FairScheduler, wait_s: float, max_rows: int, unit_work: int) -> None:
        self.scheduler, self.wait_s, self.max_rows, self.unit_work = scheduler, wait_s, max_rows, unit_work
        self._cond = threading.Condition()
        self._open: dict[Hashable, list[_Batch]] = {}  # route key -> its batches gathering now, oldest first

    @property
    def on(self) -> bool:
        return self.wait_s > 0

    def run(self, key: Hashable | None, job: Job, call: Callable[[Sequence[Any]], list]) -> Any:
        if key is None or not self.on:
            with self.scheduler.turn(job.caller):
                return _outcome(_calls(call, [job])[0])
        with self._cond:
            batch = next((b for b in self._open.get(key, ()) if job.first and self._fits(b, job)), None)
            leader = batch is None
            if leader:
                batch = _Batch([], time.monotonic() + self.wait_s)
                self._open.setdefault(key, []).append(batch)
            self._add(batch, job)
            if batch.rows >= self.max_rows:
                self._close(key, batch)
        if not leader:
            batch.done.wait()
            return _outcome(batch.outcomes[batch.jobs.index(job)])
        try:
            with self.scheduler.turn(job.caller):
                with self._cond:  # the box is free: gather a little longer, unless the batch is full
                    deadline = max(batch.deadline, time.monotonic() + self.wait_s)
                    while not batch.closed and (left := deadline - time.monotonic()) > 0:
                        self._cond.wait(left)
                    self._close(key, batch)
                self.scheduler.also_served({j.caller for j in batch.jobs} - {job.caller})
                batch.outcomes = _calls(call, batch.jobs)
        except BaseException as err:  # the turn itself failed: every job fails alike
            batch.outcomes = [err] * len(batch.jobs)
            raise
        finally:
            batch.done.set()
        return _outcome(batch.outcomes[0])

    def _fits(self, batch: _Batch, job: Job) -> bool:
        if batch.rows + job.rows > self.max_rows:
            return False
        mine = batch.work.get(job.caller)
        return mine is None or mine + job.work <= self.unit_work

    @staticmethod
    def _add(batch: _Batch, job: Job) -> None:
        batch.jobs.append(job)
        batch.work[job.caller] = batch.work.get(job.caller, 0) + job.work

    def _close(self, key: Hashable, batch: _Batch) -> None:
        if not batch.closed:
            batch.closed = True
            self._open[key].remove(batch)
            if not self._open[key]:
                del self._open[key]
        self._cond.notify_all()


def _calls(call, jobs: list[Job]) -> list[Any]:
    """``call`` on every job's payload at once; if that fails, on each alone (its own error)."""
    try:
        return call([j.payload for j in jobs])
    except Exception as err:
        if len(jobs) == 1:
            return [err]
    outcomes = []
    for j in jobs:
        try:
            outcomes += call([j.payload])
        except Exception as err:
            outcomes.append(err)
    return outcomes


def _outcome(value: Any) -> Any:
    if isinstance(value, BaseException):
        raise value
    return value
