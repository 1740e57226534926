"""Fan-out of new rows from the process's subscriber to every session's ColumnDataSource.

A Bokeh model belongs to one document and may only change inside that document's
callbacks, so each session registers a :class:`Sink` per stream (its own source) under
one :class:`Gate` per session. New rows are merged into the sink's pending rows and, if
the session has no flush pending yet, one ``doc.add_timeout_callback(flush,
COALESCE_MS)`` is scheduled; the flush calls ``cds.stream(columns, rollover)`` for every
stream with pending rows, as numpy arrays (binary buffers), in one message. Nothing here
waits for a session: a slow one only accumulates pending rows, bounded by its rollover,
and a gone one is dropped (sessions are held weakly as well).

A session opened with :meth:`Fanout.open_session` gets no updates before its browser
reports the document ready: until then Panel does not send model additions (the
browser pulls the whole document when it connects), so a stream patch could name a
source the browser has not got yet. Rows wait in the sink meanwhile; the document
it pulls holds the snapshot.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np
from panel.io.document import unlocked
from panel.io.state import set_curdoc

from app.columns import Columns, concat, take, to_wire
from app.subscriber import Subscriber

if TYPE_CHECKING:
    from bokeh.document import Document
    from bokeh.models import ColumnDataSource

log = logging.getLogger("headrace.app")

# How long a session's flush waits for rows of its other streams: streams that tick at the
# same instants (see etl.loop) arrive within a few ms of each other.
COALESCE_MS = 25


class Gate:
    """One session: whether its browser is ready for patches, and its one pending flush.

    The session's sinks (one per stream it shows) share it, so rows of several streams
    that arrive within :data:`COALESCE_MS` of each other reach the browser as one message.
    """

    __slots__ = ("__weakref__", "_doc", "flushes", "lock", "ready", "scheduled", "sinks")

    def __init__(self, doc: Document, ready: bool, lock: threading.RLock) -> None:
        self._doc = weakref.ref(doc)
        self.ready = ready
        self.lock = lock  # the subscriber's
        self.sinks: weakref.WeakSet[Sink] = weakref.WeakSet()
        self.scheduled = False
        self.flushes = 0

    @property
    def alive(self) -> bool:
        return self._doc() is not None

    def schedule(self) -> bool:
        """Ask the session to flush soon, unless already asked. False if it is gone."""
        if self.scheduled or not self.ready:
            return True
        doc = self._doc()
        if doc is None:
            return False
        self.scheduled = True
        try:
            doc.add_timeout_callback(self.flush, COALESCE_MS)
        except Exception:  # the document is being torn down
            self.scheduled = False
            return False
        return True

    def flush(self) -> None:
        """Runs as the session's callback: stream every sink's pending rows, in one message."""
        with self.lock:
            self.scheduled = False
            batches = []
            for sink in list(self.sinks):
                if not sink.ready:
                    continue
                rows, cds = sink.take(), sink.source()
                if cds is not None:
                    batches.append((cds, rows, sink.rollover))
        doc = self._doc()
        if not batches or doc is None:
            return
        self.flushes += 1
        # Panel's unlocked() sends the events of its block as one PATCH-DOC, through the
        # same queue as the models Panel adds, so a new source stays ahead of its rows.
        with set_curdoc(doc), unlocked():
            for cds, rows, rollover in batches:
                cds.stream(rows, rollover=rollover)


class Sink:
    """One session's view of one stream: where its rows go and what is waiting to go there."""

    __slots__ = (
        "__weakref__",
        "_cds",
        "columns",
        "dropped",
        "flushes",
        "gate",
        "held",
        "next_index",
        "pending",
        "pending_rows",
        "rollover",
        "stream",
    )

    def __init__(
        self,
        stream: str,
        cds: ColumnDataSource,
        columns: list[str],
        next_index: int,
        rollover: int,
        gate: Gate,
    ) -> None:
        self.stream = stream
        # Weak: a sink must never be what keeps a finished session's document alive.
        self._cds = weakref.ref(cds)
        self.columns = columns
        self.next_index = next_index
        self.rollover = rollover
        self.gate = gate
        self.pending: list[Columns] = []
        self.pending_rows = 0
        self.flushes = 0
        self.dropped = 0
        self.held = False
        gate.sinks.add(self)

    def source(self) -> ColumnDataSource | None:
        return self._cds()

    @property
    def ready(self) -> bool:
        return bool(self.pending) and not self.held

    def offer(self, rows: Columns, first: int) -> bool:
        """Queue ``rows`` (indices from ``first``); schedule a flush. False if the sink is dead."""
        n = len(rows["time"])
        if first + n <= self.next_index:
            return True  # already in the snapshot
        if first < self.next_index:
            rows, n = take(rows, self.next_index - first), first + n - self.next_index
        elif first > self.next_index:
            log.warning(
                "fan-out: stream %s rows %d-%d missing for a session",
                self.stream,
                self.next_index,
                first - 1,
            )
        self.next_index = first + n
        self.pending.append(self.project(rows))
        self.pending_rows += n
        self._bound()
        return self.schedule()

    def schedule(self) -> bool:
        """Have the session flush soon if there is something to send. False if it is gone."""
        return self.gate.schedule() if self.ready else self.gate.alive

    def release(self) -> None:
        """Start sending rows held back since :meth:`Fanout.register` (``held=True``)."""
        with self.gate.lock:
            self.held = False
            self.schedule()

    def take(self) -> Columns | None:
        """The pending rows as one batch (None if there are none); call under the lock."""
        if not self.pending:
            return None
        pending, self.pending, self.pending_rows = self.pending, [], 0
        self.flushes += 1
        return concat(pending)

    def project(self, rows: Columns) -> Columns:
        """``rows`` with exactly the source's columns, as ``cds.stream`` needs."""
        if list(rows) == self.columns:
            return rows
        n = len(rows["time"])
        return {c: rows[c] if c in rows else np.full(n, np.nan) for c in self.columns}

    def _bound(self) -> None:
        # A session that never flushes keeps at most what its plot would show.
        excess = self.pending_rows - self.rollover
        while excess > 0:
            head = self.pending[0]
            size = len(head["time"])
            if size <= excess:
                self.pending.pop(0)
                self.pending_rows -= size
                self.dropped += size
                excess -= size
            else:
                self.pending[0] = take(head, excess)
                self.pending_rows -= excess
                self.dropped += excess
                excess = 0

    def discard(self) -> None:
        self.pending, self.pending_rows = [], 0


