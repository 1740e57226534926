"""The published contract between the tick loop (``etl``) and its readers (``app``): frames.

This package is all that both sides import, and the wire format is all written in it:
frames on the cluster here, frames kept in a SQL database in :mod:`headrace.etl.contract.history`.

On the cluster (the scheduler), per stream ``s`` (a name matching ``[a-z0-9_-]+``):

- dataset ``headrace.s.<seq>``: the frame published under sequence number ``seq``.
  The loop publishes the DataFrame itself (a tick's rows: small), so the scheduler
  holds it and a reader gets it in one round trip; a Future (data left in worker
  memory) is accepted too, for large frames. A frame of numeric and time columns is
  pickled as its columns' bytes (``headrace.etl.pandas_internals.Compact``): it unpickles
  as the same ``DataFrame`` wherever headrace can be imported. Only the last ``ring`` frames are
  kept; older ones are unpublished.
- metadata ``["headrace", "streams", s]``: a :class:`Head` as a dict, the newest
  sequence number, the ring size, when it was published and the stream's tick interval.
- metadata ``["headrace", "health", s]``: the loop's health record of the stream, a
  :class:`~headrace.etl.contract.health.HealthRecord` as a dict.
- metadata ``["headrace", "loops", holder]``: each loop's role (active, or waiting to
  take over), a :class:`~headrace.etl.contract.loops.LoopRecord` as a dict; and
  ``["headrace", "fence", lineage]``: the newest epoch of a state's lease that published
  (see :mod:`headrace.etl.contract.batch`).
- topic ``headrace.frames``: one msgpack-able dict per frame, an :class:`Event`
  (``stream, seq, rows, first, last, published, v``), or (``v`` 2) one per tick of many
  streams, ``{"v": 2, "published": t, "frames": [[stream, seq, rows, first, last], ...]}``,
  which readers take as one :class:`Event` per frame (:func:`events_of`).

``v`` is the schema version of the writer (absent: 1). A reader refuses a message of a
version it does not know with :class:`SchemaVersionError` (see
:mod:`headrace.etl.contract.version`); readers of every stream (:func:`heads`,
:func:`health_records`, the subscriptions) log the refusal once per stream and go on
with the other streams.

Sequence numbers start at 1, grow by exactly 1 per frame and continue across
restarts of the loop. A reader that sees ``n + 2`` after ``n`` fetches ``n + 1``;
a frame re-published under a sequence number it has seen is the same frame and
must be ignored. Datasets, metadata and subscriptions live on the scheduler and
do not survive its restart: readers re-read the head, subscribe again and fill gaps.

Frames: a ``time`` column (datetime64[ns, UTC]) sorted ascending, a ``value``
column (float64), optional extra columns (``count`` for aggregating
transforms, ``key`` when one file carries several series); only rows not
published before. :mod:`headrace.etl.contract.frames` defines and checks them.

:class:`FrameStream` is the one way to use all of this, in the style of
``distributed.Variable``: methods return their result with a synchronous client and a
coroutine with an asynchronous one.
"""

from __future__ import annotations

import os
import re
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from distributed import Future

from headrace.etl.contract.health import HealthRecord
from headrace.etl.contract.messages import Event, Head, Span, events_of
from headrace.etl.contract.version import SCHEMA_VERSION as SCHEMA_VERSION
from headrace.etl.contract.version import SUPPORTED_VERSIONS as SUPPORTED_VERSIONS
from headrace.etl.contract.version import SchemaVersionError, log_refused

if TYPE_CHECKING:
    import pandas as pd
    from distributed import Client

TOPIC = "headrace.frames"
PREFIX = "headrace"
DEFAULT_RING = 64
# Where the embedded cluster listens, and so where readers look when told nothing.
DEFAULT_SCHEDULER = "tcp://127.0.0.1:8786"

_NAME = re.compile(r"^[a-z0-9_-]+$")

T = TypeVar("T")
# What a method of :class:`FrameStream` returns: the value, or with an asynchronous
# client a coroutine of it (as distributed's own primitives do).
SyncOrAsync: TypeAlias = T | Awaitable[T]


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid stream name, else raise ``ValueError``."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"invalid stream name {name!r}: use lower-case letters, digits, '_' or '-'"
        )
    return name


