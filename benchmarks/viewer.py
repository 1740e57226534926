"""One viewer: a Bokeh session over a raw websocket that decodes only streamed rows.

:func:`open_viewer` does what a browser does on the wire, and nothing more: ``GET`` the
app page (the server builds the session's document) and take the session token from it,
open ``<app>/ws`` with subprotocols ``bokeh, <token>``, then :class:`Viewer` sends
``PULL-DOC-REQ`` after the server's ``ACK`` and a ``document_ready`` event once the
document arrived, answers pings, and decodes only ``PATCH-DOC`` messages that carry
``ColumnsStreamed`` events into :class:`Rows`.

The client is a minimal ``asyncio.Protocol`` (frames parsed from the receive buffer in a
callback, no coroutine per message) so that 200 viewers stay cheap.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np

from .wsframes import DOCUMENT_READY, STREAMED, TOKEN, bokeh_message, frame


@dataclass
class Rows:
    """What one viewer received, per Bokeh model (ColumnDataSource) id."""

    times: dict[str, list[np.ndarray]] = field(default_factory=dict)
    values: dict[str, list[np.ndarray]] = field(default_factory=dict)
    arrivals: dict[str, list[float]] = field(default_factory=dict)
    messages: int = 0  # every Bokeh message, of any kind
    streamed: int = 0  # ColumnsStreamed events
    bytes: int = 0
    pulled: int = 0  # bytes of the PULL-DOC-REPLY: the initial document, backfill included


class Viewer(asyncio.Protocol):
    """One Bokeh session over a raw websocket."""

    def __init__(self, host: str, port: int, path: str, token: str) -> None:
        self.host, self.port, self.path, self.token = host, port, path, token
        self.rows = Rows()
        loop = asyncio.get_running_loop()
        self.opened = loop.create_future()
        self.closed = loop.create_future()
        self.first = loop.create_future()  # the wall-clock time of the first live row
        # When each step of opening completed (wall clock): upgraded, ack, doc (the
        # PULL-DOC reply complete), first (a live row). A joiner's figures come from them.
        self.marks: dict[str, float] = {}
        self.open_time = 0.0
        self.error: str | None = None
        self.close_code: int | None = None  # the server's, if it closed the websocket
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._upgraded = False
        self._frag: list[bytes] = []  # continuation frames of a fragmented message
        self._sent = 0
        # The Bokeh message being assembled: header, metadata, content, then buffer pairs.
        self._part = 0
        self._msgtype = ""
        self._buffers_left = 0
        self._keep: bytes | None = None  # content of a ColumnsStreamed patch, else None
        self._bufs: dict[str, bytes] = {}
        self._buf_id: str | None = None
        self._ready_sent = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: bokeh, {self.token}\r\n\r\n"
        )
        transport.write(request.encode())  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed before upgrade: {exc}"))
        if not self.closed.done():
            self.closed.set_result(exc)

    def data_received(self, data: bytes) -> None:
        now = time.time()  # one clock read per receive: the arrival time of what completes
        self.rows.bytes += len(data)
        self._buf += data
        if not self._upgraded:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self._buf[: self._buf.find(b"\r\n")])
            if b" 101 " not in status:
                self.error = status.decode(errors="replace")
                self.opened.set_exception(ConnectionError(self.error))
                self._transport.close()
                return
            del self._buf[: end + 4]
            self._upgraded = True
            self.open_time = self.marks["upgraded"] = now
            self.opened.set_result(now)
        self._parse_frames(now)

    # -- websocket frames

    def _parse_frames(self, now: float) -> None:
        buf, pos, n = self._buf, 0, len(self._buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if n - pos < 4:
                    break
                length, head = struct.unpack_from("!H", buf, pos + 2)[0], 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, head = struct.unpack_from("!Q", buf, pos + 2)[0], 10
            if n - pos < head + length:
                break
            payload = bytes(buf[pos + head : pos + head + length])
            pos += head + length
            opcode = b0 & 0x0F
            if opcode == 0x9:  # ping
                self._write(frame(0xA, payload))
            elif opcode == 0x8:  # close
                if len(payload) >= 2:
                    self.close_code = struct.unpack_from("!H", payload)[0]
                self._write(frame(0x8, payload[:2]))
                self._transport.close()
            elif opcode in (0x0, 0x1, 0x2):
                if not b0 & 0x80:  # fragmented (tornado never does this; be safe)
                    self._frag.append(payload)
                    continue
                if self._frag:
                    payload = b"".join([*self._frag, payload])
                    self._frag = []
                self._on_fragment(payload, now)
        del buf[:pos]

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _send_bokeh(self, msgtype: str, content: str) -> None:
        self._sent += 1
        for part in bokeh_message(msgtype, content, self._sent):
            self._write(frame(0x1, part))

    # -- Bokeh messages: header, metadata, content, then (buffer header, payload) pairs

    def _on_fragment(self, payload: bytes, now: float) -> None:
        part = self._part
        if part >= 2 and self._msgtype == "PULL-DOC-REPLY":
            self.rows.pulled += len(payload)
        if part == 0:
            header = json.loads(payload)
            self._msgtype = header.get("msgtype", "")
            self._buffers_left = header.get("num_buffers", 0)
            self._part = 1
        elif part == 1:
            self._part = 2
        elif part == 2:
            is_patch = self._msgtype == "PATCH-DOC" and STREAMED in payload
            self._keep = payload if is_patch else None
            self._bufs = {}
            self._part = 3
            if not self._buffers_left:
                self._complete(now)
        elif self._buf_id is None:
            self._buf_id = json.loads(payload)["id"] if self._keep is not None else ""
        else:
            if self._keep is not None:
                self._bufs[self._buf_id] = payload
            self._buf_id = None
            self._buffers_left -= 1
            if not self._buffers_left:
                self._complete(now)

    def _complete(self, now: float) -> None:
        self.rows.messages += 1
        if self._keep is not None:
            self._decode(self._keep, now)
        elif self._msgtype == "ACK":
            self.marks["ack"] = now
            # The server reads our messages only after its ACK; then do what BokehJS does.
            self._send_bokeh("PULL-DOC-REQ", "{}")
        elif self._msgtype == "PULL-DOC-REPLY" and not self._ready_sent:
            # BokehJS renders the document, then announces it ready.
            self._ready_sent = True
            self.marks["doc"] = now
            self._send_bokeh("PATCH-DOC", DOCUMENT_READY)
        self._part, self._keep, self._bufs = 0, None, {}

    def _decode(self, content: bytes, now: float) -> None:
        for event in json.loads(content).get("events", ()):
            if event.get("kind") != "ColumnsStreamed":
                continue
            cols = dict(event["data"].get("entries", ()))
            if "time" not in cols:
                continue
            self.rows.streamed += 1
            model = event["model"]["id"]
            times = self._array(cols["time"])
            values = self._array(cols["value"]) if "value" in cols else np.full(len(times), np.nan)
            r = self.rows
            r.times.setdefault(model, []).append(times)
            r.values.setdefault(model, []).append(values)
            r.arrivals.setdefault(model, []).append(now)
            if not self.first.done():
                self.marks["first"] = now
                self.first.set_result(now)

    def _array(self, col) -> np.ndarray:
        if isinstance(col, list):  # lists (and object arrays) travel as JSON
            return np.asarray(col, dtype=float)
        if col.get("type") == "typed_array":
            data, dtype = col["array"], col["dtype"]
        else:
            data, dtype = col["array"], col.get("dtype", "float64")
        if isinstance(data, list):
            return np.asarray(data, dtype=float)
        raw = data["data"]
        buf = self._bufs[raw["id"]] if isinstance(raw, dict) else base64.b64decode(raw)
        return np.frombuffer(buf, dtype=dtype).astype(float, copy=False)

    async def first_row(self, started: float, timeout: float = 30.0) -> float | None:
        """Seconds from ``started`` (wall clock) to the first live row; None if none came."""
        # Woken by the first row itself: a hundred joiners polling would load the machine.
        try:
            first = await asyncio.wait_for(
                asyncio.shield(self.first), started + timeout - time.time()
            )
        except TimeoutError:
            return None
        return first - started

    @property
    def refused(self) -> bool:
        """Closed by the server with 1013 ("try again later") before its session opened."""
        return self.close_code == 1013 and "ack" not in self.marks

    def stall(self, stalled: bool = True) -> None:
        """Stop (or resume) reading, as a browser on a stalled connection does."""
        if self._transport is not None:
            if stalled:
                self._transport.pause_reading()
            else:
                self._transport.resume_reading()

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._write(frame(0x8, struct.pack("!H", 1000)))
            self._transport.close()


async def get_token(host: str, port: int, path: str, timeout: float) -> str:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        body = await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.close()
    found = TOKEN.search(body)
    if not found:
        raise ConnectionError(f"no session token in GET {path}: {body[:200]!r}")
    return found.group(1).decode()


async def open_viewer(url: str, timeout: float = 60.0, rcvbuf: int | None = None) -> Viewer:
    """A viewer of the app at ``url``, once its websocket is open.

    ``rcvbuf`` sets the socket's receive buffer (bytes): small, with
    :meth:`Viewer.stall`, for a viewer whose TCP window fills up.
    """
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path
    query = f"?{parts.query}" if parts.query else ""  # the page's arguments ride in the token
    token = await get_token(host, port, path + query, timeout)
    got = time.time()
    loop = asyncio.get_running_loop()
    sock = None
    if rcvbuf is not None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
    _, viewer = await asyncio.wait_for(
        loop.create_connection(
            lambda: Viewer(host, port, path.rstrip("/") + "/ws", token),
            *((None, None) if sock else (host, port)),
            sock=sock,
        ),
        timeout,
    )
    viewer.marks["got"] = got
    await asyncio.wait_for(viewer.opened, timeout)
    return viewer
