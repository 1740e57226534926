"""What an operator wants to know about one stream: its counters, failures and rates."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from headrace.etl.contract.health import COUNTERS, HealthRecord, Sample
from headrace.etl.store.state import Checkpoint

# What a tick read and made: a tick that fails after counting them is read again.
CONTENT = ("lines", "blank", "rows", "malformed", "late", "bytes")
RATE_SPAN = 60.0  # seconds over which health reports lines and rows per second


@dataclass
class Health:
    """What an operator wants to know about one stream.

    The :data:`COUNTERS` are all-time totals: they are kept with the stream's checkpoint
    and continue across restarts; ``started`` holds them as they were when this process
    began, for the figures "since start".
    """

    published: int = 0  # last published sequence number
    ticks: int = 0
    overruns: int = 0
    lines: int = 0  # non-blank lines read
    blank: int = 0  # whitespace-only lines read (and skipped)
    rows: int = 0
    malformed: int = 0
    late: int = 0
    transfers: int = 0
    bytes: int = 0  # read from the source
    failures: int = 0  # consecutive failed ticks
    error: str | None = None
    error_since: float | None = None  # when the current run of failures began
    last_published: float = 0.0
    last_tick: float = 0.0  # when the last tick ended, whether or not it published
    samples: deque = field(default_factory=lambda: deque(maxlen=10))
    started: dict[str, int] = field(default_factory=dict)
    _seen: deque = field(default_factory=deque, repr=False)  # (time, lines, rows) for rates

    @classmethod
    def resumed(cls, checkpoint: Checkpoint) -> Health:
        totals = {k: int(checkpoint.totals.get(k, 0)) for k in COUNTERS}
        return cls(published=checkpoint.next_seq - 1, **totals, started=dict(totals))

    def totals(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in COUNTERS}

    def rewind(self, totals: dict[str, int]) -> None:
        """Take back what a failed tick counted: the stored ``totals`` are before it."""
        for k in CONTENT:
            setattr(self, k, int(totals.get(k, 0)))

    def since_start(self) -> dict[str, int]:
        return {k: getattr(self, k) - self.started.get(k, 0) for k in COUNTERS}

    def rates(self, now: float | None = None) -> tuple[float, float]:
        """Lines and rows per second over the last :data:`RATE_SPAN` seconds (0 at first)."""
        now = time.time() if now is None else now
        seen = self._seen
        seen.append((now, self.lines, self.rows))
        while len(seen) > 2 and now - seen[1][0] >= RATE_SPAN:
            seen.popleft()
        t0, lines0, rows0 = seen[0]
        span = now - t0
        return ((self.lines - lines0) / span, (self.rows - rows0) / span) if span > 0 else (0, 0)

    def record(self, stream: str, interval: float, now: float | None = None) -> HealthRecord:
        """The record kept on the scheduler (see the contract), as of ``now`` (default now)."""
        now = time.time() if now is None else now
        lines_per_second, rows_per_second = self.rates(now)
        return HealthRecord(
            stream=stream,
            published=self.published,
            **self.totals(),
            failures=self.failures,
            error=self.error,
            error_since=self.error_since,
            last_published=self.last_published,
            last_tick=self.last_tick,
            samples=tuple(Sample(s.source, s.line, s.reason, s.text) for s in self.samples),
            since_start=self.since_start(),
            lines_per_second=float(lines_per_second),
            rows_per_second=float(rows_per_second),
            interval=interval,
            reported=now,
        )

    def summary(self) -> str:
        """One line: all-time totals, and since this process started."""
        now = self.since_start()
        return ", ".join(f"{k} {getattr(self, k)} ({now[k]} since start)" for k in COUNTERS)