def configured_scheduler(address: str | None = None) -> str | None:
    """``address``, else ``DASK_SCHEDULER_ADDRESS`` / dask's ``scheduler-address``, else None.

    None means "nothing configured": the loop then starts an embedded cluster on
    :data:`DEFAULT_SCHEDULER`, and readers look for it there.
    """
    import dask

    return (
        address
        or os.environ.get("DASK_SCHEDULER_ADDRESS")
        or dask.config.get("scheduler-address", None)
    )


def dataset_name(stream: str, seq: int) -> str:
    """The dataset a frame is published under."""
    return f"{PREFIX}.{stream}.{seq}"


def _key(kind: str, stream: str | None = None) -> list[str]:
    return [PREFIX, kind] + ([stream] if stream is not None else [])


EventHandler = Callable[[Event], None]
# Per client: handlers by stream (None: every stream). A client has one handler per topic,
# so one dispatcher per client serves every FrameStream and subscribe_all on it.
_handlers: weakref.WeakKeyDictionary[Client, dict[str | None, list[EventHandler]]] = (
    weakref.WeakKeyDictionary()
)


def _listen(client: Client, stream: str | None, handler: EventHandler) -> None:
    table = _handlers.setdefault(client, {})
    group = table.setdefault(stream, [])
    if handler not in group:
        group.append(handler)

    def dispatch(message: tuple[float, dict[str, Any]]) -> None:
        try:
            events = events_of(message[1])
        except SchemaVersionError as exc:  # a newer loop's stream: the others go on
            log_refused(exc)
            return
        for event in events:
            for h in [*table.get(event.stream, ()), *table.get(None, ())]:
                h(event)

    # Sent to the scheduler every time: after a scheduler restart this subscribes again.
    client.subscribe_topic(TOPIC, dispatch)


def _client(client: Client | None) -> Client:
    if client is not None:
        return client
    from distributed import get_client

    return get_client()


class FrameStream:
    """The published frames of one stream: what the loop writes and readers read.

    ``ring`` and ``interval`` matter to the publisher only (they go into the head).
    Handlers given to :meth:`subscribe` run on the client's event loop: they must not
    block nor await futures (that deadlocks the client's message stream); schedule the
    fetch instead.
    """

    def __init__(
        self,
        name: str,
        client: Client | None = None,
        *,
        ring: int = DEFAULT_RING,
        interval: float = 0.0,
    ) -> None:
        self.name = validate_name(name)
        self.client = _client(client)
        self.ring, self.interval = ring, interval

    def __repr__(self) -> str:
        return f"FrameStream({self.name!r})"

    def publish(
        self, seq: int, frame: pd.DataFrame | Future, span: Span | None = None
    ) -> SyncOrAsync[Event]:
        """Publish ``frame`` as ``seq``: dataset, head, then event; trim the ring.

        ``span`` is computed from a DataFrame; give it for a Future. Publishing a seq
        again (a loop restarted after a crash) replaces it with the same frame.
        """
        if span is None:
            if isinstance(frame, Future):
                raise TypeError(f"{self!r}: publishing a Future needs its span")
            span = Span.of(frame)
        return self.client.sync(self._publish, seq, frame, span)

    async def _publish(self, seq: int, frame: pd.DataFrame | Future, span: Span) -> Event:
        client, now = self.client, time.time()
        event = Event(self.name, seq, span.rows, span.first, span.last, now)
        await client.publish_dataset(**{dataset_name(self.name, seq): frame}, override=True)
        head = Head(seq, self.ring, now, self.interval)
        await client.set_metadata(_key("streams", self.name), asdict(head))
        # The dataset and head exist before anyone hears of them, so a reader acting on the
        # event always finds the frame.
        await client.log_event(TOPIC, event.to_message())
        stale = seq - self.ring
        if stale > 0:
            await client.unpublish_dataset(dataset_name(self.name, stale))
        return event

    def head(self) -> SyncOrAsync[Head | None]:
        """The newest published frame's :class:`Head`, or None if nothing was published."""
        return self.client.sync(self._head)

    async def _head(self) -> Head | None:
        raw = await self.client.get_metadata(_key("streams", self.name), default=None)
        return Head.from_message(self.name, raw) if raw else None

    def read(
        self, after: int = 0, until: int | None = None
    ) -> SyncOrAsync[list[tuple[int, pd.DataFrame]]]:
        """Frames with ``after < seq <= until`` (default: the head), oldest first.

        ``[(seq, DataFrame), ...]``. Frames that have left the ring (or were lost with a
        scheduler) are absent: compare the returned numbers with the range to see the gap.
        """
        return self.client.sync(self._read, after, until)

    async def _read(self, after: int, until: int | None) -> list[tuple[int, pd.DataFrame]]:
        if until is None:
            head = await self._head()
            if head is None:
                return []
            until = head.seq
        return (await read_many(self.client, {self.name: (after, until)}))[self.name]

    def subscribe(self, handler: EventHandler) -> None:
        """Call ``handler(Event)`` for every frame of this stream announced from now on.

        Subscriptions do not survive a scheduler restart: call this again after one.
        """
        _listen(self.client, self.name, handler)

    def report_health(self, record: HealthRecord) -> SyncOrAsync[None]:
        """Keep the loop's health record of this stream on the scheduler."""
        key = _key("health", self.name)
        return self.client.sync(self.client.set_metadata, key, record.to_message())

    def health(self) -> SyncOrAsync[HealthRecord | None]:
        """The loop's last health record of this stream, or None.

        SchemaVersionError if a newer loop wrote it.
        """
        return self.client.sync(self._health)

    async def _health(self) -> HealthRecord | None:
        raw = await self.client.get_metadata(_key("health", self.name), default=None)
        return HealthRecord.from_message({"stream": self.name, **raw}) if raw else None


