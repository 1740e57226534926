"""The wire format a viewer speaks: client websocket frames and Bokeh protocol messages.

A Bokeh message is a sequence of websocket text frames: header, metadata, content, then
one (buffer header, binary payload) pair per buffer. Clients must mask their frames
(RFC 6455); the server never compresses (we offer no extension) and never masks.
"""

from __future__ import annotations

import json
import os
import re
import struct

import numpy as np

# The session token Bokeh embeds in the page of GET /<app>.
TOKEN = re.compile(rb'"token"\s*:\s*"([^"]+)"')
# In the content of a PATCH-DOC that streams rows: the only messages a viewer decodes.
STREAMED = b'"ColumnsStreamed"'


def frame(opcode: int, payload: bytes) -> bytes:
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


def bokeh_message(msgtype: str, content: str, num: int) -> list[bytes]:
    header = json.dumps({"msgid": f"lg{num}", "msgtype": msgtype})
    return [header.encode(), b"{}", content.encode()]


DOCUMENT_READY = json.dumps(
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
