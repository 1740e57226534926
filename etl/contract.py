"""The published contract between the tick loop (``etl``) and its readers (``app``).

This is the only module both sides import. Everything a reader needs to find,
fetch and trust a frame is here: names, the event, the frame schema, and a
reader that returns the frames of a stream after a given sequence number.

On the cluster, per stream ``s``:

- dataset ``headrace.s.<seq>``: the frame published under sequence number ``seq``.
  The loop publishes the DataFrame itself (a tick's rows: small), so the scheduler
  holds it and a reader gets it in one round trip; a Future (data left in worker
  memory) is accepted too, for large frames. Only the last ``ring`` frames are
  kept; older ones are unpublished.
- metadata ``["headrace", "streams", s]``: a :class:`Head` as a dict, the newest
  sequence number and when it was published.
- topic ``headrace.frames``: one msgpack-able dict per frame, an :class:`Event`.

Sequence numbers start at 1, grow by exactly 1 per frame and continue across
restarts of the loop. A reader that sees ``n + 2`` after ``n`` fetches ``n + 1``;
a frame re-published under a sequence number it has seen is the same frame and
must be ignored. Datasets, metadata and subscriptions live on the scheduler and
do not survive its restart: readers re-read the head and fill gaps.

Frames: a ``time`` column (datetime64[ns, UTC]) sorted ascending, a ``value``
column (float64), optional extra columns (``count`` for aggregating
transforms, ``key`` when one file carries several series); only rows not
published before.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from distributed import Future

if TYPE_CHECKING:
    import pandas as pd
    from distributed import Client

TOPIC = "headrace.frames"
PREFIX = "headrace"
DEFAULT_RING = 64
SCHEMA_VERSION = 1

_NAME = re.compile(r"^[a-z0-9_-]+$")


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid stream name, else raise ``ValueError``."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"invalid stream name {name!r}: use lower-case letters, digits, '_' or '-'"
        )
    return name


def dataset_name(stream: str, seq: int) -> str:
    return f"{PREFIX}.{stream}.{seq}"


def head_key(stream: str | None = None) -> list[str]:
    return [PREFIX, "streams"] + ([stream] if stream is not None else [])


def health_key(stream: str | None = None) -> list[str]:
    """Metadata key of a stream's health dict (counts, errors, malformed samples)."""
    return [PREFIX, "health"] + ([stream] if stream is not None else [])


@dataclass(frozen=True)
class Event:
    """Announces one published frame; small and msgpack-serialisable."""

    stream: str
    seq: int
    rows: int
    first: int  # ns since the epoch of the first row's time
    last: int  # ns since the epoch of the last row's time
    published: float  # wall-clock seconds when the loop published it
    v: int = SCHEMA_VERSION

    def to_message(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_message(cls, msg: dict[str, Any]) -> Event:
        return cls(**{k: msg[k] for k in cls.__dataclass_fields__ if k in msg})


@dataclass(frozen=True)
class Head:
    """The newest frame of a stream, as kept in the scheduler's metadata."""

    seq: int
    ring: int
    published: float
    interval: float = 0.0  # the stream's tick interval in seconds, so readers can judge staleness


async def _publish(
    client: Client, stream: str, seq: int, frame: Future | pd.DataFrame, event: Event, head: Head
) -> None:
    name = dataset_name(stream, seq)
    # override: a loop restarted after a crash re-publishes the same frame under the same seq.
    await client.publish_dataset(**{name: frame}, override=True)
    await client.set_metadata(head_key(stream), asdict(head))
    # The dataset and head exist before anyone hears of them, so a reader acting on the
    # event always finds the frame.
    await client.log_event(TOPIC, event.to_message())
    stale = seq - head.ring
    if stale > 0:
        await client.unpublish_dataset(dataset_name(stream, stale))


def publish(
    client: Client, stream: str, seq: int, frame: Future | pd.DataFrame, event: Event, head: Head
) -> Any:
    """Publish ``frame`` as ``seq`` of ``stream``: dataset, head, then event; trim the ring.

    Returns a coroutine with an asynchronous client.
    """
    return client.sync(_publish, client, stream, seq, frame, event, head)


async def _heads(client: Client) -> dict[str, Head]:
    raw = await client.get_metadata(head_key(), default=None) or {}
    return {name: Head(**h) for name, h in raw.items()}


def heads(client: Client) -> Any:
    """``{stream: Head}`` for every stream published on the cluster (a coroutine if async)."""
    return client.sync(_heads, client)


async def _read_frames(
    client: Client, stream: str, after: int, until: int | None
) -> list[tuple[int, pd.DataFrame]]:
    if until is None:
        head = (await _heads(client)).get(stream)
        if head is None:
            return []
        until = head.seq
    seqs = list(range(after + 1, until + 1))
    if not seqs:
        return []
    values = await client.get_dataset([dataset_name(stream, s) for s in seqs], default=None)
    found = [(s, v) for s, v in zip(seqs, values, strict=True) if v is not None]
    # The loop publishes the frame itself (one round trip for readers); a frame published
    # as a Future (kept in worker memory) is gathered.
    futures = [(s, v) for s, v in found if isinstance(v, Future)]
    if futures:
        try:
            gathered = dict(
                zip(
                    [s for s, _ in futures],
                    await client.gather([f for _, f in futures]),
                    strict=True,
                )
            )
        except Exception:
            # One lost frame (its worker died) must not hide the others.
            gathered = {s: await _result_or_none(f) for s, f in futures}
        found = [(s, gathered.get(s, v) if isinstance(v, Future) else v) for s, v in found]
    return [(s, v) for s, v in found if v is not None and not isinstance(v, Future)]


async def _result_or_none(future: Future) -> pd.DataFrame | None:
    try:
        return await future
    except Exception:
        return None


def read_frames(client: Client, stream: str, after: int = 0, until: int | None = None) -> Any:
    """Frames of ``stream`` with ``after < seq <= until`` (default: the head), oldest first.

    Returns ``[(seq, DataFrame), ...]``, or a coroutine of it with an asynchronous
    client. Frames that have left the ring (or were lost with a scheduler) are
    absent: compare the returned sequence numbers with the range to see the gap.
    """
    return client.sync(_read_frames, client, stream, after, until)


def subscribe(client: Client, handler) -> None:
    """Call ``handler(Event)`` for every frame announced from now on.

    The handler runs on the client's event loop: it must not block nor await
    futures (that deadlocks the client's message stream); schedule the fetch.
    Subscriptions do not survive a scheduler restart: call this again after one.
    """

    def on_message(message: tuple[float, dict[str, Any]]) -> None:
        handler(Event.from_message(message[1]))

    client.subscribe_topic(TOPIC, on_message)
