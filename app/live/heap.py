"""The Panel process's garbage collector, kept off the viewers' flushes.

A session lives as long as its viewer and holds ~14,000 objects (Panel's parameterized
objects and their watchers, Bokeh's models and their property values). CPython's full
collection traverses every object it tracks and runs each time its oldest generation
grew by a quarter, so a process opening sessions stops its event loop, the one that
feeds every viewer, for ~7 ms per open session again and again (0.3 s at 40 sessions,
seconds at a thousand), and Panel adds a full ``gc.collect()`` after sessions close.

So once a session is built, the garbage among the objects not yet frozen is collected
(a collection of those only: the build's, and what came since the last one; freezing
without it kept ~1,000 garbage objects per build out of reach, measured with 1,000
viewers), and everything alive is then frozen (``gc.freeze()``): out of the
collector's reach, with young objects collected as usual. What was frozen is collected
in full only when it may hold much garbage: when sessions closed since the last full
collection number :data:`CLOSED` of those open (viewers left: their objects may be
cycles with frozen ones), or builds :data:`BUILT` times as many (what a build leaves in
cycles with frozen objects), at least :data:`AT_LEAST` either way. Such a collection
runs right after a flush, with the most time before the next one (or, when no rows
flow, once no flush came for :data:`NO_FLUSH` seconds: :meth:`Heap.tick`, once a
second). Viewers who stay, or arrive, cost no full collection at all; Panel's own
``gc.collect()`` after a session closes traverses only what is not frozen.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

CLOSED = 0.5  # sessions closed since the last full collection, relative to those open
BUILT = 8.0  # sessions built since, relative to those open
AT_LEAST = {"closed": 8, "built": 256}  # however few were open
NO_FLUSH = 2.0  # seconds without a flush after which a due collection runs anyway


class Heap:
    """One process's collection policy (see the module's docstring)."""

    def __init__(
        self, sessions: Callable[[], int] = lambda: 0, closes: Callable[[], int] = lambda: 0
    ) -> None:
        self.sessions, self.closes = sessions, closes  # open now; closed ever
        self.seconds = 0.0  # spent collecting, all generations
        self.full = 0  # full collections of the frozen objects (this policy's)
        self.closed_then = 0  # sessions closed ever, at the last full collection
        self.built_since = 0  # sessions built since
        self._started = 0.0
        self._flushed_at = time.monotonic()
        self._due = False
        self._watching = False

    def watch(self) -> None:
        """Count the collector's time (all of it: this policy's and CPython's own)."""
        if not self._watching:
            gc.callbacks.append(self._timed)
            self._watching = True

    def unwatch(self) -> None:
        if self._watching:
            gc.callbacks.remove(self._timed)
            self._watching = False

    def built(self, _seconds: float = 0.0) -> None:
        """After a session's build (an :class:`Admission` observer): freeze what lives."""
        gc.collect()  # the objects not frozen yet (cheap): none of their garbage is frozen
        gc.freeze()
        self.built_since += 1
        self._judge()

    def flushed(self, _seconds: float = 0.0, _lags: object = None) -> None:
        """After a fan-out flush (a :class:`Fanout` observer): collect in full if due."""
        self._flushed_at = time.monotonic()
        self._judge()
        if self._due:
            self.collect()

    def tick(self) -> None:
        """Once a second (the telemetry timer): a due collection that no flush came for."""
        self._judge()
        if self._due and time.monotonic() - self._flushed_at > NO_FLUSH:
            self.collect()

    def collect(self) -> None:
        """Collect every object, frozen ones included, and freeze what is left."""
        started = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self.full += 1
        self.closed_then, self.built_since, self._due = self.closes(), 0, False
        log.info(
            "full garbage collection: %d unreachable objects, %.3f s; %d sessions open",
            found,
            time.perf_counter() - started,
            self.sessions(),
        )

    def info(self) -> dict[str, Any]:
        """Figures for metrics: seconds collecting, this policy's full collections."""
        return {"gc_seconds": self.seconds, "gc_full": self.full}

    def _judge(self) -> None:
        open_ = self.sessions()
        left = self.closes() - self.closed_then >= max(AT_LEAST["closed"], CLOSED * open_)
        grown = self.built_since >= max(AT_LEAST["built"], BUILT * open_)
        self._due = self._due or grown or left

    def _timed(self, phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            self.seconds += time.perf_counter() - self._started
