"""Each session's side of the fan-out: its sources, what its browser has, what it is sent.

A :class:`Gate` is one session; a :class:`Sink` one of its sources fed by a channel
(:mod:`headrace.app.live.channel`). The browser of a sink holds the channel's rows from
``offset`` on (``length`` of them) and up to ``next_index``, and the patches numbered up
to ``patched``: what a flush sends it is what it lacks, encoded once for every session
lacking the same (:mod:`headrace.app.live.fanout`).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from headrace.app.live.channel import Channel, Replaced
from headrace.app.live.internals import Encoded, encode, sockets

if TYPE_CHECKING:
    from asyncio import Future

    from bokeh.document import Document
    from bokeh.models import ColumnDataSource

log = logging.getLogger(__name__)

# What a sink's browser holds: (offset, length, next_index, patched), as on :class:`Sink`.
Holding = tuple[int, int, int, int]


class Owner(Protocol):
    """What a gate needs of its fan-out (:class:`headrace.app.live.fanout.Fanout`)."""

    lock: threading.RLock
    messages: int
    sent_bytes: int

    def wake(self) -> None: ...

    def wake_soon(self, *_args: Any) -> None: ...


class Sink:
    """One session's source for one stream, and the first row its browser does not have."""

    __slots__ = (
        "__weakref__",
        "_cds",
        "columns",
        "gate",
        "held",
        "length",
        "model",
        "next_index",
        "offset",
        "patched",
        "stream",
    )

    def __init__(
        self,
        stream: str,
        cds: ColumnDataSource,
        columns: list[str],
        channel: Channel | Replaced,
        gate: Gate,
    ) -> None:
        self.stream = stream
        # Weak: a sink must never be what keeps a finished session's document alive.
        self._cds = weakref.ref(cds)
        self.model = cds.id
        self.columns = columns
        self.next_index = channel.end
        # The browser's rows: its row 0 is channel row ``offset``; how many it holds;
        # the newest patch it has (revisions are patched at the browser's indices).
        self.offset, self.length = channel.start, len(channel.window.get("time", ()))
        self.patched = channel.patched
        self.gate = gate
        self.held = False
        gate.sinks.add(self)

    def sent(self, channel: Channel | Replaced) -> int:
        """The browser got the channel's rows after ``next_index``; return rows it skipped."""
        skipped = max(0, channel.start - self.next_index)
        if channel.rollover is not None:
            first = max(self.next_index, channel.start)
            grown = self.length + channel.end - first
            rolled = max(0, grown - channel.rollover)
            self.offset, self.length = first - self.length + rolled, grown - rolled
        self.next_index, self.patched = channel.end, channel.patched
        return skipped

    def holding(self) -> Holding:
        """What its browser holds: a copy of its source holds the same (``register(holding=)``)."""
        return (self.offset, self.length, self.next_index, self.patched)

    def source(self) -> ColumnDataSource | None:
        return self._cds()

    def release(self) -> None:
        """Start sending rows held back since the fan-out's ``register(held=True)``."""
        with self.gate.fanout.lock:
            self.held = False
        self.gate.fanout.wake()


class Gate:
    """One session: whether its browser can take rows, and what it was last sent."""

    __slots__ = (
        "__weakref__",
        "_doc",
        "draining",
        "fanout",
        "on_skip",
        "ready",
        "sinks",
        "skipped",
    )

    def __init__(
        self,
        doc: Document,
        fanout: Owner,
        ready: bool,
        on_skip: Callable[[int], None] | None = None,
    ) -> None:
        self._doc = weakref.ref(doc)
        self.fanout = fanout
        self.ready = ready
        self.on_skip = on_skip
        self.sinks: weakref.WeakSet[Sink] = weakref.WeakSet()
        self.draining: list[Future[None]] = []  # writes the kernel has not taken yet
        self.skipped = 0  # rows that rolled out of the window before this session got them

    @property
    def alive(self) -> bool:
        return self._doc() is not None

    def flush(self, channels: dict[str, Channel | Replaced], encoded: dict[tuple, Encoded]) -> bool:
        """Send this session what it is missing, if it can take it now. False once gone."""
        doc = self._doc()
        if doc is None:
            return False
        if not self.ready:
            return True
        due = sorted(  # in one order in every session: the key of the shared encoding
            (
                (sink, channels[sink.stream])
                for sink in self.sinks
                if not sink.held
                and (
                    sink.next_index < channels[sink.stream].end
                    or sink.patched < channels[sink.stream].patched
                )
            ),
            key=lambda due: due[0].model,
        )
        if not due:
            return True
        targets = sockets(doc)
        if targets is None:  # not a served session: Bokeh's own path
            self._stream_in_document(doc, due)
            return True
        if not targets or any(not f.done() for f in self.draining):
            return True  # falls behind; a later flush sends what it missed
        if not all(socket.writable() for socket in targets):
            return True
        key = tuple(
            (s.model, s.stream, s.next_index, tuple(s.columns), s.offset, s.patched) for s, _ in due
        )
        message = encoded.get(key)
        if message is None:
            message = encoded[key] = encode(*_events(due))
        try:
            written = [socket.write(message) for socket in targets]
        except (OSError, RuntimeError) as exc:  # closed under us (StreamClosedError is an OSError)
            log.info("fan-out: a session's websocket closed while writing: %s", exc)
            return True
        self.draining = [f for f in written if not f.done()]
        for future in self.draining:
            future.add_done_callback(self.fanout.wake_soon)
        self.fanout.messages += 1
        self.fanout.sent_bytes += message.size * len(targets)
        self._sent(due)
        return True

    def _sent(self, due: list[tuple[Sink, Channel | Replaced]]) -> None:
        skipped = 0
        for sink, channel in due:
            skipped += sink.sent(channel)
            cds = sink.source()
            if cds is not None:
                # What the browser has now; dict.__setitem__ since it already has it.
                data = cds.data
                for name, array in channel.window_as(sink.columns).items():
                    dict.__setitem__(data, name, array)
        if skipped:
            self.skipped += skipped
            if self.on_skip is not None:
                self.on_skip(skipped)

    def _stream_in_document(
        self, doc: Document, due: list[tuple[Sink, Channel | Replaced]]
    ) -> None:
        from panel.io.state import set_curdoc

        with set_curdoc(doc):
            for sink, channel in due:
                cds = sink.source()
                if cds is None:
                    pass
                elif channel.rollover is None:
                    cds.data = dict(channel.window_as(sink.columns))
                else:
                    patches = _patches(sink, channel)
                    if patches:
                        cds.patch(patches)
                    cds.stream(channel.since(sink.next_index, sink.columns), channel.rollover)
                sink.sent(channel)
        self.fanout.messages += 1


def _patches(sink: Sink, channel: Channel | Replaced) -> dict:
    """The patches of rows ``sink``'s browser holds that it has not had."""
    columns = [c for c in sink.columns if c != "time"]
    return channel.patches_for(sink.offset, sink.next_index, sink.patched, columns)


def _events(due: list[tuple[Sink, Channel | Replaced]]) -> tuple[list, list]:
    """What :func:`encode` sends ``due``: streamed rows (none if only patched), patches."""
    streams, patches = [], []
    for sink, channel in due:
        patch = _patches(sink, channel) if sink.patched < channel.patched else {}
        if patch:
            patches.append((sink.model, patch))
        if sink.next_index < channel.end:
            streams.append(
                (sink.model, channel.since(sink.next_index, sink.columns), channel.rollover)
            )
    return streams, patches
