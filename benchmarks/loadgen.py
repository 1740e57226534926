"""Many Bokeh viewers in one process: raw websocket sessions that decode only streamed rows.

Each viewer does what a browser does on the wire, and nothing more:

1. ``GET /dashboard`` (the server builds the session's document) and take the session
   token Bokeh embeds in the page;
2. open ``ws://host:port/dashboard/ws`` with subprotocols ``bokeh, <token>``;
3. send ``PULL-DOC-REQ`` (BokehJS does; the server serialises the whole document for it)
   and, once the reply is in, a ``document_ready`` event (Panel starts a session's
   periodic callbacks and ``onload`` work only then);
4. keep the connection open, answer pings, and decode only ``PATCH-DOC`` messages that
   carry ``ColumnsStreamed`` events: the ``time`` and ``value`` columns (numpy buffers)
   with the wall-clock arrival time. Everything else (the pulled document included) is
   skipped without parsing.

The websocket client is a minimal ``asyncio.Protocol`` (frames parsed from the receive
buffer in a callback, no coroutine per message) so that 200 viewers stay cheap. The
server never compresses (we offer no extension) and never masks.

Run as ``python -m benchmarks.loadgen --url http://127.0.0.1:5006/dashboard --viewers 20
--settle 3 --duration 20 --grace 3 --out rows.npz``. It prints JSON lines on stdout:
``connected``, ``window`` (t0 and t1 wall-clock seconds of the measurement window) and
``done``; rows go to the ``.npz`` file (see :func:`save`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import struct
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np

_TOKEN = re.compile(rb'"token"\s*:\s*"([^"]+)"')
_STREAMED = b'"ColumnsStreamed"'


def _frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455: clients must mask)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = os.urandom(4)
    masked = np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)
    return head + mask + masked.tobytes()


def _bokeh_message(msgtype: str, content: str, num: int) -> list[bytes]:
    header = json.dumps({"msgid": f"lg{num}", "msgtype": msgtype})
    return [header.encode(), b"{}", content.encode()]


_DOCUMENT_READY = json.dumps(
    {
        "events": [
            {
                "kind": "MessageSent",
                "msg_type": "bokeh_event",
                "msg_data": {"type": "event", "name": "document_ready", "values": {"type": "map"}},
            }
        ]
    },
    separators=(",", ":"),
)


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
        self.opened = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.open_time = 0.0
        self.error: str | None = None
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
            self.open_time = now
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
                self._write(_frame(0xA, payload))
            elif opcode == 0x8:  # close
                self._write(_frame(0x8, payload[:2]))
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
        for part in _bokeh_message(msgtype, content, self._sent):
            self._write(_frame(0x1, part))

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
            is_patch = self._msgtype == "PATCH-DOC" and _STREAMED in payload
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
            # The server reads our messages only after its ACK; then do what BokehJS does.
            self._send_bokeh("PULL-DOC-REQ", "{}")
        elif self._msgtype == "PULL-DOC-REPLY" and not self._ready_sent:
            # BokehJS renders the document, then announces it ready.
            self._ready_sent = True
            self._send_bokeh("PATCH-DOC", _DOCUMENT_READY)
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

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._write(_frame(0x8, struct.pack("!H", 1000)))
            self._transport.close()


async def _get_token(host: str, port: int, path: str, timeout: float) -> str:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        body = await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.close()
    found = _TOKEN.search(body)
    if not found:
        raise ConnectionError(f"no session token in GET {path}: {body[:200]!r}")
    return found.group(1).decode()


async def open_viewer(url: str, timeout: float = 60.0) -> Viewer:
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path
    token = await _get_token(host, port, path, timeout)
    loop = asyncio.get_running_loop()
    _, viewer = await asyncio.wait_for(
        loop.create_connection(
            lambda: Viewer(host, port, path.rstrip("/") + "/ws", token), host, port
        ),
        timeout,
    )
    await asyncio.wait_for(viewer.opened, timeout)
    return viewer


def save(path: str, viewers: list[Viewer | None], meta: dict) -> None:
    """``.npz`` with, per viewer ``v`` and model ``m``: ``v{v}:{m}:time|value|arrival``.

    ``arrival`` has one entry per row (the arrival of the message that carried it).
    """
    arrays: dict[str, np.ndarray] = {}
    for i, v in enumerate(viewers):
        if v is None:
            continue
        for model, chunks in v.rows.times.items():
            arrays[f"v{i}:{model}:time"] = np.concatenate(chunks)
            arrays[f"v{i}:{model}:value"] = np.concatenate(v.rows.values[model])
            arrays[f"v{i}:{model}:arrival"] = np.repeat(
                np.asarray(v.rows.arrivals[model]), [len(c) for c in chunks]
            )
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)


def _say(**event: object) -> None:
    print(json.dumps(event), flush=True)


async def run(args: argparse.Namespace) -> None:
    viewers: list[Viewer | None] = [None] * args.viewers
    errors: list[str] = []
    sem = asyncio.Semaphore(args.concurrency)

    async def one(i: int) -> None:
        async with sem:
            try:
                viewers[i] = await open_viewer(args.url)
            except Exception as exc:  # counted and reported, the others go on
                errors.append(f"{type(exc).__name__}: {exc}"[:200])

    t_connect = time.time()
    await asyncio.gather(*(one(i) for i in range(args.viewers)))
    ok = [v for v in viewers if v is not None]
    _say(
        event="connected",
        viewers=len(ok),
        failed=len(errors),
        errors=errors[:5],
        seconds=round(time.time() - t_connect, 2),
        # By viewer index (None if it failed), to find which server process holds it.
        local_ports=[v._transport.get_extra_info("sockname")[1] if v else None for v in viewers],
    )
    await asyncio.sleep(args.settle)
    t0 = time.time()
    _say(event="window_start", t=t0)
    await asyncio.sleep(args.duration)
    t1 = time.time()
    _say(event="window_end", t=t1)
    await asyncio.sleep(args.grace)
    dropped = sum(1 for v in ok if v.closed.done())
    for v in ok:
        v.close()
    meta = dict(
        t_connect=t_connect,
        t0=t0,
        t1=t1,
        viewers=args.viewers,
        connected=len(ok),
        failed=len(errors),
        errors=errors[:5],
        dropped=dropped,
        open_times=[v.open_time if v else None for v in viewers],
        messages=sum(v.rows.messages for v in ok),
        streamed=sum(v.rows.streamed for v in ok),
        bytes=sum(v.rows.bytes for v in ok),
        pulled=[v.rows.pulled for v in ok],
    )
    save(args.out, viewers, meta)
    await asyncio.sleep(0.2)  # let the close frames go out
    _say(event="done", dropped=dropped)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--viewers", type=int, default=1)
    p.add_argument("--settle", type=float, default=3.0, help="seconds between connect and window")
    p.add_argument("--duration", type=float, default=20.0, help="measurement window, seconds")
    p.add_argument("--grace", type=float, default=3.0, help="seconds to wait for late rows")
    p.add_argument("--concurrency", type=int, default=6, help="viewers connecting at once")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    # The viewers stand for browsers on other machines: on a small shared machine they
    # should not queue behind the servers they measure (needs root; harmless without).
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, -10)
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
