"""Progress that works on a terminal and off one (nohup, CI, a scheduler).

On a terminal, a tqdm bar. Otherwise a bar would be either nothing (tqdm turns itself off) or a
log full of carriage returns: instead, a line through ``logging`` (logger ``exotune.progress``)
every ``EXOTUNE_PROGRESS_SECONDS`` seconds (default 30) with the count, the rate and the ETA.
The CLI shows those lines on stderr (``--quiet`` silences them); a library user sees them when
logging is configured at INFO.
"""

from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("exotune.progress")
SECONDS_ENV = "EXOTUNE_PROGRESS_SECONDS"


def interval() -> float:
    try:
        return max(float(os.environ.get(SECONDS_ENV, "30")), 0.0)
    except ValueError:
        return 30.0


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


class ProgressLog:
    """tqdm's small surface (iterate, ``update``, ``set_postfix``, ``close``) as log lines."""

    def __init__(
        self,
        iterable=None,
        total: int | None = None,
        desc: str = "",
        initial: int = 0,
        every: float | None = None,
        clock=time.monotonic,
    ) -> None:
        self.iterable, self.desc, self.n = iterable, desc, initial
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.every = interval() if every is None else every
        self._clock = clock
        self._start = self._last = clock()
        self._first, self._postfix, self.lines = initial, "", 0

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def __len__(self) -> int:
        return self.total or 0

    def set_postfix(self, **values) -> None:
        self._postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def line(self) -> str:
        elapsed = self._clock() - self._start
        done = self.n - self._first
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else "")]
        parts.append(f"{rate:.3g}/s")
        if self.total and rate > 0:
            parts.append(f"ETA {duration((self.total - self.n) / rate)}")
        if self._postfix:
            parts.append(self._postfix)
        return ", ".join(parts)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self._clock()
        if now - self._last >= self.every:
            self._last = now
            self.lines += 1
            log.info(self.line())

    def close(self) -> None:
        if self.lines:  # a step long enough to have been reported gets its end reported too
            log.info(f"{self.desc}: done, {self.n} in {duration(self._clock() - self._start)}")


def progress_bar(iterable=None, *, total: int | None = None, desc: str = "", enabled: bool = True, initial: int = 0):
    """A tqdm bar on a terminal, a ``ProgressLog`` off one; ``enabled=False``: silent."""
    if enabled and sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, initial=initial, leave=False)
    return ProgressLog(iterable, total, desc, initial, every=None if enabled else float("inf"))


def note(message: str) -> None:
    """A line between bars: written around the bar on a terminal, logged otherwise."""
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stderr)
    else:
        log.info(message)


class StderrHandler(logging.StreamHandler):
    """Plain lines on whatever ``sys.stderr`` is at the time of writing."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # the base class sets it; stderr is looked up when writing
        pass


def setup_logging(quiet: bool = False) -> None:
    """exotune's log lines (progress off a terminal, notices) on stderr; ``quiet``: warnings
    only. The libraries that load the backbone draw no bars then, nor off a terminal."""
    log = logging.getLogger("exotune")
    if not any(isinstance(h, StderrHandler) for h in log.handlers):
        log.addHandler(StderrHandler())
        log.propagate = False
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    if quiet or not sys.stderr.isatty():  # off a terminal a bar is a line of carriage returns
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when transformers is imported
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        if "transformers" in sys.modules:
            sys.modules["transformers"].utils.logging.disable_progress_bar()
