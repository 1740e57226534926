"""The loop's health record of a stream, judged: ok, stale or failing.

The loop keeps one record per stream on the scheduler (metadata
``["headrace", "health", s]``, see :func:`headrace.etl.contract.health_records`): its all-time
counters, ``since_start``, ``lines_per_second``/``rows_per_second`` over the last
minute, ``published`` and ``last_published``, ``failures``, ``error`` and
``error_since``, ``samples`` (the newest malformed lines: ``source``, ``line``,
``reason``, ``text``), ``interval`` and ``reported`` (when it was written). The
operator page and ``headrace status`` judge it the same way, here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

OK, STALE, FAILING, UNREACHABLE = 0, 1, 2, 3
STATES = {OK: "ok", STALE: "stale", FAILING: "failing"}
# Seconds without a health report (the loop reports every second): the loop is not
# running. Shorter when asked to judge staleness sooner, never under 3 s.
REPORT_STALE = 10.0


class Counted(Protocol):
    """What a stream's live health counts (the loop's ``Health``), as metrics read it."""

    published: int
    failures: int
    last_published: float

    def totals(self) -> dict[str, int]: ...


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


def judge(record: dict[str, Any], now: float, stale_after: float) -> StreamStatus:
    """What one health record says about its stream at ``now``."""
    published = record.get("last_published") or 0.0
    lag = now - published if published else None
    reported_age = now - record.get("reported", 0.0)
    if record.get("failures"):
        since = record.get("error_since")
        ago = f" for {now - since:.0f} s" if since else ""
        state, reason = "failing", f"{record['failures']} failed ticks{ago}: {record.get('error')}"
    elif reported_age > min(REPORT_STALE, max(stale_after, 3.0)):
        state, reason = "stale", f"the loop has not reported for {reported_age:.0f} s"
    elif lag is None or lag > stale_after:
        state, reason = "stale", f"nothing published for over {stale_after:g} s"
    else:
        state, reason = "ok", ""
    since_start = record.get("since_start") or {}
    return StreamStatus(
        stream=record.get("stream", "?"),
        state=state,
        reason=reason,
        seq=int(record.get("published", 0)),
        lag_seconds=lag,
        lines_per_second=float(record.get("lines_per_second", 0.0)),
        rows_per_second=float(record.get("rows_per_second", 0.0)),
        lines=int(record.get("lines", 0)),
        rows=int(record.get("rows", 0)),
        late=int(record.get("late", 0)),
        malformed=int(record.get("malformed", 0)),
        malformed_since_start=int(since_start.get("malformed", 0)),
        error=record.get("error"),
        error_since=record.get("error_since"),
    )


def statuses(
    records: dict[str, dict[str, Any]], stale_after: float, now: float | None = None
) -> list[StreamStatus]:
    now = time.time() if now is None else now
    return [judge({"stream": s, **r}, now, stale_after) for s, r in sorted(records.items())]


def exit_code(found: list[StreamStatus]) -> int:
    return max((s.code for s in found), default=UNREACHABLE)
