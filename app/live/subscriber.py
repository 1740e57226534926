"""One subscriber per Panel process: fetches every published frame once and keeps a window.

A Panel process holds many sessions; all of them read from the process's single
:class:`Subscriber`, created lazily on the running event loop (``panel serve --num-procs``
forks after importing the app, and a Dask client does not survive a fork). The subscriber
keeps one asynchronous ``distributed.Client``, listens to ``headrace.etl.contract``
events, fetches each announced frame exactly once (the frames of every stream announced
together in one call, ``contract.read_many``), appends its rows to the stream's
:class:`~headrace.app.live.window.Window`, and passes the new rows to listeners (the
fan-out to sessions).

A poll every second reads the heads: it finds streams, catches events lost while
(re)subscribing, and notices a new scheduler behind the same address (after a restart
subscriptions are gone and must be made again).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pandas as pd

from headrace.app.live.columns import Columns, frame_columns, names_of
from headrace.app.live.window import Feed, Snapshot, Window
from headrace.app.settings import scheduler_address, window_seconds
from headrace.app.views import freshness
from headrace.etl import contract
from headrace.etl.contract.frames import REVISION

if TYPE_CHECKING:
    import numpy as np
    from distributed import Client

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0
FETCH_TIMEOUT = 10.0

# listener(stream, rows, index of the first row): called on the loop with new rows only
Listener = Callable[[str, Columns, int], None]
# reviser(stream, indices, rows): rows held before, replaced by a revision (emit: early)
Reviser = Callable[[str, "np.ndarray", Columns], None]


class Subscriber:
    """Fetches each frame once for the whole process and keeps each stream's recent rows.

    Everything runs on the event loop it was started on; :attr:`lock` guards the windows
    and listeners so a session can take a snapshot and register atomically from any thread.
    """

    def __init__(
        self,
        address: str | None = None,
        window: float | None = None,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.address = address or scheduler_address()
        self.window = window or window_seconds()
        self.poll_interval = poll_interval
        self.lock = threading.RLock()
        self.client: Client | None = None  # asynchronous
        self.loop: asyncio.AbstractEventLoop | None = None
        self.connected = asyncio.Event()  # set once heads were read from a scheduler
        self._streams: dict[str, Feed] = {}
        self._listeners: list[Listener] = []
        self._revisers: list[Reviser] = []
        self._scheduler_id: str | None = None
        self._task: asyncio.Task | None = None
        self._fetcher: asyncio.Task | None = None  # fetching the frames of _due streams
        self._due: set[str] = set()
        self._closed = False
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "events",  # events received
                "duplicates",  # events for frames already fetched or being fetched
                "gaps",  # events more than one ahead (missed events)
                "catch_ups",  # polls that found the head ahead of every event
                "frames",  # frames fetched and ingested
                "rows",  # rows ingested
                "fetches",  # calls fetching frames (of every stream due at once)
                "missing",  # announced frames that could not be fetched
                "late_rows",  # rows dropped for being older than the newest row
                "revised_rows",  # rows held before, replaced by a revision
                "connects",  # clients created
                "subscriptions",  # subscribe calls (first and after a new scheduler)
                "errors",
            ),
            0,
        )

    @property
    def started(self) -> bool:
        return self._task is not None

    def start(self) -> asyncio.Task:
        """Start connecting and polling on the running loop (idempotent)."""
        if self._task is None:
            self.loop = asyncio.get_running_loop()
            self._task = asyncio.create_task(self._run(), name="headrace-subscriber")
        return self._task

    async def close(self) -> None:
        self._closed = True
        tasks = [t for t in (self._task, self._fetcher) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
            self.client = None

    async def _run(self) -> None:
        while not self._closed:
            try:
                if await self._ensure_connected():
                    await self._poll()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stats["errors"] += 1
                log.info("subscriber poll failed (%s): %s", self.address, _short(exc))
            await asyncio.sleep(self.poll_interval)

    async def _ensure_connected(self) -> bool:
        """True when the client talks to a scheduler we are subscribed to."""
        from distributed import Client

        client = self.client
        if client is None or client.status in ("closed", "closing"):
            if client is not None:
                log.info(
                    "client to %s closed (scheduler gone too long): reconnecting", self.address
                )
            self.client = None
            # direct_to_workers: frames come from the workers, not through the scheduler
            client = await Client(
                self.address,
                asynchronous=True,
                set_as_default=False,
                direct_to_workers=True,
                timeout=5,
            )
            self.client = client
            self.stats["connects"] += 1
            self._scheduler_id = None
            log.info("connected to scheduler %s", self.address)
        if client.status != "running":
            return False  # the client is reconnecting on its own
        scheduler_id = (client.scheduler_info() or {}).get("id")
        if scheduler_id != self._scheduler_id:
            if self._scheduler_id is not None:
                log.info("new scheduler at %s (%s): resubscribing", self.address, scheduler_id)
            contract.subscribe_all(client, self._on_event)
            self.stats["subscriptions"] += 1
            self._scheduler_id = scheduler_id
            log.info("subscribed to %s on %s (pid %d)", contract.TOPIC, self.address, os.getpid())
        return True

    # -- events and heads: all on the client's loop ------------------------------------------

    def _on_event(self, event: contract.Event) -> None:
        # Runs inside the client's message stream: never await here, only schedule.
        self.stats["events"] += 1
        feed = self._feed(event.stream)
        if event.seq <= max(feed.seq, feed.target):
            self.stats["duplicates"] += 1
            return
        if feed.target and event.seq > feed.target + 1:
            self.stats["gaps"] += 1
            log.info(
                "gap: stream %s seq %d after %d: fetching %d-%d",
                event.stream,
                event.seq,
                feed.target,
                feed.target + 1,
                event.seq,
            )
        feed.target = event.seq
        self._schedule(feed)

    async def _poll(self) -> None:
        heads = await asyncio.wait_for(contract.heads(self.client), FETCH_TIMEOUT)
        for name, head in heads.items():
            feed = self._feed(name)
            feed.interval, feed.ring = head.interval, head.ring
            if head.seq < feed.seq:
                # The contract says seqs only grow, so the data was reset (feed wiped or a new
                # publisher): follow the new numbering, keep the window, drop repeated rows.
                log.warning(
                    "reset: stream %s head seq %d below ours %d: following the new numbering",
                    name,
                    head.seq,
                    feed.seq,
                )
                feed.seq = feed.target = max(0, head.seq - 1)
                feed.reset = True
            if head.seq > max(feed.seq, feed.target):
                behind = head.seq - max(feed.seq, feed.target)
                # One frame ahead is usually its event still in flight, not a lost one.
                if feed.seq and (behind > 1 or time.time() - head.published > 2 * POLL_INTERVAL):
                    self.stats["catch_ups"] += 1
                    log.info(
                        "catch-up: stream %s head %d ahead of %d (events missed)",
                        name,
                        head.seq,
                        max(feed.seq, feed.target),
                    )
                feed.target = head.seq
            if feed.target > feed.seq:
                self._schedule(feed)
        self.connected.set()

    def _feed(self, stream: str) -> Feed:
        feed = self._streams.get(stream)
        if feed is None:
            with self.lock:
                feed = self._streams.setdefault(
                    stream, Feed(stream, Window(window_ns=int(self.window * 1e9)))
                )
        return feed

    def _schedule(self, feed: Feed) -> None:
        # One fetching task at a time: that is what makes every frame fetched once. The
        # events of one tick arrive together, so their frames come in one call.
        self._due.add(feed.name)
        if self._fetcher is None or self._fetcher.done():
            self._fetcher = asyncio.create_task(self._fetch_due(), name="headrace-fetch")

    async def _fetch_due(self) -> None:
        while self._due and not self._closed:
            due, self._due = self._due, set()
            ranges = {}
            for name in due:
                feed = self._streams[name]
                if feed.target > feed.seq:
                    # Frames older than the ring are gone anyway; asking for them costs names.
                    ranges[name] = (max(feed.seq, feed.target - feed.ring), feed.target)
            if not ranges:
                continue
            self.stats["fetches"] += 1
            try:
                got = await asyncio.wait_for(contract.read_many(self.client, ranges), FETCH_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Leave seq where it is: the next poll (possibly on a new client) retries.
                self.stats["errors"] += 1
                log.info(
                    "fetch failed: streams %s: %s",
                    ", ".join(f"{n} seqs {a + 1}-{u}" for n, (a, u) in sorted(ranges.items())),
                    _short(exc),
                )
                return
            for name, (_, until) in ranges.items():
                self._take(self._streams[name], until, got[name])

    def _take(self, feed: Feed, until: int, frames: list[tuple[int, pd.DataFrame]]) -> None:
        seqs = {seq for seq, _ in frames}
        missing = [s for s in range(feed.seq + 1, until + 1) if s not in seqs]
        if missing:
            self.stats["missing"] += len(missing)
            log.info(
                "gap: stream %s frames %s not available (left the ring or lost with the "
                "scheduler): skipped",
                feed.name,
                _ranges(missing),
            )
        for seq, frame in frames:  # oldest first, as read_many gives them
            if seq > feed.seq:
                self.ingest(feed.name, seq, frame)
        feed.seq = max(feed.seq, until)

    def ingest(self, stream: str, seq: int, frame: pd.DataFrame | None) -> None:
        """Take frame ``seq`` of ``stream`` (fetching does this): window, then listeners.

        Rows not newer than the newest row held are dropped, so listeners see rows in
        time order. Call on the subscriber's loop.
        """
        feed = self._feed(stream)
        with self.lock:
            feed.seq = seq
            self.stats["frames"] += 1
            if frame is None or len(frame) == 0:
                return
            window = feed.window
            columns = frame_columns(frame, window.names)
            if window.names is None:
                window.names = [n for n in columns if n != "time"]
            if REVISION in columns:
                columns = self._revise(feed, columns)
            columns = self._drop_late(feed, columns)
            n = len(columns["time"])
            if n == 0:
                return
            first = window.append(columns)
            feed.arrived = time.time()
            assert window.newest_ns is not None
            feed.lag.add(feed.arrived, window.newest_ns)
            self.stats["rows"] += n
            self._tell(self._listeners, feed.name, columns, first)

    def _revise(self, feed: Feed, columns: Columns) -> Columns:
        """Apply the frame's revisions (``Window.revised``), tell the revisers; the rest."""
        indices, rows, rest = feed.window.revised(columns)
        if len(indices):
            self.stats["revised_rows"] += len(indices)
            self._tell(self._revisers, feed.name, indices, rows)
        return rest

    def _tell(self, callbacks: list, stream: str, *args: Any) -> None:
        # One failing listener (a view's bug) must not keep the rows from the others.
        for callback in list(callbacks):
            try:
                callback(stream, *args)
            except Exception:
                self.stats["errors"] += 1
                log.exception("%r failed for stream %s", callback, stream)

    def _drop_late(self, feed: Feed, columns: Columns) -> Columns:
        """Keep sessions' rows in time order: drop rows older than the newest we have."""
        late, columns = feed.newer(columns)
        if not late:
            return columns
        self.stats["late_rows"] += late
        log.info("stream %s: dropped %d rows not newer than the newest row", feed.name, late)
        return columns

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(stream, rows, first_index)`` on the loop for every batch of new rows."""
        with self.lock:
            self._listeners.append(listener)

    def add_reviser(self, reviser: Reviser) -> None:
        """Call ``reviser(stream, indices, rows)`` on the loop when held rows are revised."""
        with self.lock:
            self._revisers.append(reviser)

    def remove_listener(self, listener: Listener) -> None:
        with self.lock, contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def streams(self) -> list[str]:
        """Names of the streams published on the cluster (and seen in events), sorted."""
        return sorted(self._streams)

    def snapshot(self, stream: str) -> Snapshot:
        """The window so far; take it under :attr:`lock` together with registering a listener."""
        with self.lock:
            feed = self._feed(stream)
            return feed.window.snapshot(feed.seq)

    def columns(self, stream: str) -> list[str]:
        """The column names a stream's rows carry (``time`` first); cheap, unlike a snapshot."""
        feed = self._streams.get(stream)
        names = feed.window.names if feed is not None else None
        return names_of(names)

    def freshness(self, stream: str) -> str:
        """How current ``stream`` is, e.g. ``live, 0.3 s behind`` (see ``views.freshness``)."""
        feed = self._streams.get(stream)
        if feed is None:
            return freshness.describe(None, None)
        return freshness.describe(feed.lag.worst(), feed.arrived, feed.interval)

    def info(self) -> dict[str, Any]:
        """Counters and per-stream positions, for logs, benchmarks and tests."""
        with self.lock:
            return {
                "pid": os.getpid(),
                "address": self.address,
                "scheduler_id": self._scheduler_id,
                **self.stats,
                "streams": {
                    s.name: {"seq": s.seq, "rows": s.window.rows, "window_rows": s.window.held()}
                    for s in self._streams.values()
                },
            }


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc) or type(exc).__name__}"[:200]


def _ranges(seqs: list[int]) -> str:
    """``[1, 2, 3, 5]`` as ``1-3,5``."""
    runs = [[s for _, s in g] for _, g in itertools.groupby(enumerate(seqs), lambda p: p[1] - p[0])]
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)
