"""One subscriber per Panel process: fetches every published frame once and keeps a window.

A Panel process holds many sessions; all of them read from the process's single
:class:`Subscriber`, created lazily on the running event loop (``panel serve --num-procs``
forks after importing the app, and a Dask client does not survive a fork). The
subscriber keeps one asynchronous ``distributed.Client``, listens to
``etl.contract`` events, fetches each announced frame with ``contract.read_frames``
exactly once, appends its rows to a per-stream in-memory window of column arrays, and
passes the new rows to listeners (the fan-out to sessions).

A poll every second reads the heads: it finds streams, catches events lost while
(re)subscribing, and notices a new scheduler behind the same address (after a restart
subscriptions are gone and must be made again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from app import freshness
from etl import contract

log = logging.getLogger("headrace.app")

WINDOW_ENV = "HEADRACE_WINDOW"
DEFAULT_WINDOW = 600.0  # seconds of row time kept per stream
DEFAULT_SCHEDULER = "tcp://127.0.0.1:8786"
DEFAULT_SPACING_NS = 25_000_000  # row spacing assumed before a stream has shown its own
POLL_INTERVAL = 1.0
FETCH_TIMEOUT = 10.0

Columns = dict[str, np.ndarray]
# listener(stream, rows, index of the first row): called on the loop with new rows only
Listener = Callable[[str, Columns, int], None]


def frame_columns(frame: pd.DataFrame, names: list[str] | None = None) -> Columns:
    """Column arrays of ``frame`` in the form Bokeh sends as binary buffers.

    ``time`` becomes tz-naive ``datetime64[ns]`` (UTC) and every other numeric column
    ``float64``; non-numeric columns (``key``) are left out: lists of strings would go
    as JSON and nothing plots them yet. ``names`` fixes the column set (a stream's first
    frame decides it) so every batch streams into the same ``ColumnDataSource``.
    """
    times = frame["time"]
    if isinstance(times.dtype, pd.DatetimeTZDtype):
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    columns: Columns = {"time": times.to_numpy(dtype="datetime64[ns]")}
    if names is None:
        names = [
            c
            for c in frame.columns
            if c != "time"
            and (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))
        ]
    for name in names:
        if name in frame:
            columns[name] = frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            columns[name] = np.full(len(frame), np.nan)
    return columns


def concat(chunks: list[Columns]) -> Columns:
    if len(chunks) == 1:
        return chunks[0]
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}


def take(columns: Columns, start: int, stop: int | None = None) -> Columns:
    return {name: array[start:stop] for name, array in columns.items()}


@dataclass
class Snapshot:
    """The window of a stream as a new session starts with it.

    ``end`` is the index the next row will get: a listener that registers together with
    the snapshot (under :attr:`Subscriber.lock`) receives rows from exactly ``end`` on.
    """

    columns: Columns
    end: int
    seq: int
    capacity: int  # rows that fit the window at the stream's row spacing


@dataclass
class StreamState:
    name: str
    window_ns: int
    seq: int = 0  # newest frame ingested (or skipped as unavailable)
    target: int = 0  # newest frame known to exist
    rows: int = 0  # index of the next row: rows ingested since the process started
    chunks: deque[Columns] = field(default_factory=deque)
    names: list[str] | None = None
    newest_ns: int | None = None  # newest row time
    arrived: float | None = None  # wall-clock time the newest rows arrived
    lag: freshness.Lag = field(default_factory=freshness.Lag)
    published: float | None = None
    interval: float = 0.0
    ring: int = contract.DEFAULT_RING
    reset: bool = False  # head went backwards: drop rows not newer than what we have
    task: asyncio.Task | None = None
    spacing_ns: int = DEFAULT_SPACING_NS

    def append(self, columns: Columns) -> int:
        """Add rows; return the index of the first one. Trims rows older than the window."""
        first = self.rows
        n = len(columns["time"])
        self.chunks.append(columns)
        self.rows += n
        times = columns["time"].view("int64")
        self.newest_ns = int(times[-1])
        if n > 1:
            self.spacing_ns = max(1, int(np.median(np.diff(times))))
        cutoff = self.newest_ns - self.window_ns
        # Whole chunks only: a snapshot slices the first one, which keeps appends O(1).
        while len(self.chunks) > 1 and self.chunks[0]["time"][-1].view("int64") < cutoff:
            self.chunks.popleft()
        return first

    def snapshot(self) -> Snapshot:
        capacity = max(1000, int(self.window_ns // self.spacing_ns) + 1)
        if not self.chunks:
            names = ["time", *(self.names or ["value"])]
            empty = {
                n: np.array([], dtype="datetime64[ns]" if n == "time" else "float64") for n in names
            }
            return Snapshot(empty, self.rows, self.seq, capacity)
        columns = concat(list(self.chunks))
        assert self.newest_ns is not None
        start = int(np.searchsorted(columns["time"].view("int64"), self.newest_ns - self.window_ns))
        return Snapshot(take(columns, start), self.rows, self.seq, capacity)

    def window_rows(self) -> int:
        return sum(len(c["time"]) for c in self.chunks)


def configure_logging() -> None:
    """Let ``headrace.app`` INFO lines through under ``panel serve``.

    Bokeh's ``--log-level`` sets only the ``bokeh`` logger; the root logger stays at
    WARNING, which would hide the subscriber's connect/resubscribe/gap lines. A level
    configured elsewhere is left alone.
    """
    logger = logging.getLogger("headrace")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def scheduler_address() -> str:
    """``DASK_SCHEDULER_ADDRESS`` / dask config ``scheduler-address``, else the default port."""
    import dask

    return (
        os.environ.get("DASK_SCHEDULER_ADDRESS")
        or dask.config.get("scheduler-address", None)
        or DEFAULT_SCHEDULER
    )


def window_seconds() -> float:
    raw = os.environ.get(WINDOW_ENV)
    if not raw:
        return DEFAULT_WINDOW
    try:
        value = float(raw)
    except ValueError:
        log.warning("%s=%r is not a number of seconds: using %s", WINDOW_ENV, raw, DEFAULT_WINDOW)
        return DEFAULT_WINDOW
    return value if value > 0 else DEFAULT_WINDOW


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
        self.client: Any = None  # distributed.Client (asynchronous)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.connected = asyncio.Event()  # set once heads were read from a scheduler
        self._streams: dict[str, StreamState] = {}
        self._listeners: list[Listener] = []
        self._scheduler_id: str | None = None
        self._task: asyncio.Task | None = None
        self._closed = False
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "events",  # events received
                "duplicates",  # events for frames already fetched or being fetched
                "gaps",  # events more than one ahead (missed events)
                "catch_ups",  # polls that found the head ahead of every event
                "frames",  # frames fetched and ingested
                "rows",  # rows ingested
                "fetches",  # read_frames calls
                "missing",  # announced frames that could not be fetched
                "late_rows",  # rows dropped for being older than the newest row
                "connects",  # clients created
                "subscriptions",  # subscribe calls (first and after a new scheduler)
                "errors",
            ),
            0,
        )

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> asyncio.Task:
        """Start connecting and polling on the running loop (idempotent)."""
        if self._task is None:
            self.loop = asyncio.get_running_loop()
            self._task = asyncio.create_task(self._run(), name="headrace-subscriber")
        return self._task

    async def close(self) -> None:
        self._closed = True
        tasks = [self._task] if self._task else []
        tasks += [s.task for s in self._streams.values() if s.task is not None]
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
            contract.subscribe(client, self._on_event)
            self.stats["subscriptions"] += 1
            self._scheduler_id = scheduler_id
            log.info("subscribed to %s on %s (pid %d)", contract.TOPIC, self.address, os.getpid())
        return True

    # -- events and heads ------------------------------------------------------------------

    def _on_event(self, event: contract.Event) -> None:
        # Runs inside the client's message stream: never await here, only schedule.
        self.stats["events"] += 1
        state = self._state(event.stream)
        if event.seq <= max(state.seq, state.target):
            self.stats["duplicates"] += 1
            return
        if state.target and event.seq > state.target + 1:
            self.stats["gaps"] += 1
            log.info(
                "gap: stream %s seq %d after %d: fetching %d-%d",
                event.stream,
                event.seq,
                state.target,
                state.target + 1,
                event.seq,
            )
        state.target = event.seq
        self._schedule(state)

    async def _poll(self) -> None:
        heads = await asyncio.wait_for(contract.heads(self.client), FETCH_TIMEOUT)
        for name, head in heads.items():
            state = self._state(name)
            state.published, state.interval, state.ring = head.published, head.interval, head.ring
            if head.seq < state.seq:
                # The contract says seqs only grow, so the data was reset (state wiped or a new
                # publisher): follow the new numbering, keep the window, drop repeated rows.
                log.warning(
                    "reset: stream %s head seq %d below ours %d: following the new numbering",
                    name,
                    head.seq,
                    state.seq,
                )
                state.seq = state.target = max(0, head.seq - 1)
                state.reset = True
            if head.seq > max(state.seq, state.target):
                behind = head.seq - max(state.seq, state.target)
                # One frame ahead is usually its event still in flight, not a lost one.
                if state.seq and (behind > 1 or time.time() - head.published > 2 * POLL_INTERVAL):
                    self.stats["catch_ups"] += 1
                    log.info(
                        "catch-up: stream %s head %d ahead of %d (events missed)",
                        name,
                        head.seq,
                        max(state.seq, state.target),
                    )
                state.target = head.seq
            if state.target > state.seq:
                self._schedule(state)
        self.connected.set()

    def _state(self, stream: str) -> StreamState:
        state = self._streams.get(stream)
        if state is None:
            with self.lock:
                state = self._streams.setdefault(
                    stream, StreamState(stream, window_ns=int(self.window * 1e9))
                )
        return state

    def _schedule(self, state: StreamState) -> None:
        # One fetch task per stream at a time: that is what makes every frame fetched once.
        if state.task is None or state.task.done():
            state.task = asyncio.create_task(self._catch_up(state), name=f"fetch-{state.name}")

    async def _catch_up(self, state: StreamState) -> None:
        while state.target > state.seq and not self._closed:
            client, until = self.client, state.target
            # Frames older than the ring are gone anyway; asking for them costs names.
            after = max(state.seq, until - state.ring)
            self.stats["fetches"] += 1
            try:
                frames = await asyncio.wait_for(
                    contract.read_frames(client, state.name, after=after, until=until),
                    FETCH_TIMEOUT,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Leave seq where it is: the next poll (possibly on a new client) retries.
                self.stats["errors"] += 1
                log.info(
                    "fetch failed: stream %s seqs %d-%d: %s",
                    state.name,
                    after + 1,
                    until,
                    _short(exc),
                )
                return
            got = {seq for seq, _ in frames}
            missing = [s for s in range(state.seq + 1, until + 1) if s not in got]
            if missing:
                self.stats["missing"] += len(missing)
                log.info(
                    "gap: stream %s frames %s not available (left the ring or lost with the "
                    "scheduler): skipped",
                    state.name,
                    _ranges(missing),
                )
            for seq, frame in frames:
                if seq > state.seq:
                    self._ingest(state, seq, frame)
            state.seq = max(state.seq, until)

    def _ingest(self, state: StreamState, seq: int, frame: pd.DataFrame) -> None:
        with self.lock:
            state.seq = seq
            self.stats["frames"] += 1
            if frame is None or len(frame) == 0:
                return
            columns = frame_columns(frame, state.names)
            if state.names is None:
                state.names = [n for n in columns if n != "time"]
            columns = self._drop_late(state, columns)
            n = len(columns["time"])
            if n == 0:
                return
            first = state.append(columns)
            state.arrived = time.time()
            state.lag.add(state.arrived, state.newest_ns)
            self.stats["rows"] += n
            for listener in list(self._listeners):
                try:
                    listener(state.name, columns, first)
                except Exception:
                    self.stats["errors"] += 1
                    log.exception("listener failed for stream %s", state.name)

    def _drop_late(self, state: StreamState, columns: Columns) -> Columns:
        """Keep sessions' rows in time order: drop rows older than the newest we have."""
        if state.newest_ns is None:
            return columns
        times = columns["time"].view("int64")
        # After a reset, equal times are repeats of rows we hold; otherwise they can be real.
        side = "right" if state.reset else "left"
        start = int(np.searchsorted(times, state.newest_ns, side=side))
        if start < len(times):
            # Past the rows we held before the reset: from here on, equal times are real.
            state.reset = False
        if start:
            self.stats["late_rows"] += start
            log.info("stream %s: dropped %d rows not newer than the newest row", state.name, start)
            return take(columns, start)
        return columns

    # -- what sessions use -----------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(stream, rows, first_index)`` on the loop for every batch of new rows."""
        with self.lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self.lock, contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def streams(self) -> list[str]:
        """Names of the streams published on the cluster (and seen in events), sorted."""
        return sorted(self._streams)

    def snapshot(self, stream: str) -> Snapshot:
        """The window so far; take it under :attr:`lock` together with registering a listener."""
        with self.lock:
            return self._state(stream).snapshot()

    def columns(self, stream: str) -> list[str]:
        """The column names a stream's rows carry (``time`` first); cheap, unlike a snapshot."""
        state = self._streams.get(stream)
        return ["time", *(state.names if state and state.names else ["value"])]

    def freshness(self, stream: str) -> str:
        """How current ``stream`` is, e.g. ``live, 0.3 s behind`` (see :mod:`app.freshness`)."""
        state = self._streams.get(stream)
        if state is None:
            return freshness.describe(None, None)
        return freshness.describe(state.lag.worst(), state.arrived, state.interval)

    def info(self) -> dict[str, Any]:
        """Counters and per-stream positions, for logs, benchmarks and tests."""
        with self.lock:
            return {
                "pid": os.getpid(),
                "address": self.address,
                "scheduler_id": self._scheduler_id,
                **self.stats,
                "streams": {
                    s.name: {"seq": s.seq, "rows": s.rows, "window_rows": s.window_rows()}
                    for s in self._streams.values()
                },
            }


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:200]


