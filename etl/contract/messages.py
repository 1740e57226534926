"""The contract's messages: a frame's :class:`Span`, the :class:`Event` announcing it,
a stream's :class:`Head`, and :func:`events_of` for what arrives on the topic."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from headrace.etl.contract.version import (
    SCHEMA_VERSION,
    TICK_VERSION,
    SchemaVersionError,
    check_message,
)

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Span:
    """The rows of a frame: how many, and the ns since the epoch of the first and last."""

    rows: int
    first: int
    last: int

    @classmethod
    def of(cls, frame: pd.DataFrame) -> Span:
        if not len(frame):
            return cls(0, 0, 0)
        times = frame["time"].to_numpy(dtype="datetime64[ns]").view("int64")
        return cls(len(frame), int(times[0]), int(times[-1]))


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
        """The event in ``msg``; SchemaVersionError if its ``v`` is not one this code reads."""
        check_message("event", str(msg.get("stream", "?")), msg)
        return cls(**{k: msg[k] for k in cls.__dataclass_fields__ if k in msg})


@dataclass(frozen=True)
class Head:
    """The newest frame of a stream, as kept in the scheduler's metadata."""

    seq: int
    ring: int
    published: float
    interval: float = 0.0  # the stream's tick interval in seconds, so readers can judge staleness

    # No ``v`` is written into heads at version 1, so that readers from before ``v`` was
    # checked (which take the dict as keyword arguments) can read them; a later version
    # writes its ``v``, which readers check here.
    @classmethod
    def from_message(cls, stream: str, msg: dict[str, Any]) -> Head:
        """The head of ``stream`` in ``msg``; SchemaVersionError for a version not read here."""
        check_message("head", stream, msg)
        return cls(**{k: msg[k] for k in cls.__dataclass_fields__ if k in msg})


def events_of(msg: dict[str, Any]) -> list[Event]:
    """The frames a message on :data:`TOPIC` announces: one event, or a tick's.

    SchemaVersionError if its ``v`` is not one this code reads.
    """
    if "frames" not in msg:
        return [Event.from_message(msg)]
    check_message("tick", "*", msg)
    if msg["v"] != TICK_VERSION:
        raise SchemaVersionError("tick", "*", msg["v"])
    published = msg["published"]
    return [Event(*frame[:5], published) for frame in msg["frames"]]
