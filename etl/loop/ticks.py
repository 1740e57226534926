"""The tick loop: every interval, all streams' ticks together on the cluster, published at once.

Streams with the same interval tick together (:class:`Ticker`). Each tick costs a few calls
whatever the number of streams: a few tasks per share (a worker's) and server for the
extracts and transforms (the files of one server read on one connection; the streams split
into as many shares as there are workers, by rendezvous hashing, and the scheduler places
the shares' tasks, so that a worker added with ``dask worker`` takes a share at the next
tick and one that leaves gives its share back), one state commit before publishing
(write-ahead), one publish of every frame
(:class:`~headrace.etl.contract.batch.TickPublisher`), one commit after it with the frames
queued for history. A stream's cursor and carry travel with its work, so a stream can tick
on any worker.

A share's streams go in as many tasks as it takes for each to last about half an
interval (measured: each stream's part of its task comes back with its result), of at
least ``MIN_BATCH`` streams and at most two a share: a worker
runs its tasks one after the other, and each task's streams are published as it ends, so
small tasks keep the workers busy and the first frames early. A task still running when the
next tick comes keeps its streams out of that tick; they tick as soon as it is settled
instead of waiting for the tick after, so that a loop with more streams than its workers
can tick in an interval runs at what they can do.

A stream fails alone: its error, backoff and health are its own
(:class:`~headrace.etl.loop.runner.StreamRunner`). A task that has not finished when half
an interval has passed (a server that hangs) does not hold the others back: they are
published, and its streams are settled at a later tick, when it ends. Each task's
streams are published as soon as it ends. Each stream has at
most one tick in flight; a tick that overruns its interval delays the next, which then
takes everything written since.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import statistics
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from distributed import Client

from headrace.etl import contract
from headrace.etl.contract.batch import Outgoing, TickPublisher, Token
from headrace.etl.loop import pipeline
from headrace.etl.loop.runner import Step, StreamRunner, next_slot, sleep_unless_stopped, task_key
from headrace.etl.sources.streams import check_inputs
from headrace.etl.store.sink import encode
from headrace.etl.store.state import StateStore
from headrace.etl.streams import Stream

if TYPE_CHECKING:
    from headrace.etl.loop.metrics import LoopMetrics
    from headrace.etl.store.deadletter import DeadLetterStore

log = logging.getLogger(__name__)

WAIT = 0.9  # of an interval: how long a tick settles its tasks as they end; later, the next
WORKERS_EVERY = 1.0  # seconds between looks at which workers are present
# Of an interval: how long a task should last. Each task costs the loop, the scheduler
# and a worker; a quarter (four tasks a share) cost 5-10 % more CPU per stream-tick at
# 200 streams every 0.2 s than half (measured side by side), for frames ~15 ms earlier.
TASK_SHARE = 0.5
FIRST_BATCH = 32  # streams per task until what a stream costs is measured
# Streams per task at least: a task costs the loop, the scheduler and a worker about a
# millisecond whatever it holds. Without a floor, workers short of CPU measured streams
# as slower, made smaller tasks, and spent the CPU on tasks (4 workers on 2 cores: 185
# stream-ticks/s against 418 with 2).
MIN_BATCH = 16
COST_WEIGHT = 0.2  # of each settle's measurement in the moving average of a stream's cost

Outcome = pipeline.Result | BaseException


def owner(stream: str, shares: list[str]) -> str | None:
    """The share a stream's work goes to: the same while that share stays (rendezvous).

    Adding a share moves only the streams that go to the new one, about their share.
    """
    if not shares:
        return None
    # A well-mixed hash: CRC32's linearity skews shares of similar names.
    return max(
        shares, key=lambda w: hashlib.blake2b(f"{stream}|{w}".encode(), digest_size=8).digest()
    )


class Ticker:
    """Ticks ``runners`` (streams of one interval) together; see the module's docstring."""

    def __init__(
        self,
        client: Client,
        runners: list[StreamRunner],
        store: StateStore,
        publisher: TickPublisher,
        interval: float,
    ) -> None:
        self.client, self.runners, self.store = client, runners, store
        self.publisher, self.interval = publisher, interval
        self.count = 0  # ticks so far, in task keys
        self.flying: dict[asyncio.Future, tuple[list[StreamRunner], float]] = {}
        self.busy: set[str] = set()  # streams with a tick in flight
        self.shares: list[str] = []  # one per worker present
        self.owners: dict[str, str | None] = {}
        self.slot_of: dict[str, int] = {}  # the tick (count) each stream last ticked in
        self.cost: float | None = None  # seconds of a stream's part of a task (moving average)
        self._looked = float("-inf")
        self._settling = asyncio.Lock()  # one settle at a time: heads are published in order
        self._ended = asyncio.Event()  # a task ended

    async def run(self, stop: asyncio.Event) -> None:
        """Tick now, then at every multiple of the interval (Unix time) until ``stop`` is set."""
        for r in self.runners:
            log.info(
                "stream %s: ticking every %.3gs from %s, next seq %d at byte %d, %d lines so far",
                r.name,
                self.interval,
                r.stream.source.display,
                r.state.next_seq,
                r.state.cursor.offset,
                r.health.lines,
            )
        # The first tick at once: a loop taking over from another has rows waiting since
        # the other's last tick; the next ones on the grid.
        next_at = time.time()
        settler = asyncio.ensure_future(self._settle_as_they_end(stop))
        while not stop.is_set():
            await sleep_unless_stopped(stop, next_at - time.time())
            if stop.is_set():
                break
            started = time.time()
            try:
                await self.tick()
            except Exception:  # a bug of the loop's own: said, and the next tick tries again
                log.exception("tick of %d streams failed", len(self.runners))
            next_at = max(next_slot(self.interval, after=started), time.time())
        settler.cancel()  # while it waits; a settle under way finishes (shielded)
        await asyncio.gather(settler, return_exceptions=True)
        async with self._settling:
            pass
        for task in self.flying:  # not settled: read again at the next start
            task.cancel()
        await asyncio.gather(*self.flying, return_exceptions=True)
        for r in self.runners:
            h = r.health
            log.info("stream %s: stopped at seq %d; %s", r.name, h.published, h.summary())

    async def tick(self) -> None:
        """One tick of the streams due now; settles each task's streams as it finishes.

        A task settles (publishes) as soon as it ends, not when the slowest one does; one
        still running near the end of the interval is settled by a later tick.
        """
        started = time.time()
        await self._settle_done()  # streams whose task ended since are free to tick again
        self.count += 1
        due = [r for r in self.runners if r.name not in self.busy and r.retry_at <= started]
        new = await self._submit(due, started) if due else []
        deadline = started + self.interval * WAIT
        while new and time.time() < deadline:
            done, pending = await asyncio.wait(
                new, timeout=deadline - time.time(), return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                break
            new = list(pending)
            await self._settle_done()

    async def _settle_as_they_end(self, stop: asyncio.Event) -> None:
        """Settle tasks that end after their tick stopped waiting for them, and tick their
        streams at once if they missed a tick meanwhile."""
        while True:
            await self._ended.wait()
            self._ended.clear()
            await asyncio.shield(self._catch_up(stop))

    async def _catch_up(self, stop: asyncio.Event) -> None:
        try:
            await self._settle_done()
            now = time.time()
            # A stream backing off waits for the grid: its retry is late anyway, and off
            # the grid it would cost a task of its own.
            owed = [
                r
                for r in self.runners
                if r.name not in self.busy
                and self.slot_of.get(r.name, self.count) < self.count
                and not r.health.failures
            ]
            if owed and not stop.is_set():
                await self._submit(owed, now)
        except Exception:  # a bug of the loop's own: said, and the next tick tries again
            log.exception("settling the ticks of %d streams failed", len(self.runners))

    async def _settle_done(self) -> None:
        """Settle the streams of every task that has finished."""
        async with self._settling:
            outcomes: list[tuple[StreamRunner, Outcome, float]] = []
            for task in [t for t in self.flying if t.done()]:
                runners, submitted = self.flying.pop(task)
                try:
                    results: list[Outcome] = list(pipeline.unpack_results(task.result()))
                except Exception as exc:  # the task failed (a lost worker, the scheduler away)
                    results = [exc] * len(runners)
                outcomes += [(r, o, submitted) for r, o in zip(runners, results, strict=True)]
            if outcomes:
                self._measure([o for _, o, _ in outcomes])
                await self._settle([(r, o) for r, o, _ in outcomes])
            # Free once settled, not before: a stream's next tick reads from its new cursor.
            self.busy.difference_update(r.name for r, _, _ in outcomes)
            for r, _, submitted in outcomes:
                r.ticked(submitted, self.interval)

    def _measure(self, outcomes: list[Outcome]) -> None:
        seconds = [o.summary.seconds for o in outcomes if isinstance(o, pipeline.Result)]
        if seconds:
            # The median: a worker's first stream pays for its imports and FTP logins.
            typical = statistics.median(seconds)
            old = typical if self.cost is None else self.cost
            self.cost = old + COST_WEIGHT * (typical - old)

    def _batches(self, runners: list[StreamRunner]) -> list[list[StreamRunner]]:
        """``runners`` (of one share and server) in tasks of about ``TASK_SHARE`` interval:
        at least ``MIN_BATCH`` streams each, and no more tasks than fit in an interval."""
        wanted = FIRST_BATCH if not self.cost else int(self.interval * TASK_SHARE / self.cost)
        most = max(1, round(1 / TASK_SHARE))  # tasks per share: more would only cost
        size = max(wanted, MIN_BATCH, -(-len(runners) // most))
        n = max(1, len(runners) // size)  # each holds ``size`` streams or more
        return [runners[i::n] for i in range(n)]

    async def _submit(self, due: list[StreamRunner], started: float) -> list[asyncio.Future]:
        await self._look_at_workers()
        # Another submission may have taken some while this one looked at the workers.
        due = [r for r in due if r.name not in self.busy]
        groups: dict[tuple[str | None, str], list[StreamRunner]] = {}
        for r in due:
            if r.name not in self.owners:
                self.owners[r.name] = owner(r.name, self.shares)
            place = (self.owners[r.name], r.stream.source.server)
            groups.setdefault(place, []).append(r)
        new = []
        for (_, server), share in groups.items():
            for runners in self._batches(share):
                # A token per task: one server's streams in two tasks.
                token = uuid.uuid4().hex[:6]
                # No worker restrictions: the scheduler spreads the shares' tasks over the
                # workers (a task restricted to a worker that died with no other present
                # would wait for that worker for ever).
                future = self.client.submit(
                    pipeline.tick_task,
                    pipeline.pack([r.work() for r in runners]),
                    key=task_key("tick", server.split("://", 1)[-1] or "local", self.count, token),
                    pure=False,
                )
                task = asyncio.ensure_future(future)
                task.add_done_callback(lambda _: self._ended.set())
                self.flying[task] = (runners, started)
                self.busy.update(r.name for r in runners)
                self.slot_of.update((r.name, self.count) for r in runners)
                new.append(task)
        return new

    async def _look_at_workers(self) -> None:
        if time.monotonic() - self._looked < WORKERS_EVERY:
            return
        self._looked = time.monotonic()
        try:
            shares = [str(i) for i in range(len(await self.client.ncores()) or 1)]
        except Exception:  # the scheduler is away: the tick's tasks will say so
            return
        if shares != self.shares:
            if self.shares:
                log.info(
                    "streams in %d shares now (were %d): one a worker",
                    len(shares),
                    len(self.shares),
                )
            self.shares, self.owners = shares, {}

    async def _settle(self, outcomes: list[tuple[StreamRunner, Outcome]]) -> None:
        """Commit, publish and commit again for every stream whose tick ended."""
        steps: list[Step] = []
        for runner, outcome in outcomes:
            try:
                if isinstance(outcome, BaseException):
                    raise outcome
                steps.append(runner.step(outcome))
            except Exception as exc:
                runner.failed(exc)
        if any(s.summary.samples or s.summary.late_letters for s in steps):
            # Before the commits: a tick replayed after a crash keeps the same (seq, line)
            # letters, which the store ignores, so none is lost and none kept twice.
            await asyncio.to_thread(lambda: [s.runner.keep_dead_letters(s) for s in steps])
        ahead = [(s.runner.name, s.ahead, None) for s in steps if s.ahead is not None]
        # A publishing tick's write-ahead is the stored state with its pending_until set.
        pending = frozenset(
            s.runner.name for s in steps if s.result is not None and s.runner.stored
        )
        if ahead:
            try:
                await asyncio.to_thread(self.store.save_many, ahead, time.time(), pending)
            except Exception as exc:  # disk full, read-only: every stream's tick again later
                _fail(steps, exc)
                return
            for s in steps:
                if s.ahead is not None:
                    s.runner.committed(s.ahead)
        publishing = [s for s in steps if s.result is not None]
        if publishing:
            frames = [
                Outgoing(
                    s.runner.name, s.seq, s.result.wire(), s.summary.span, s.runner.stream.interval
                )
                for s in publishing
            ]
            try:
                published = await self.publisher.publish(frames)
                await asyncio.to_thread(self._commit_published, publishing)
            except Exception as exc:
                _fail(publishing, exc)
                steps = [s for s in steps if s.result is None]
            else:
                for s in publishing:
                    s.runner.published(s, published)
        for s in steps:
            s.runner.succeeded()

    def _commit_published(self, steps: list[Step]) -> None:
        # The history sink gets each frame through the backlog, queued with this commit.
        states = [
            (
                s.runner.name,
                s.done,
                None if s.runner.stream.sink is None else encode(s.result.frame),
            )
            for s in steps
        ]
        self.store.save_many(states, time.time())
        for s in steps:
            s.runner.committed(s.done)


def _fail(steps: list[Step], exc: BaseException) -> None:
    for s in steps:
        s.runner.failed(exc)


async def run_streams(
    client: Client,
    streams: Iterable[Stream],
    store: StateStore,
    ring: int = contract.DEFAULT_RING,
    stop: asyncio.Event | None = None,
    runners: list[StreamRunner] | None = None,
    metrics: LoopMetrics | None = None,
    dead: DeadLetterStore | None = None,
    token: Callable[[], Token] = lambda: None,
) -> list[StreamRunner]:
    """Tick every stream until ``stop`` is set; ``runners`` (if given) is filled as they start.

    ``metrics`` (if given) observes every tick and serves the runners' health;
    ``dead`` keeps the malformed lines; ``token`` fences publications (the loop's lease).
    """
    stop = stop or asyncio.Event()
    runners = runners if runners is not None else []
    runners.extend(StreamRunner(s, store, metrics, dead) for s in streams)
    if metrics is not None:
        metrics.healths = lambda: [(r.name, r.health) for r in runners]
    names = [r.name for r in runners]
    if len(set(names)) != len(names):
        raise ValueError(f"stream names must be unique, got {names}")
    check_inputs([r.stream for r in runners])  # derived streams' inputs: here, no cycle
    publisher = TickPublisher(client, ring, token)
    by_interval: dict[float, list[StreamRunner]] = {}
    for r in runners:
        by_interval.setdefault(r.stream.interval, []).append(r)
    tickers = [Ticker(client, rs, store, publisher, i) for i, rs in by_interval.items()]
    await asyncio.gather(*(t.run(stop) for t in tickers))
    return runners