def settle_bokeh_settings() -> None:
    """Fix Bokeh's ``simple_ids`` setting at its current value for this process.

    Bokeh names every binary buffer it sends with ``make_id()``, which looks the setting
    up in ``os.environ`` (twice) each time: a fifth of a Panel process's CPU at 200
    viewers. The value is the same as before, only no longer looked up per buffer.
    """
    from bokeh.settings import settings

    settings.simple_ids.set_value(settings.simple_ids())


class Fanout:
    """Routes the subscriber's new rows to the registered sinks of each stream."""

    def __init__(self, subscriber: Subscriber) -> None:
        settle_bokeh_settings()
        self.subscriber = subscriber
        self.lock = subscriber.lock
        self._sinks: dict[str, dict[Sink, None]] = defaultdict(dict)
        self._gates: weakref.WeakKeyDictionary[Document, Gate] = weakref.WeakKeyDictionary()
        self.registered = 0
        self.unregistered = 0
        self.flushed = 0  # flushes of sinks already gone
        subscriber.add_listener(self._on_rows)

    def open_session(self, doc: Document) -> None:
        """Hold ``doc``'s updates until its browser reports the document ready.

        Call while the session is built (before its browser can be ready). Documents
        never opened this way are taken as ready.
        """
        from bokeh.events import DocumentReady

        with self.lock:
            if doc in self._gates:
                return
            gate = self._gates[doc] = Gate(doc, ready=False, lock=self.lock)

        def ready(_event: Any) -> None:
            with self.lock:
                gate.ready = True
                for sink in list(gate.sinks):
                    sink.schedule()

        doc.on_event(DocumentReady, ready)

    def register(
        self,
        stream: str,
        doc: Document,
        cds: ColumnDataSource,
        rollover: int | None = None,
        held: bool = False,
        columns: list[str] | None = None,
    ) -> Sink:
        """Fill ``cds`` with the stream's window and send it every later row, gap- and repeat-free.

        Call from the session's own thread (while it is built, or in one of its callbacks):
        ``cds.data`` is set here. The sink goes when the session is destroyed or on
        :meth:`unregister`. With ``held``, rows wait until :meth:`Sink.release`: for a
        source added to a live document, whose browser must get the source before its rows.
        ``columns`` (default: all the stream has) are those ``cds`` holds.
        """
        with self.lock:
            snap = self.subscriber.snapshot(stream)
            gate = self._gates.get(doc)
            if gate is None:
                gate = self._gates[doc] = Gate(doc, ready=True, lock=self.lock)
            names = columns or list(snap.columns)
            sink = Sink(stream, cds, names, snap.end, rollover or snap.capacity, gate)
            sink.held = held
            # Same lock as the subscriber's ingest: no rows can fall between snapshot and sink.
            cds.data = sink.project(to_wire(snap.columns))
            self._sinks[stream][sink] = None
            self.registered += 1
        doc.on_session_destroyed(lambda _context: self.unregister(sink))
        return sink

    def unregister(self, sink: Sink) -> None:
        with self.lock:
            sinks = self._sinks.get(sink.stream)
            if sinks is not None and sink in sinks:
                del sinks[sink]
                self.unregistered += 1
                self.flushed += sink.flushes
                if not sinks:
                    del self._sinks[sink.stream]
            sink.discard()
            gate = sink.gate
            gate.sinks.discard(sink)
            if not gate.sinks:
                # A destroyed session never runs the flush it had asked for.
                gate.scheduled = False

    def _on_rows(self, stream: str, rows: Columns, first: int) -> None:
        # On the loop, under the subscriber's lock: merging and scheduling only.
        sinks = self._sinks.get(stream)
        if not sinks:
            return
        rows = to_wire(rows)
        dead = [sink for sink in list(sinks) if not sink.offer(rows, first)]
        for sink in dead:
            self.unregister(sink)

    def sinks(self, stream: str | None = None) -> int:
        with self.lock:
            if stream is not None:
                return len(self._sinks.get(stream, ()))
            return sum(len(s) for s in self._sinks.values())

    def info(self) -> dict[str, Any]:
        """Counts for tests and benchmarks: live sinks, pending flushes and rows, totals."""
        with self.lock:
            sinks = [s for group in self._sinks.values() for s in group]
            return {
                "sinks": len(sinks),
                "sessions": len(self._gates),
                "scheduled": sum(g.scheduled for g in self._gates.values()),
                "pending_rows": sum(s.pending_rows for s in sinks),
                "dropped_rows": sum(s.dropped for s in sinks),
                "flushes": self.flushed + sum(s.flushes for s in sinks),
                "messages": sum(g.flushes for g in self._gates.values()),
                "registered": self.registered,
                "unregistered": self.unregistered,
            }
