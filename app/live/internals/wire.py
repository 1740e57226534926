"""Rows as Bokeh protocol bytes, encoded once, written to websockets (see the package)."""

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


def encode(
    streams: Sequence[tuple[str, Columns, int | None]],
    patches: Sequence[tuple[str, dict[str, list]]] = (),
) -> Encoded:
    """A ``PATCH-DOC`` streaming ``rows`` into each ``(source id, rows, rollover)``.

    The same message ``cds.stream(rows, rollover)`` on each source would make, events in
    the given order, without a document: the rows are only serialised. A rollover of
    None replaces the source's data with ``rows`` instead (``cds.data = rows``).
    ``patches`` (``(source id, {column: [(index, value)]})``, as ``cds.patch`` takes them)
    come first: their indices are those of the rows the browser has before the streams.
    """
    from bokeh.core.serialization import Serializer
    from bokeh.protocol.messages.patch_doc import patch_doc

    serializer = Serializer()
    events = [
        {
            "kind": "ColumnsPatched",
            "model": {"id": model},
            "attr": "data",
            "patches": serializer.encode(patch),
        }
        for model, patch in patches
    ]
    events += [
        (
            {
                "kind": "ColumnsStreamed",
                "model": {"id": model},
                "attr": "data",
                "data": serializer.encode(rows),
                "rollover": rollover,
            }
            if rollover is not None
            else {
                "kind": "ColumnDataChanged",
                "model": {"id": model},
                "attr": "data",
                "data": serializer.encode(rows),
                "cols": list(rows),
            }
        )
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
