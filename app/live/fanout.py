"""Fan-out of new rows from the process's subscriber to every session: one encode per tick.

Per stream the fan-out keeps a :class:`Channel`: the rows every in-sync session's
source holds (the newest ``rollover`` rows, as Bokeh sends them). Rows arriving from the
subscriber wait :data:`COALESCE_MS` for the other streams of the tick, then one flush
for the whole process

1. appends them to each channel's window (and replaces the rows revised since: a window
   that emits early publishes a changed period again, with the same time),
2. groups the sessions by what they need (their sources' ids and first missing row per
   stream): sessions in sync with copies of the same plots (``internals.clone``) all need
   the same, so the ``PATCH-DOC`` is encoded once (:func:`headrace.app.live.internals.encode`),
3. writes those bytes to each session's websocket, one write per connection, and points
   each server-side source at the channel's window, so the session's document holds
   what its browser has (the arrays are shared, not copied).

A session that cannot take a write now (its browser has not loaded the document yet, a
Bokeh message is half-written on its socket, or the kernel has not taken its previous
write: a slow reader) is skipped and falls behind; the next flush sends it the rows since
its first missing one, with a message of its own, or shared with others as far behind.
So queued data per session is bounded by one message, and nobody waits for anybody. A
session that fell behind by more than the window gets the whole window (its browser's
rollover drops the rest) and is told through :meth:`Fanout.open_session`'s ``on_skip``.

A revised row reaches a session as a ``ColumnsPatched`` at its browser's index of that
row, in the same message as the rows that follow it, or, if the browser has not had
the row yet, with the new value in the rows it gets.

Documents that are not served sessions (tests, notebooks) get the same rows through
``cds.patch`` and ``cds.stream``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from headrace.app.live.channel import Channel, Replaced
from headrace.app.live.columns import Columns, to_wire
from headrace.app.live.gates import Gate, Holding, Sink
from headrace.app.live.internals import Encoded
from headrace.app.live.subscriber import Subscriber

if TYPE_CHECKING:
    from bokeh.document import Document
    from bokeh.models import ColumnDataSource

log = logging.getLogger(__name__)

# How long a flush waits for rows of the other streams: streams that tick at the same
# instants (see headrace.etl.loop.runner) arrive within a few ms of each other.
COALESCE_MS = 25


def settle_bokeh_settings() -> None:
    """Fix Bokeh's ``simple_ids`` setting at its current value for this process.

    Bokeh names every binary buffer it sends with ``make_id()``, which looks the setting
    up in ``os.environ`` (twice) each time: a fifth of a Panel process's CPU at 200
    viewers. The value is the same as before, only no longer looked up per buffer.
    """
    from bokeh.settings import settings

    settings.simple_ids.set_value(settings.simple_ids())


class Fanout:
    """Routes the subscriber's new rows to every session, encoding each message once."""

    def __init__(self, subscriber: Subscriber) -> None:
        settle_bokeh_settings()
        self.subscriber = subscriber
        self.lock: threading.RLock = subscriber.lock
        self._channels: dict[str, Channel | Replaced] = {}
        # Gates held strongly, found by document weakly: a gone document's gate is seen
        # gone by the next flush, which lets go of its sinks too.
        self._gates: dict[Gate, None] = {}
        self._by_doc: weakref.WeakKeyDictionary[Document, Gate] = weakref.WeakKeyDictionary()
        self._sinks: dict[Sink, None] = {}
        self._timer: asyncio.TimerHandle | None = None
        self.registered = self.unregistered = 0
        self.opened = 0  # sessions whose browser reported the document ready
        self.flushes = self.encodes = self.messages = self.sent_bytes = 0
        self.flush_seconds = 0.0
        # Told after each flush: its seconds and each moved stream's lag (telemetry, admission).
        self.observers: list[Callable[[float, list[float]], None]] = []
        subscriber.add_listener(self._on_rows)
        subscriber.add_reviser(self._on_revised)

    def open_session(self, doc: Document, on_skip: Callable[[int], None] | None = None) -> None:
        """Hold ``doc``'s rows until its browser reports the document ready.

        Call while the session is built (before its browser can be ready). Documents never
        opened this way are taken as ready. ``on_skip(rows)`` is called (on the server's
        loop) when the session fell so far behind that ``rows`` rows never reached it.
        """
        from bokeh.events import DocumentReady

        with self.lock:
            known = self._by_doc.get(doc)
            gate = known or self._gate(doc, ready=False)
            if on_skip is not None:
                gate.on_skip = on_skip
            if known is not None:
                return

        def ready(_event: Any) -> None:
            with self.lock:
                gate.ready = True
                self.opened += 1
            self.wake()

        doc.on_event(DocumentReady, ready)

    def register(
        self,
        stream: str,
        doc: Document,
        cds: ColumnDataSource,
        held: bool = False,
        columns: list[str] | None = None,
        holding: Holding | None = None,
    ) -> Sink:
        """Fill ``cds`` with the stream's window and send it every later row, gap- and repeat-free.

        Call from the session's own thread (while it is built, or in one of its callbacks):
        ``cds.data`` is set here. The sink goes when the session is destroyed or on
        :meth:`unregister`. With ``held``, rows wait until :meth:`Sink.release`: for a
        source added to a live document, whose browser must get the source before its rows.
        ``columns`` (default: all the stream has) are those ``cds`` holds. ``holding``
        (another sink's :meth:`Sink.holding`): ``cds`` is a copy of that sink's source and
        holds its rows, so it is left as it is and sent the rows since.
        """
        with self.lock:
            channel = self._channel(stream)
            gate = self._by_doc.get(doc) or self._gate(doc, ready=True)
            names = columns or [n for n, a in channel.window.items() if a.dtype != object]
            sink = Sink(stream, cds, names, channel, gate)
            sink.held = held
            if holding is not None:
                sink.offset, sink.length, sink.next_index, sink.patched = holding
            else:
                # Under the subscriber's lock: no rows can fall between the window and the sink.
                cds.data = channel.window_as(names)
            self._sinks[sink] = None
            self.registered += 1
        doc.on_session_destroyed(lambda _context: self.unregister(sink))
        return sink

    def _gate(self, doc: Document, ready: bool) -> Gate:
        gate = self._by_doc[doc] = Gate(doc, self, ready)
        self._gates[gate] = None
        return gate

    def add_feed(self, channel: Channel | Replaced) -> None:
        """Route ``channel`` (a live view's glyph source, named ``channel.stream``) too.

        Its owner adds rows (``channel.add``, ``channel.replace``) under :attr:`lock` and
        calls :meth:`wake_soon`; sessions :meth:`register` sources to it by that name.
        """
        with self.lock:
            self._channels[channel.stream] = channel

    def session_ready(self, doc: Document) -> bool:
        """Whether ``doc``'s browser has loaded it (a source added now must be ``held``)."""
        with self.lock:
            gate = self._by_doc.get(doc)
            return gate is None or gate.ready

    def _channel(self, stream: str) -> Channel | Replaced:
        channel = self._channels.get(stream)
        if channel is None:
            snap = self.subscriber.snapshot(stream)
            channel = Channel(stream, to_wire(snap.columns), snap.end, snap.capacity)
            self._channels[stream] = channel
        return channel

    def unregister(self, sink: Sink) -> None:
        with self.lock:
            if sink in self._sinks:
                del self._sinks[sink]
                self.unregistered += 1
            sink.gate.sinks.discard(sink)

    def _on_rows(self, stream: str, rows: Columns, first: int) -> None:
        # On the loop, under the subscriber's lock: queue, and have one flush soon.
        channel = self._channels.get(stream)
        if channel is not None and channel.add(to_wire(rows), first):
            self.wake_soon()

    def _on_revised(self, stream: str, indices: Any, rows: Columns) -> None:
        # Revised rows (a window that emits early): patched in the channel, sent at the flush.
        channel = self._channels.get(stream)
        if isinstance(channel, Channel):
            channel.patch(indices, to_wire(rows))
            self.wake_soon()

    def wake_soon(self, *_args: Any) -> None:
        """Flush in :data:`COALESCE_MS` (once, however often asked), on the server's loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (tests, a thread): flush now
            self.flush()
            return
        with self.lock:
            if self._timer is None:
                self._timer = loop.call_later(COALESCE_MS / 1000, self.flush)

    def wake(self) -> None:
        """Flush on the loop's next turn: a session got ready or a held source was released."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Advance every channel and send every session what it is missing."""
        started = time.perf_counter()
        with self.lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            moved = [c for c in self._channels.values() if c.advance()]
            encoded: dict[tuple, Encoded] = {}
            for gate in list(self._gates):
                if not gate.flush(self._channels, encoded):
                    del self._gates[gate]
                    for sink in list(gate.sinks):
                        self.unregister(sink)
            self.encodes += len(encoded)
            self.flushes += 1
        took = time.perf_counter() - started
        self.flush_seconds += took
        now_ms = time.time() * 1000
        lags = [(now_ms - c.newest()) / 1000 for c in moved if c.newest()]
        for observe in self.observers:
            observe(took, lags)

    def sinks(self, stream: str | None = None) -> int:
        with self.lock:
            return sum(1 for s in self._sinks if stream is None or s.stream == stream)

    def sessions(self) -> int:
        """Sessions registered now (cheap: for every flush's observers)."""
        return len(self._gates)

    def info(self) -> dict[str, Any]:
        """Counts for tests, benchmarks and metrics."""
        with self.lock:
            gates = list(self._gates)
            return {
                "sinks": len(self._sinks),
                "sessions": sum(g.alive for g in gates),
                "behind": len(  # sessions, not sinks: a session has a sink per stream
                    {
                        s.gate
                        for s in self._sinks
                        if s.gate.ready and s.next_index < self._channels[s.stream].end
                    }
                ),
                "skipped_rows": sum(g.skipped for g in gates),
                "flushes": self.flushes,
                "encodes": self.encodes,
                "messages": self.messages,
                "sent_bytes": self.sent_bytes,
                "flush_seconds": self.flush_seconds,
                "registered": self.registered,
                "opened": self.opened,
                "unregistered": self.unregistered,
            }
