"""What every session's status lines say, worked out four times a second for the whole process.

The stream list, the connection line and each stream's freshness are the same for every
viewer of a process, so one timer computes them and offers the result to each session;
a session is sent an update (through its document's next-tick callback) only when its
text changed. A quiet second costs a comparison per session, not a callback and a
message each, which is what a per-session ``add_periodic_callback`` would cost.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from headrace.app.live.subscriber import Subscriber

log = logging.getLogger(__name__)

# With MIN_STALE_AFTER: a stream whose ticks stop shows stale 1.5-1.75 s after its last rows,
# inside the 2 s asked of it with room for a busy machine.
PERIOD_MS = 250


@dataclass(frozen=True)
class Status:
    streams: tuple[str, ...]
    line: str  # connection and stream count
    freshness: tuple[tuple[str, str], ...]  # (stream, "live, 0.3 s behind")


class Viewer(Protocol):
    def offer(self, status: Status) -> bool:
        """Take ``status`` (schedule an update if it changed); False once the session is gone."""


class Follower:
    """A session's page that shows what a board offers: the :class:`Viewer` side.

    ``offer`` schedules ``_apply(status)`` on the session's own document when the status
    changed, with that document current and every change in one message.
    """

    def follow(self, doc: Any) -> None:
        self._doc = weakref.ref(doc)
        self.shown: Any = None
        # Set when the session is destroyed: its document may live on a while, but a
        # change to it would raise inside Bokeh's callback (and leave curdoc() patched).
        self.closed = False

    def offer(self, status: Any) -> bool:
        if self.closed:
            return False
        if status == self.shown:
            return True
        doc = self._doc()
        if doc is None:
            return False
        self.shown = status
        return self.later(partial(self._apply, status))

    def later(self, work: Callable[[], None]) -> bool:
        """Run ``work`` in the session's next tick, its document current; False if it is gone."""
        doc = self._doc()
        if doc is None or self.closed:
            return False
        try:
            doc.add_next_tick_callback(partial(self._run, work))
        except Exception:  # the document is being torn down
            return False
        return True

    def _run(self, work: Callable[[], None]) -> None:
        from panel.io.document import unlocked
        from panel.io.state import set_curdoc

        doc = self._doc()
        if doc is None or self.closed:
            return
        # Panel builds new panes' models for its own notion of the current document,
        # which outside Panel's callbacks may be another session's.
        with set_curdoc(doc), unlocked():
            work()

    def _apply(self, status: Any) -> None:
        raise NotImplementedError


class Board:
    """The process's status, every PERIOD_MS, offered to every registered session."""

    def __init__(self, subscriber: Subscriber, period_ms: int = PERIOD_MS) -> None:
        self.subscriber = subscriber
        self.period_ms = period_ms
        self._viewers: dict[Viewer, None] = {}
        self._lock = threading.Lock()
        self._timer = None

    def status(self) -> Status:
        sub = self.subscriber
        streams = tuple(sub.streams())
        if not sub.connected.is_set():
            line = f"<i>connecting to the Dask scheduler at {sub.address}…</i>"
        elif not streams:
            line = f"<i>no streams published on {sub.address} yet</i>"
        else:
            line = f"<small>scheduler {sub.address} · {len(streams)} streams</small>"
        return Status(streams, line, tuple((s, sub.freshness(s)) for s in streams))

    def add(self, viewer: Viewer) -> None:
        """Offer ``viewer`` the status now and every period until it is removed or gone.

        Call on the server's event loop (a session's callback), which the timer then uses.
        """
        with self._lock:
            self._viewers[viewer] = None
            if self._timer is None:
                from tornado.ioloop import PeriodicCallback

                self._timer = PeriodicCallback(self._tick, self.period_ms)
                self._timer.start()
        viewer.offer(self.status())

    def remove(self, viewer: Viewer) -> None:
        with self._lock:
            self._viewers.pop(viewer, None)

    def _tick(self) -> None:
        status = self.status()
        with self._lock:
            viewers = list(self._viewers)
        for viewer in viewers:
            try:
                alive = viewer.offer(status)
            except Exception:
                log.exception("status update failed for a session")
                alive = False
            if not alive:
                self.remove(viewer)
