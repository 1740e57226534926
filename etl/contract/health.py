"""The loop's health record of a stream, judged: ok, stale or failing.

The loop keeps one record per stream on the scheduler (metadata
``["headrace", "health", s]``, see :func:`headrace.etl.contract.health_records`): its all-time
counters, ``since_start``, ``lines_per_second``/``rows_per_second`` over the last
minute, ``published`` and ``last_published``, ``failures``, ``error`` and
``error_since``, ``samples`` (the newest malformed lines: ``source``, ``line``,
``reason``, ``text``), ``interval`` and ``reported`` (when it was written). The
operator page and ``headrace status`` judge it the same way, here.

The record is a :class:`HealthRecord`; on the scheduler it is kept as
:meth:`HealthRecord.to_message` (a msgpack- and JSON-able dict, with the schema version
``v``) and read back with :meth:`HealthRecord.from_message`, which refuses a version this
code does not know (:class:`~headrace.etl.contract.version.SchemaVersionError`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from headrace.etl.contract.version import SCHEMA_VERSION, check_message

OK, STALE, FAILING, UNREACHABLE = 0, 1, 2, 3
STATES = {OK: "ok", STALE: "stale", FAILING: "failing"}
# Seconds without a health report (the loop reports every second): the loop is not
# running. Shorter when asked to judge staleness sooner, never under 3 s.
REPORT_STALE = 10.0

# The all-time counters of a stream's health, fields of HealthRecord and of the loop's Health.
COUNTERS = (
    "ticks",
    "overruns",
    "lines",
    "blank",
    "rows",
    "malformed",
    "late",
    "transfers",
    "bytes",
)


class Counted(Protocol):
    """What a stream's live health counts (the loop's ``Health``), as metrics read it."""

    published: int
    failures: int
    last_published: float

    def totals(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class Sample:
    """A malformed line the loop read: where (``source`` and 1-based ``line``), why, what."""

    source: str
    line: int
    reason: str
    text: str

    @classmethod
    def from_message(cls, msg: Mapping[str, Any]) -> Sample:
        return cls(
            source=str(msg.get("source", "")),
            line=int(msg.get("line", 0)),
            reason=str(msg.get("reason", "")),
            text=str(msg.get("text", "")),
        )


@dataclass(frozen=True)
class HealthRecord:
    """The loop's health record of one stream, as kept on the scheduler.

    The counters (``ticks`` to ``bytes``) are all-time totals, across restarts of the
    loop; ``since_start`` has the same counters since this run of the loop began.
    """

    stream: str
    published: int = 0  # last published sequence number
    ticks: int = 0
    overruns: int = 0  # ticks that took longer than the interval
    lines: int = 0  # non-blank lines read
    blank: int = 0  # whitespace-only lines read (and skipped)
    rows: int = 0
    malformed: int = 0
    late: int = 0
    transfers: int = 0
    bytes: int = 0  # read from the source
    failures: int = 0  # consecutive failed ticks
    error: str | None = None  # the last tick's error while failing
    error_since: float | None = None  # when the current run of failures began
    last_published: float = 0.0  # wall-clock seconds; 0: never
    last_tick: float = 0.0  # when the last tick ended, whether or not it published
    samples: tuple[Sample, ...] = ()  # the newest malformed lines, oldest first
    since_start: dict[str, int] = field(default_factory=dict)
    lines_per_second: float = 0.0  # over the last minute
    rows_per_second: float = 0.0
    interval: float = 0.0  # the stream's tick interval in seconds
    reported: float = 0.0  # when the loop wrote this record
    v: int = SCHEMA_VERSION

    def to_message(self) -> dict[str, Any]:
        """The record as kept on the scheduler: msgpack- and JSON-able."""
        # Field by field: asdict's deep copies cost the loop ~0.1 ms a stream a second.
        msg = {name: getattr(self, name) for name in self.__dataclass_fields__}
        msg["samples"] = [asdict(s) for s in self.samples]
        msg["since_start"] = dict(self.since_start)
        return msg

    @classmethod
    def from_message(cls, msg: Mapping[str, Any]) -> HealthRecord:
        """The record in ``msg``; fields it lacks (an older loop's) take their defaults.

        SchemaVersionError if ``msg`` is of a schema version this code does not read.
        """
        stream = str(msg.get("stream", "?"))
        check_message("health record", stream, msg)
        known = {k: msg[k] for k in cls.__dataclass_fields__ if k in msg}
        samples = tuple(
            Sample.from_message(s) for s in msg.get("samples") or () if isinstance(s, Mapping)
        )
        since_start = {str(k): int(n) for k, n in (msg.get("since_start") or {}).items()}
        return cls(**{**known, "stream": stream, "samples": samples, "since_start": since_start})


@dataclass(frozen=True)
class StreamStatus:
    stream: str
    state: str  # ok | stale | failing
    reason: str
    seq: int
    lag_seconds: float | None  # since the last publication
    lines_per_second: float
    rows_per_second: float
    lines: int  # all-time totals, across restarts of the loop
    rows: int
    late: int
    malformed: int
    malformed_since_start: int
    error: str | None
    error_since: float | None

    @property
    def code(self) -> int:
        return {v: k for k, v in STATES.items()}[self.state]

    def line(self) -> str:
        lag = "never published" if self.lag_seconds is None else f"lag {self.lag_seconds:.1f} s"
        text = (
            f"{self.stream:<16} {self.state.upper():<8} seq {self.seq:<8} {lag:<16} "
            f"{self.lines_per_second:8.1f} lines/s  {self.lines} lines  malformed "
            f"{self.malformed} ({self.malformed_since_start} since start)"
        )
        return f"{text}  {self.reason}" if self.reason else text


def judge(record: HealthRecord, now: float, stale_after: float) -> StreamStatus:
    """What one health record says about its stream at ``now``."""
    published = record.last_published or 0.0
    lag = now - published if published else None
    reported_age = now - record.reported
    if record.failures:
        since = record.error_since
        ago = f" for {now - since:.0f} s" if since else ""
        state, reason = "failing", f"{record.failures} failed ticks{ago}: {record.error}"
    elif reported_age > min(REPORT_STALE, max(stale_after, 3.0)):
        state, reason = "stale", f"the loop has not reported for {reported_age:.0f} s"
    elif lag is None or lag > stale_after:
        state, reason = "stale", f"nothing published for over {stale_after:g} s"
    else:
        state, reason = "ok", ""
    return StreamStatus(
        stream=record.stream,
        state=state,
        reason=reason,
        seq=int(record.published),
        lag_seconds=lag,
        lines_per_second=float(record.lines_per_second),
        rows_per_second=float(record.rows_per_second),
        lines=int(record.lines),
        rows=int(record.rows),
        late=int(record.late),
        malformed=int(record.malformed),
        malformed_since_start=int(record.since_start.get("malformed", 0)),
        error=record.error,
        error_since=record.error_since,
    )


def statuses(
    records: Mapping[str, HealthRecord], stale_after: float, now: float | None = None
) -> list[StreamStatus]:
    """Every record judged at ``now``, by stream name (the key of ``records``)."""
    now = time.time() if now is None else now
    return [
        judge(r if r.stream == s else replace(r, stream=s), now, stale_after)
        for s, r in sorted(records.items())
    ]


def exit_code(found: list[StreamStatus]) -> int:
    return max((s.code for s in found), default=UNREACHABLE)