async def read_many(
    client: Client, ranges: dict[str, tuple[int, int]]
) -> dict[str, list[tuple[int, pd.DataFrame]]]:
    """Frames of many streams in one scheduler call: ``{stream: (after, until)}`` →
    ``{stream: [(seq, DataFrame), ...]}`` as :meth:`FrameStream.read` gives them (with an
    asynchronous client; frames left in worker memory are gathered in one more call).
    """
    wanted = [(name, s) for name, (a, u) in ranges.items() for s in range(a + 1, u + 1)]
    if not wanted:
        return {name: [] for name in ranges}
    values = await client.get_dataset([dataset_name(n, s) for n, s in wanted], default=None)
    found = {k: v for k, v in zip(wanted, values, strict=True) if v is not None}
    futures = {k: v for k, v in found.items() if isinstance(v, Future)}
    if futures:
        found.update(await _gather(client, futures))
    out: dict[str, list[tuple[int, pd.DataFrame]]] = {name: [] for name in ranges}
    for (name, seq), value in found.items():
        if value is not None:
            out[name].append((seq, value))
    return out


async def _gather(client: Client, futures: dict[T, Future]) -> dict[T, pd.DataFrame | None]:
    try:
        return dict(zip(futures, await client.gather(list(futures.values())), strict=True))
    except Exception:  # one lost frame (its worker died) must not hide the others
        return {k: await _result_or_none(f) for k, f in futures.items()}


async def _result_or_none(future: Future) -> pd.DataFrame | None:
    try:
        return await future
    except Exception:
        return None


def heads(client: Client | None = None) -> SyncOrAsync[dict[str, Head]]:
    """``{stream: Head}`` for every stream published on the cluster."""
    client = _client(client)

    async def read() -> dict[str, Head]:
        raw = await client.get_metadata(_key("streams"), default=None) or {}
        return _readable(raw, Head.from_message)

    return client.sync(read)


def health_records(client: Client | None = None) -> SyncOrAsync[dict[str, HealthRecord]]:
    """``{stream: HealthRecord}`` for every stream the loop reports on.

    A record of a schema version this code does not read is left out (logged once).
    """
    client = _client(client)

    def record(stream: str, msg: dict[str, Any]) -> HealthRecord:
        return HealthRecord.from_message({"stream": stream, **msg})

    async def read() -> dict[str, HealthRecord]:
        raw = await client.get_metadata(_key("health"), default=None) or {}
        return _readable(raw, record)

    return client.sync(read)


def _readable(
    raw: dict[str, dict[str, Any]], read: Callable[[str, dict[str, Any]], T]
) -> dict[str, T]:
    """``{stream: read(stream, msg)}``, leaving out (and logging once) refused messages."""
    found = {}
    for stream, msg in raw.items():
        try:
            found[stream] = read(stream, msg)
        except SchemaVersionError as exc:
            log_refused(exc)
    return found


def subscribe_all(client: Client, handler: EventHandler) -> None:
    """Call ``handler(Event)`` for every frame of every stream announced from now on.

    As :meth:`FrameStream.subscribe`, for readers that follow streams as they appear.
    """
    _listen(client, None, handler)
