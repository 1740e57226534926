"""Admission of new sessions: a crowd opening a page never stalls the viewers watching it.

A session's build (the page's code, Panel's models, Bokeh's document) runs on the
process's event loop, the one that feeds every open session; a hundred builds at once
hold that loop for seconds, and every watcher's rows wait behind them. So a process
builds one session at a time, each starting only when it fits before the next fan-out
flush (by the recent time between flushes and the recent build times), else just after
that flush (or once no flush has come for :data:`IDLE`), resting half as long as the
last build took before the next (:data:`REST`), and keeps at most
``limit`` opens waiting. Beyond that an open is refused: its websocket is closed with
code 1013 ("try again later") and the reason, and the refusal is logged, rather than
queued without end (500 opens in a second, or a page opened and closed in a loop, cost
a waiting coroutine each, never the process's memory). While an open waits, its page
shows Panel's loading spinner (``--global-loading-spinner``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger(__name__)

LIMIT = 100  # opens waiting per process before new ones are refused
IDLE = 0.3  # seconds to wait for a flush before building anyway (no rows are coming)
FIRST_BUILD = 0.2  # seconds a build is taken to cost until one was measured
SMOOTH = 0.2  # weight of the newest figure in the running estimates
# After a build of b seconds the next starts no sooner than REST * b later: a crowd's
# builds take at most two thirds of a process's time, and the machine's cores stay free
# enough for the flushes (of every process on it) that watchers wait for. (1.0 left the
# last joiners of a 100-viewer crowd waiting 1.5-2 s at p95, with watchers at 0.5 s;
# 0.5 brought them to 0.4-0.5 s, watchers 0.6-0.7 s: python -m benchmarks --only joins.)
REST = 0.5
T = TypeVar("T")


class Refused(Exception):
    """An open refused because too many are waiting; the message is for the viewer."""


class Admission:
    """One process's gate for session builds (see the module's docstring)."""

    def __init__(self, limit: int = LIMIT, idle: float = IDLE, rest: float = REST) -> None:
        self.limit, self.idle = limit, idle
        self.waiting = 0
        self.admitted = self.refused = 0
        self.build_total = 0.0  # seconds of all builds: the loop is busy with them meanwhile
        self.flushed_at = float("-inf")  # time.monotonic() of the last flush's end
        self.interval: float | None = None  # recent seconds between flushes
        self.build_seconds = FIRST_BUILD  # recent seconds per build
        self.rest = rest
        self.rest_until = 0.0  # no build starts before (time.monotonic())
        self._flush: asyncio.Future[None] | None = None
        self._turn: asyncio.Lock | None = None
        self.observers: list[Callable[[float], None]] = []  # told each build's seconds

    def flushed(self, _seconds: float = 0.0, _lags: object = None) -> None:
        """From the fan-out: a flush ended (a :class:`Fanout` observer)."""
        now = time.monotonic()
        gap = now - self.flushed_at
        if gap < self.idle:  # rows are flowing; a longer gap is a pause, not a cadence
            self.interval = gap if self.interval is None else _smooth(self.interval, gap)
        self.flushed_at = now
        if self._flush is not None and not self._flush.done():
            self._flush.set_result(None)
        self._flush = None

    def info(self) -> dict[str, float]:
        """Counts for metrics and tests."""
        return {
            "waiting": self.waiting,
            "refused": self.refused,
            "admitted": self.admitted,
            "build_total": self.build_total,
        }

    async def admit(self, build: Callable[[], Awaitable[T]], rest: float | None = None) -> T:
        """Run ``build`` in this process's turn; raise :class:`Refused` if too many wait.

        ``rest``: this build's rest, in place of :attr:`rest` (longer for work ahead).
        """
        if self.waiting >= self.limit:
            self.refused += 1
            log.info(
                "session refused: %d opens already waiting in this process (limit %d); "
                "%d refused so far",
                self.waiting,
                self.limit,
                self.refused,
            )
            raise Refused(f"headrace: {self.waiting} pages are opening on this server process")
        self.waiting += 1
        waiting = True
        try:
            if self._turn is None:
                self._turn = asyncio.Lock()
            async with self._turn:
                self.waiting -= 1
                waiting = False
                await self._quiet()
                self.admitted += 1
                started = time.monotonic()
                try:
                    return await build()
                finally:
                    ended = time.monotonic()
                    self.build_total += ended - started
                    self.build_seconds = _smooth(self.build_seconds, ended - started)
                    factor = self.rest if rest is None else rest
                    self.rest_until = ended + factor * (ended - started)
                    for observe in self.observers:
                        observe(ended - started)
        finally:
            if waiting:  # cancelled while waiting (the viewer left)
                self.waiting -= 1

    def fits(self) -> bool:
        """Whether a build started now ends before the next flush is due (or none is)."""
        now = time.monotonic()
        if self.interval is None or now - self.flushed_at > self.idle:
            return True
        return now + self.build_seconds <= self.flushed_at + self.interval

    async def _quiet(self) -> None:
        """Until a build fits before the next flush: now, or just after that flush."""
        rest = self.rest_until - time.monotonic()
        if rest > 0:
            await asyncio.sleep(rest)
        if self.fits():
            return
        if self._flush is None or self._flush.done():
            self._flush = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):  # no rows are flowing: nobody to yield to
            await asyncio.wait_for(asyncio.shield(self._flush), self.idle)


def _smooth(estimate: float, figure: float) -> float:
    return (1 - SMOOTH) * estimate + SMOOTH * figure
