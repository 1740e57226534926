"""Streamed rows as Bokeh protocol bytes, encoded once and written to many websockets.

Bokeh encodes a ``PATCH-DOC`` per session: for ``cds.stream`` the JSON names the
source by model id and the buffers are the rows. Sessions whose sources have the same
id (:mod:`headrace.app.live.clone` gives them that) and that are at the same row get the very same
message, so :func:`encode` builds it once (with Bokeh's own :class:`Serializer`, so the
wire format is Bokeh's) and :class:`Socket` writes its websocket frames in one write
per connection.

Everything here that reaches into Bokeh's server and Tornado's websocket is in this
module, the same attributes Panel's ``unlocked()`` uses: a session's connections
(``ServerSession._subscribed_connections``), a connection's handler, its write lock
(held while Bokeh is in the middle of sending a message: frames must not interleave)
and the Tornado stream under it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asyncio import Future

    from bokeh.document import Document

    from headrace.app.live.columns import Columns

# The release series the private attributes used here, in headrace.app.live.clone and
# Panel's ``unlocked()`` were checked against: tests/test_internals.py fails on any other
# version, naming the module to re-check (pyproject.toml caps bokeh and panel to match).
BOKEH_TESTED = "3.9"
PANEL_TESTED = "1.9"
TORNADO_TESTED = "6.6"

TEXT, BINARY = 0x1, 0x2


@dataclass(frozen=True)
class Encoded:
    """One ``PATCH-DOC`` message: its parts (text or binary) and their websocket frames."""

    parts: tuple[tuple[str | bytes, bool], ...]  # (payload, binary)
    frames: bytes

    @property
    def size(self) -> int:
        return len(self.frames)


def frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked, unfragmented websocket frame, as a server sends it (RFC 6455 5.2)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n <= 0xFFFF:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def encode(streams: Sequence[tuple[str, Columns, int]]) -> Encoded:
    """A ``PATCH-DOC`` streaming ``rows`` into each ``(source id, rows, rollover)``.

    The same message ``cds.stream(rows, rollover)`` on each source would make, events in
    the given order, without a document: the rows are only serialised.
    """
    from bokeh.core.serialization import Serializer
    from bokeh.protocol.messages.patch_doc import patch_doc

    serializer = Serializer()
    events = [
        {
            "kind": "ColumnsStreamed",
            "model": {"id": model},
            "attr": "data",
            "data": serializer.encode(rows),
            "rollover": rollover,
        }
        for model, rows, rollover in streams
    ]
    message = patch_doc(patch_doc.create_header(), {}, {"events": events})
    message.add_buffers(*serializer.buffers)
    parts: list[tuple[str | bytes, bool]] = [
        (message.header_json, False),
        (message.metadata_json, False),
        (message.content_json, False),
    ]
    for buffer in message.buffers:
        parts += [(json.dumps(buffer.ref), False), (buffer.to_bytes(), True)]
    frames = b"".join(
        frame(BINARY if binary else TEXT, p if isinstance(p, bytes) else p.encode())
        for p, binary in parts
    )
    return Encoded(tuple(parts), frames)


class Socket:
    """One websocket of a Bokeh session, written without Bokeh's per-session encoding."""

    __slots__ = ("handler",)

    def __init__(self, handler: Any) -> None:
        self.handler = handler  # bokeh.server.views.ws.WSHandler

    def writable(self) -> bool:
        """Open, and no Bokeh message half-written on it (its write lock is free)."""
        ws = getattr(self.handler, "ws_connection", None)
        if ws is None or ws.is_closing():
            return False
        lock = getattr(self.handler, "write_lock", None)
        return lock is None or lock._block._value > 0

    def write(self, message: Encoded) -> Future[None]:
        """Queue ``message`` on the connection; the future resolves once the kernel has it all.

        One write of the prepared frames, unless the connection compresses (then each part
        goes through Tornado, which keeps the compressor's state).
        """
        ws = self.handler.ws_connection
        if getattr(ws, "_compressor", None) is None:
            ws._wire_bytes_out += message.size
            future = ws.stream.write(message.frames)
        else:
            for payload, binary in message.parts:
                future = ws.write_message(payload, binary=binary)
        future.add_done_callback(_retrieve)
        return future


def _retrieve(future: Future[None]) -> None:
    # A connection closed before its data went out: the session is going away, nothing to do.
    if not future.cancelled():
        future.exception()


def sockets(doc: Document) -> list[Socket] | None:
    """The websockets of ``doc``'s server session; None if it is not a served session."""
    context = doc.session_context
    if context is None:
        return None
    session = getattr(context, "session", None)
    if session is None:
        return None if not hasattr(context, "session") else []
    return [Socket(c._socket) for c in session._subscribed_connections]
