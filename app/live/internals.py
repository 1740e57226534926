"""Everything headrace takes from Bokeh's, Panel's and Tornado's private internals.

Two things a session costs far less with, kept in this one module so that an upgrade of
those libraries has one place to re-check (``tests/test_internals.py`` fails, naming it,
on any release series but the ones below, which the lock file pins):

- **Copies of a rendered figure** (:func:`clone`, :class:`Copies`). Rendering a HoloViews
  element costs a session 35-125 ms (Bokeh's property machinery fills every default of
  ~50 models, in a live document with change events); a copy of a figure rendered once
  per process costs ~1.5 ms. A copy is what Bokeh's deserializer would build from the
  figure's JSON (new models, same ids, same property values) without the JSON, the
  validation or the defaults nobody set. Equal ids are safe because ids need only be
  unique within a document (each session has its own).
- **A document serialised without the defaults nobody set** (:func:`lean_serialisation`).
  Bokeh's ``query_properties_with_values`` computes and validates every declared
  property's value (a dashboard page: ~4,000 properties, ~500 set) and only then drops
  the defaults; a session's ``PULL-DOC`` reply was a fifth of its open. Looking at the
  set, unstable and themed values first gives the same JSON (``tests/test_internals.py``
  compares it byte for byte) at a sixth of the cost.
- **Sessions opened in turn** (:func:`gate_sessions`): Bokeh's ``WSHandler._async_open``
  (make the session, send the ACK) wrapped so that a process builds sessions one at a
  time between flushes (:mod:`headrace.app.live.admission`).
- **A scratch document that survives errors** (:func:`scratch_document`): Bokeh's
  ``patch_curdoc`` leaves its document patched when its body raises.
- **Streamed rows as protocol bytes, encoded once** (:func:`encode`, :class:`Socket`,
  :func:`sockets`). Bokeh encodes a ``PATCH-DOC`` per session: for ``cds.stream`` the
  JSON names the source by model id and the buffers are the rows. Sessions whose
  sources have the same id (copies) and that are at the same row get the very same
  message, so :func:`encode` builds it once with Bokeh's own ``Serializer`` and
  :class:`Socket` writes its websocket frames in one write per connection, through the
  attributes Panel's ``unlocked()`` uses: a session's connections
  (``ServerSession._subscribed_connections``), a connection's handler, its write lock
  (held while Bokeh is in the middle of sending a message: frames must not interleave)
  and the Tornado stream under it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from bokeh.core.has_props import HasProps
from bokeh.core.property.wrappers import PropertyValueContainer
from bokeh.model import Model

if TYPE_CHECKING:
    from asyncio import Future

    from bokeh.document import Document

    from headrace.app.live.columns import Columns

# The release series the private attributes used here were checked against:
# tests/test_internals.py fails on any other version (pyproject.toml caps bokeh and panel).
BOKEH_TESTED = "3.9"
PANEL_TESTED = "1.9"
TORNADO_TESTED = "6.6"

TEXT, BINARY = 0x1, 0x2
M = TypeVar("M", bound=Model)


# --- copies of rendered models ----------------------------------------------------------


def clone(root: M) -> M:
    """A copy of ``root`` and every model it references, detached from any document.

    Numpy arrays (a source's columns) are shared, not copied: replace a copy's data
    rather than change the arrays in place.
    """
    return Copies()(root)


class Copies:
    """Copies made together: a model referenced from several roots is copied once."""

    def __init__(self, renew: bool = False) -> None:
        # With renew, copies get new ids: for a document that holds copies already.
        self.renew = renew
        self.done: dict[str, Model] = {}  # by the original's id

    def __call__(self, m: M) -> M:
        return self.model(m)

    def model(self, m: Any) -> Any:
        new = self.done.get(m.id)
        if new is not None:
            return new
        cls = type(m)
        # How Bokeh's Deserializer makes a model of a given id (None: a new one).
        new = cls.__new__(cls, id=None if self.renew else m.id)
        self.done[m.id] = new
        super(HasProps, new).__init__()  # the callback managers and document ref, as HasProps does
        new._property_values = self._values(new, m._property_values)
        new._unstable_default_values = self._values(new, m._unstable_default_values)
        new._unstable_themed_values = dict(m._unstable_themed_values)
        new._initialized = True
        return new

    def _values(self, owner: Model, values: dict[str, Any]) -> dict[str, Any]:
        copied = {}
        for name, value in values.items():
            new = self.value(value)
            if isinstance(value, PropertyValueContainer):
                # Wrapped as a property setter does, so changes to the copy notify the copy.
                descriptor = owner.lookup(name)
                new = descriptor.property.wrap(new)
                new._register_owner(owner, descriptor)
            copied[name] = new
        return copied

    def value(self, v: Any) -> Any:
        if isinstance(v, Model):
            return self.model(v)
        if isinstance(v, dict):
            return {k: self.value(x) for k, x in v.items()}
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if isinstance(v, tuple):
            return tuple(self.value(x) for x in v)
        if isinstance(v, set):
            return {self.value(x) for x in v}
        return v  # immutable, or an array (shared)


def lean_serialisation() -> None:
    """Serialise models without computing the defaults that are left out anyway.

    Installed once per process (every page headrace serves does it); idempotent.
    """
    if getattr(HasProps.query_properties_with_values, "headrace", False):
        return
    original = HasProps.query_properties_with_values

    def query_properties_with_values(
        self: HasProps,
        query: Any,
        *,
        include_defaults: bool = True,
        include_undefined: bool = False,
    ) -> dict[str, Any]:
        if include_defaults or include_undefined:
            return original(
                self, query, include_defaults=include_defaults, include_undefined=include_undefined
            )
        # Bokeh's own selection (set, unstable defaults, themed), in its order.
        themed = self.themed_values() or {}
        unstable = self._unstable_default_values
        selected = self._property_values.keys() | unstable.keys() | themed.keys()
        result = {}
        for key in self.properties(_with_props=True):
            if key not in selected:
                continue
            descriptor = self.lookup(key)
            if not query(descriptor):
                continue
            value = descriptor.get_value(self)
            if key not in themed and key in unstable and isinstance(value, PropertyValueContainer):
                continue  # an unmodified container default, as Bokeh weeds out
            result[key] = value
        return result

    query_properties_with_values.headrace = True  # type: ignore[attr-defined]
    query_properties_with_values.original = original  # type: ignore[attr-defined]
    HasProps.query_properties_with_values = query_properties_with_values  # type: ignore[method-assign]


def gate_sessions(admit: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]) -> None:
    """Open every websocket session of this process's Bokeh server through ``admit``.

    ``admit(open)`` runs ``open()`` (Bokeh's own: make the session, send the ACK) when it
    decides; :class:`~headrace.app.live.admission.Refused` from it closes the websocket
    with code 1013 and its message. Installed once per process; later calls do nothing.
    """
    from bokeh.server.views.ws import WSHandler

    from headrace.app.live.admission import Refused

    if getattr(WSHandler._async_open, "headrace", False):
        return
    original = WSHandler._async_open

    async def _async_open(self: WSHandler, token: str) -> None:
        try:
            await admit(lambda: original(self, token))
        except Refused as refused:
            self.close(1013, str(refused))

    _async_open.headrace = True  # type: ignore[attr-defined]
    WSHandler._async_open = _async_open  # type: ignore[method-assign]


@contextmanager
def scratch_document() -> Iterator[Any]:
    """A new document as Bokeh's ``curdoc()`` inside, cleared after.

    Bokeh's ``patch_curdoc`` pops its document only when its body returns: a body that
    raises (a view HoloViews cannot render) would leave a dead document as every later
    ``curdoc()`` of the process. This restores Bokeh's list of patched documents always.
    """
    from bokeh.document import Document
    from bokeh.io import doc as bokeh_doc

    depth = len(bokeh_doc._PATCHED_CURDOCS)
    document = Document()
    try:
        with bokeh_doc.patch_curdoc(document):
            yield document
    finally:
        del bokeh_doc._PATCHED_CURDOCS[depth:]
        document.clear()


# --- rows as protocol bytes, written to websockets ----------------------------------


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


def encode(streams: Sequence[tuple[str, Columns, int | None]]) -> Encoded:
    """A ``PATCH-DOC`` streaming ``rows`` into each ``(source id, rows, rollover)``.

    The same message ``cds.stream(rows, rollover)`` on each source would make, events in
    the given order, without a document: the rows are only serialised. A rollover of
    None replaces the source's data with ``rows`` instead (``cds.data = rows``).
    """
    from bokeh.core.serialization import Serializer
    from bokeh.protocol.messages.patch_doc import patch_doc

    serializer = Serializer()
    events = [
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
