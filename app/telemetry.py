"""A Panel process's figures, read once a second: for Prometheus and for operators.

One timer per process takes the subscriber's and the fan-out's counters and advances
the Prometheus figures (:mod:`headrace.app.metrics`) by what changed; every
:data:`REPORT_EVERY` seconds it also keeps the process's record on the scheduler
(metadata ``["headrace", "viewers", "<host>-<pid>"]``), which the operator page and
``headrace status`` read for viewers per process, on every host. The sessions
themselves are not touched: this costs viewers nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from headrace.app.metrics import ProcessFigures

if TYPE_CHECKING:
    from distributed import Client

    from headrace.app.live.fanout import Fanout
    from headrace.app.live.subscriber import Subscriber

log = logging.getLogger(__name__)

PERIOD_MS = 1000
REPORT_EVERY = 5.0
FRESH = 3 * REPORT_EVERY  # a record older than this is of a process that is gone
KEY = ["headrace", "viewers"]


class Telemetry:
    def __init__(self, subscriber: Subscriber, fanout: Fanout) -> None:
        self.subscriber, self.fanout = subscriber, fanout
        self.sources: list[Callable[[], dict[str, Any]]] = []  # more counts (session opens)
        self.every_period: list[Callable[[], None]] = []  # run on each tick of the timer
        self.figures = ProcessFigures()
        self.ident = f"{socket.gethostname()}-{os.getpid()}"
        self._timer: Any = None
        self._reported = 0.0

    def start(self) -> None:
        """Start the timer on the running loop (once)."""
        if self._timer is not None:
            return
        from tornado.ioloop import PeriodicCallback

        self.fanout.observers.append(self.figures.flushed)
        self._timer = PeriodicCallback(self._tick, PERIOD_MS)
        self._timer.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def totals(self) -> dict[str, Any]:
        """The process's counters and gauges in one dict."""
        from headrace.app.pages import template
        from headrace.app.views.engine import engines

        views = engines(self.fanout)
        totals = {
            **self.subscriber.stats,
            **self.fanout.info(),
            "builds": template.builds,
            **{k: v for source in self.sources for k, v in source().items()},
            "views": len(views),
            "view_calls": sum(e.calls.count for e in views),
            "view_renders": sum(e.version for e in views),
        }
        # Sessions built ahead have nobody watching yet: viewers are the others.
        totals["sessions"] = max(0, totals.get("sessions", 0) - totals.get("prepared", 0))
        return totals

    def record(self) -> dict[str, Any]:
        t = self.totals()
        keep = ("sessions", "behind", "skipped_rows", "messages", "sent_bytes", "frames", "gaps")
        return {
            "process": self.ident,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "reported": time.time(),
            **{k: t.get(k, 0) for k in keep},
        }

    def _tick(self) -> None:
        for run in self.every_period:
            run()
        self.figures.update(self.totals())
        client = self.subscriber.client
        now = time.time()
        if client is None or now - self._reported < REPORT_EVERY:
            return
        self._reported = now
        # The subscriber's client is asynchronous, on this loop.
        task = asyncio.ensure_future(client.set_metadata([*KEY, self.ident], self.record()))
        task.add_done_callback(_quiet)


def _quiet(future: Any) -> None:
    # The scheduler is away: the subscriber reports that already.
    if not future.cancelled() and future.exception() is not None:
        log.debug("telemetry: could not report to the scheduler: %s", future.exception())


async def viewer_records(client: Client) -> list[dict[str, Any]]:
    """The records of the Panel processes that reported recently, by process."""
    raw = await client.get_metadata(KEY, default=None) or {}
    now = time.time()
    fresh = [r for r in raw.values() if now - r.get("reported", 0) <= FRESH]
    return sorted(fresh, key=lambda r: r["process"])