def _ranges(seqs: list[int]) -> str:
    out, start, prev = [], seqs[0], seqs[0]
    for s in [*seqs[1:], None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if s is not None:
            start = prev = s
    return ",".join(out)


# -- the per-process instance ------------------------------------------------------------------

_instance: tuple[int, Subscriber] | None = None
_instance_lock = threading.Lock()


def get_subscriber() -> Subscriber:
    """This process's subscriber, created and started on first use.

    Keyed by pid: an instance inherited through a fork belongs to the parent. Call it
    from the server's event loop (session creation, a setup script, a callback); from
    another thread it starts the subscriber on the loop Tornado calls current.
    """
    global _instance
    with _instance_lock:
        if _instance is None or _instance[0] != os.getpid():
            _instance = (os.getpid(), Subscriber())
        subscriber = _instance[1]
    if subscriber._task is None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            from tornado.ioloop import IOLoop

            IOLoop.current().add_callback(subscriber.start)
        else:
            subscriber.start()
    return subscriber


@contextlib.contextmanager
def _swap_instance(subscriber: Subscriber | None) -> Iterator[None]:
    """For tests: make ``subscriber`` this process's instance for a while."""
    global _instance
    with _instance_lock:
        saved, _instance = (
            _instance,
            ((os.getpid(), subscriber) if subscriber is not None else None),
        )
    try:
        yield
    finally:
        with _instance_lock:
            _instance = saved
