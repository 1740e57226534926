"""One stream in the tick loop: its checkpoint, its health, and what each of its ticks does.

The loop (:mod:`headrace.etl.loop.ticks`) ticks many streams together; a
:class:`StreamRunner` says what its stream's part of a tick is (:meth:`StreamRunner.work`),
turns the result into a :class:`Step` (what to commit, what to publish), and keeps the
stream's failures to itself: a failing stream backs off exponentially (capped) and logs
once per change of state, not once per tick, while the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from headrace.etl.loop import pipeline
from headrace.etl.loop.health import Health
from headrace.etl.sources.base import SourceError
from headrace.etl.store.state import Checkpoint, StateStore
from headrace.etl.streams import Stream

if TYPE_CHECKING:
    from headrace.etl.contract.health import HealthRecord
    from headrace.etl.loop.metrics import LoopMetrics
    from headrace.etl.store.deadletter import DeadLetterStore

__all__ = ["Health", "Step", "StreamRunner", "backoff", "sleep_unless_stopped", "task_key"]

log = logging.getLogger(__name__)

BACKOFF_START = 0.5
BACKOFF_CAP = 15.0
NB_HYPHEN = "\u2011"


def task_key(step: str, name: str, seq: int, token: str) -> str:
    """The key of a tick's task, which the Dask dashboard shows as ``step(name)``.

    Dask groups keys by ``dask.utils.key_split``: the first word between hyphens, then
    only the purely alphabetic words after it, so ``tick-cpu1-7`` would show as
    ``tick`` and ``tick-web-1-7`` as ``tick-web``. The name (a stream's, or the server a
    task reads) goes into the first word instead, its hyphens written as U+2011 (a
    non-breaking hyphen, which looks the same): ``tick(web-1)``.
    """
    return f"{step}({name.replace('-', NB_HYPHEN)})-{seq}-{token}"


def backoff(failures: int) -> float:
    """Seconds to wait after ``failures`` consecutive failures: doubling, capped."""
    return min(BACKOFF_START * 2 ** (failures - 1), BACKOFF_CAP)


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(0.0, seconds))


def next_slot(interval: float, after: float | None = None) -> float:
    """The first multiple of ``interval`` (Unix time) after ``after`` (default now).

    Streams with the same interval tick at the same instants, in this process and in any
    other: their frames reach the Panel processes together, which then send each viewer
    one message for all of them instead of one per stream.
    """
    after = time.time() if after is None else after
    return (math.floor(after / interval) + 1) * interval


@dataclass
class Step:
    """What one stream's tick result asks of the loop.

    ``ahead``: the checkpoint to commit before publishing (write-ahead: a restart after a
    crash re-reads exactly the same bytes and publishes the same frame under the same
    seq), or, without a frame, the only commit. ``done``: the checkpoint once the frame
    of ``result`` is published, committed with the frame queued for history.
    """

    runner: StreamRunner
    seq: int
    summary: pipeline.Summary
    ahead: Checkpoint | None = None
    done: Checkpoint | None = None
    result: pipeline.Result | None = None  # with the frame to publish


class StreamRunner:
    """One stream's checkpoint, health and the steps of its ticks."""

    def __init__(
        self,
        stream: Stream,
        store: StateStore,
        metrics: LoopMetrics | None = None,
        dead: DeadLetterStore | None = None,
    ) -> None:
        self.stream, self.store, self.metrics, self.dead = stream, store, metrics, dead
        self.name = stream.name
        self.state: Checkpoint = store.load(stream.name)
        self.stored = self.state != Checkpoint()  # a row holds self.state
        self.health = Health.resumed(self.state)
        self.retry_at = 0.0  # time.time() before which a failing stream is not ticked
        self._recipe: bytes | None = None  # made by the first work
        period = getattr(stream.transform, "period", None)
        # A row's period closes this long after its time: the earliest it can be published.
        self.period = pd.Timedelta(period).total_seconds() if period is not None else 0.0

    def record(self) -> HealthRecord:
        """The stream's health record, as reported to the scheduler."""
        return self.health.record(self.name, self.stream.interval)

    def work(self) -> pipeline.Work:
        """This stream's part of the next tick."""
        s, state = self.stream, self.state
        if self._recipe is None:
            try:
                self._recipe = pipeline.recipe(s.source, s.parser, s.transform)
            except Exception:  # the task's pickling fails with the reason, for every tick
                self._recipe = b""
        return pipeline.Work(
            s.name, s.source, state.cursor, state.pending_until, s.parser, s.transform,
            state.carry, self._recipe,
        )  # fmt: skip

    def step(self, result: pipeline.Result) -> Step:
        """What the tick's ``result`` asks for; raises SourceError for a failed read."""
        state, summary = self.state, result.summary
        if summary.error:
            raise SourceError(summary.error)
        seq = state.next_seq
        self.health.ticks += 1
        self.health.transfers += summary.transfers
        if summary.reset:
            log.info(
                "stream %s: %s %s, reading again from byte 0",
                self.name,
                self.stream.source.display,
                summary.reset,
            )
        # No bytes and no rows; a window closed for idleness publishes rows without bytes.
        if summary.nbytes == 0 and summary.span.rows == 0:
            if summary.cursor == state.cursor:
                return Step(self, seq, summary)
            # A reset or a partial line: remember where we are.
            moved = Checkpoint(summary.cursor, seq, state.carry, totals=self.health.totals())
            return Step(self, seq, summary, ahead=moved)
        self._account(summary)
        done = Checkpoint(summary.cursor, seq, summary.carry, totals=self.health.totals())
        if summary.span.rows == 0:
            return Step(self, seq, summary, ahead=done)
        # The totals as before this tick: a replay after a crash counts its lines once.
        ahead = Checkpoint(
            state.cursor, seq, state.carry, summary.cursor.offset, totals=state.totals
        )
        done.next_seq = seq + 1
        return Step(self, seq, summary, ahead, done, result)

    def committed(self, state: Checkpoint) -> None:
        self.state, self.stored = state, True

    def published(self, step: Step, published: float) -> None:
        """``step``'s frame is published and its checkpoint committed."""
        self.health.published, self.health.last_published = step.seq, published
        if self.metrics is not None:
            close = step.summary.span.last / 1e9 + self.period
            self.metrics.published(self.name, published - close)

    def succeeded(self) -> None:
        h = self.health
        if h.failures:
            log.info("stream %s: recovered after %d failed ticks", self.name, h.failures)
        h.failures, h.error, h.error_since = 0, None, None
        self.retry_at = 0.0

    def failed(self, exc: BaseException) -> None:
        """The tick failed: it will read the same bytes again, after a backoff."""
        h = self.health
        h.rewind(self.state.totals)  # the last commit has the totals before it
        h.failures += 1
        if h.failures == 1:
            h.error_since = time.time()
        error = f"{type(exc).__name__}: {exc}"
        if error != h.error:
            log.error("stream %s: tick failed, retrying with backoff: %s", self.name, error)
        h.error = error
        self.retry_at = time.time() + backoff(h.failures)

    def ticked(self, started: float, interval: float) -> None:
        """The tick that started at ``started`` ended now (whether or not it published)."""
        h = self.health
        h.last_tick = time.time()
        if h.last_tick - started > interval:
            h.overruns += 1  # the next tick takes everything written meanwhile
        if self.metrics is not None:
            self.metrics.ticked(self.name, h.last_tick - started)

    def keep_dead_letters(self, step: Step) -> None:
        """Keep the tick's malformed and late lines (in a thread: the store is SQLite).

        Before the tick's commits: a tick replayed after a crash stores the same (seq,
        line) keys, which the store ignores. A failing store loses dead letters, never
        the tick.
        """
        samples = step.summary.samples + step.summary.late_letters
        if self.dead is None or not samples:
            return
        try:
            self.dead.add(self.name, step.seq, samples)
        except Exception as exc:
            log.error(
                "stream %s: could not keep %d malformed or late lines in %s: %s",
                self.name,
                len(samples),
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
                self.name,
                s.malformed,
                h.malformed,
                s.samples[-1] if s.samples else "",
            )
        if s.late:
            log.warning(
                "stream %s: %d late lines not published, their window had closed (%s)",
                self.name,
                s.late,
                "kept as dead letters" if s.late_letters else "counted",
            )
