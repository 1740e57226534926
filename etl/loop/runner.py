"""The tick loop: every interval, per stream, extract and transform on the cluster and publish.

One coroutine per stream, so streams are independent and each has at most one
tick in flight: a tick that overruns its interval delays the next, which then
takes everything written since. A failing stream backs off exponentially
(capped) and logs once per change of state, not once per tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd
from distributed import Client

from headrace.etl import contract
from headrace.etl.contract.health import COUNTERS, HealthRecord, Sample
from headrace.etl.loop import pipeline
from headrace.etl.sources.base import SourceError
from headrace.etl.store.sink import encode
from headrace.etl.store.state import Checkpoint, StateStore
from headrace.etl.streams import Stream

if TYPE_CHECKING:
    from headrace.etl.loop.metrics import LoopMetrics
    from headrace.etl.store.deadletter import DeadLetterStore

log = logging.getLogger(__name__)

BACKOFF_START = 0.5
BACKOFF_CAP = 15.0
NB_HYPHEN = "\u2011"


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


def task_key(step: str, stream: str, seq: int, token: str) -> str:
    """The key of a tick's task, which the Dask dashboard shows as ``step(stream)``.

    Dask groups keys by ``dask.utils.key_split``: the first word between hyphens, then
    only the purely alphabetic words after it, so ``extract-cpu1-7`` would show as
    ``extract`` and ``extract-web-1-7`` as ``extract-web``. The stream goes into the first
    word instead, its hyphens written as U+2011 (a non-breaking hyphen, which looks the
    same): stream ``web-1``'s extract of tick 7 shows as ``extract(web-1)``.
    """
    return f"{step}({stream.replace('-', NB_HYPHEN)})-{seq}-{token}"


def backoff(failures: int) -> float:
    """Seconds to wait after ``failures`` consecutive failures: doubling, capped."""
    return min(BACKOFF_START * 2 ** (failures - 1), BACKOFF_CAP)


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(0.0, seconds))


class StreamRunner:
    """Runs the ticks of one stream and keeps its state and health."""

    def __init__(
        self,
        client: Client,
        stream: Stream,
        store: StateStore,
        ring: int,
        metrics: LoopMetrics | None = None,
        dead: DeadLetterStore | None = None,
    ) -> None:
        self.client, self.stream, self.store = client, stream, store
        self.metrics, self.dead = metrics, dead
        self.frames = contract.FrameStream(stream.name, client, ring=ring, interval=stream.interval)
        self.state: Checkpoint = store.load(stream.name)
        self.health = Health.resumed(self.state)
        period = getattr(stream.transform, "period", None)
        # A row's period closes this long after its time: the earliest it can be published.
        self.period = pd.Timedelta(period).total_seconds() if period is not None else 0.0

    def record(self) -> HealthRecord:
        """The stream's health record, as reported to the scheduler."""
        return self.health.record(self.stream.name, self.stream.interval)

    def _key(self, step: str, seq: int, token: str) -> str:
        return task_key(step, self.stream.name, seq, token)

    async def tick(self) -> int | None:
        """One tick; returns the sequence number published, if any."""
        client, stream, state = self.client, self.stream, self.state
        seq, token = state.next_seq, uuid.uuid4().hex[:6]
        limit = state.pending_until
        # Both tasks go in one message and the loop waits once: the frame and a small summary
        # come back together (frames are small: one tick of rows).
        chunk = client.submit(
            pipeline.extract,
            stream.source,
            state.cursor,
            limit,
            key=self._key("extract", seq, token),
            pure=False,
        )
        result: pipeline.Result = await client.submit(
            pipeline.transform,
            chunk,
            stream.parser,
            stream.transform,
            state.carry,
            key=self._key("transform", seq, token),
            pure=False,
        )
        summary, frame = result.summary, result.frame
        if summary.error:
            raise SourceError(summary.error)
        self.health.ticks += 1
        self.health.transfers += summary.transfers
        if summary.reset:
            log.info(
                "stream %s: %s %s, reading again from byte 0",
                stream.name,
                stream.source.display,
                summary.reset,
            )
        if summary.nbytes == 0:
            if summary.cursor != state.cursor:  # a reset or a partial line: remember where we are
                self._commit(
                    Checkpoint(summary.cursor, seq, state.carry, totals=self.health.totals())
                )
            return None
        self._account(summary)
        done = Checkpoint(summary.cursor, seq, summary.carry, totals=self.health.totals())
        if summary.span.rows == 0:
            self._commit(done)
            await self._keep_dead_letters(seq, summary)
            return None
        # Write-ahead: if we die after publishing and before committing, the restart re-reads
        # exactly the same bytes and re-publishes the same frame under the same seq.
        # The totals as before this tick: a replay after a crash counts its lines once.
        self._commit(
            Checkpoint(state.cursor, seq, state.carry, summary.cursor.offset, totals=state.totals)
        )
        event = await self.frames.publish(seq, frame, summary.span)
        done.next_seq = seq + 1
        # The history sink gets the frame through the backlog, queued with this commit. In a
        # thread: the other streams publish on this loop meanwhile.
        queue = frame if self.stream.sink is not None else None
        await asyncio.to_thread(self._commit_queued, done, queue)
        self.health.published, self.health.last_published = seq, event.published
        if self.metrics is not None:
            close = summary.span.last / 1e9 + self.period
            self.metrics.published(stream.name, event.published - close)
        await self._keep_dead_letters(seq, summary)
        return seq

    async def _keep_dead_letters(self, seq: int, summary: pipeline.Summary) -> None:
        # After the commit: a tick replayed after a crash stores the same (seq, line) keys,
        # which the store ignores. A failing store loses dead letters, never the tick.
        if self.dead is None or not summary.samples:
            return
        try:
            await asyncio.to_thread(self.dead.add, self.stream.name, seq, summary.samples)
        except Exception as exc:
            log.error(
                "stream %s: could not keep %d malformed lines in %s: %s",
                self.stream.name,
                len(summary.samples),
                self.dead.path,
                exc,
            )

    def _account(self, s: pipeline.Summary) -> None:
        h = self.health
        h.lines += s.lines
        h.blank += s.blank
        h.bytes += s.nbytes
        h.rows += s.span.rows
        h.late += s.late
        if s.malformed:
            h.malformed += s.malformed
            h.samples.extend(s.samples)
            log.warning(
                "stream %s: %d malformed lines in this tick (%d all-time), last: %s",
                self.stream.name,
                s.malformed,
                h.malformed,
                s.samples[-1] if s.samples else "",
            )
        if s.late:
            log.warning(
                "stream %s: %d late lines dropped, their period was already published",
                self.stream.name,
                s.late,
            )

    def _commit_queued(self, state: Checkpoint, frame: pd.DataFrame | None) -> None:
        self._commit(state, encode(frame) if frame is not None else None)

    def _commit(self, state: Checkpoint, queue: bytes | None = None) -> None:
        # Disk full, read-only: save raises StateError, the transaction is rolled back and
        # the stored state is the last good one; the tick is retried (same bytes again).
        self.store.save(self.stream.name, state, time.time(), queue)
        self.state = state

    async def run(self, stop: asyncio.Event) -> None:
        stream, h = self.stream, self.health
        log.info(
            "stream %s: ticking every %.3gs from %s, next seq %d at byte %d, %d lines so far",
            stream.name,
            stream.interval,
            stream.source.display,
            self.state.next_seq,
            self.state.cursor.offset,
            h.lines,
        )
        next_at = _next_slot(stream.interval)
        while not stop.is_set():
            started = time.time()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The tick will read the same bytes again; the last commit has its totals.
                h.rewind(self.state.totals)
                h.failures += 1
                if h.failures == 1:
                    h.error_since = time.time()
                error = f"{type(exc).__name__}: {exc}"
                if error != h.error:
                    log.error(
                        "stream %s: tick failed, retrying with backoff: %s", stream.name, error
                    )
                h.error = error
                next_at = time.time() + backoff(h.failures)
            else:
                if h.failures:
                    log.info("stream %s: recovered after %d failed ticks", stream.name, h.failures)
                h.failures, h.error, h.error_since = 0, None, None
                next_at = _next_slot(stream.interval, after=started)
                if next_at < time.time():
                    # Overran: start the next tick now; it takes everything written meanwhile.
                    h.overruns += 1
                    next_at = time.time()
            h.last_tick = time.time()
            if self.metrics is not None:
                self.metrics.ticked(stream.name, h.last_tick - started)
            await sleep_unless_stopped(stop, next_at - time.time())
        log.info("stream %s: stopped at seq %d; %s", stream.name, h.published, h.summary())


def _next_slot(interval: float, after: float | None = None) -> float:
    """The first multiple of ``interval`` (Unix time) after ``after`` (default now).

    Streams with the same interval tick at the same instants, in this process and in any
    other: their frames reach the Panel processes together, which then send each viewer
    one message for all of them instead of one per stream.
    """
    after = time.time() if after is None else after
    return (math.floor(after / interval) + 1) * interval


async def run_streams(
    client: Client,
    streams: Iterable[Stream],
    store: StateStore,
    ring: int = contract.DEFAULT_RING,
    stop: asyncio.Event | None = None,
    runners: list[StreamRunner] | None = None,
    metrics: LoopMetrics | None = None,
    dead: DeadLetterStore | None = None,
) -> list[StreamRunner]:
    """Tick every stream until ``stop`` is set; ``runners`` (if given) is filled as they start.

    ``metrics`` (if given) observes every tick and serves the runners' health;
    ``dead`` keeps the malformed lines.
    """
    stop = stop or asyncio.Event()
    runners = runners if runners is not None else []
    runners.extend(StreamRunner(client, s, store, ring, metrics, dead) for s in streams)
    if metrics is not None:
        metrics.healths = lambda: [(r.stream.name, r.health) for r in runners]
    names = [r.stream.name for r in runners]
    if len(set(names)) != len(names):
        raise ValueError(f"stream names must be unique, got {names}")
    await asyncio.gather(*(r.run(stop) for r in runners))
    return runners
