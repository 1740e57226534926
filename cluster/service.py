"""The tick loop as a service: find the cluster, take the lease, restore state, tick until told
to stop.

It outlives its cluster: when the scheduler goes away for longer than the client waits,
it connects afresh and carries on from the state store. Started twice on one state, one
loop is active and the other waits to take over (:mod:`headrace.cluster.standby`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from distributed import Client

from headrace.cluster import writer
from headrace.cluster.connection import LocalSpec, connect
from headrace.cluster.standby import Keeper, Roles, wait_for_lease
from headrace.etl import contract
from headrace.etl.contract.batch import FencedOut, claim, report_health
from headrace.etl.contract.loops import WAITING
from headrace.etl.loop.metrics import LoopMetrics
from headrace.etl.loop.runner import StreamRunner, backoff, sleep_unless_stopped
from headrace.etl.loop.ticks import run_streams
from headrace.etl.store.database import DEFAULT_LEASE, StateSpec
from headrace.etl.store.deadletter import DeadLetterStore
from headrace.etl.store.lease import Lease
from headrace.etl.store.sink import SinkSpec
from headrace.etl.store.state import StateStore
from headrace.etl.streams import Stream

log = logging.getLogger(__name__)

HEALTH_EVERY = 1.0


async def serve(
    streams: Iterable[Stream],
    scheduler: str | None = None,
    state_dir: str | Path = ".headrace",
    ring: int = contract.DEFAULT_RING,
    cluster: dict | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Client], Awaitable[None]] | None = None,
    sink: SinkSpec | None = None,
    metrics: tuple[str, int] | None = None,
    database: StateSpec | None = None,
) -> None:
    """Tick ``streams`` on the cluster until ``stop`` is set (or SIGINT/SIGTERM).

    The state is in ``state_dir``, or in ``database`` when given. Only while this loop
    holds the state's lease: another loop of the same state holding it, this one waits.
    ``metrics`` (address, port) serves Prometheus figures at ``/metrics`` there.
    ``on_ready(client)`` is awaited once connected, before the first tick (the demo
    starts its Panel servers there). ``sink`` holds the defaults of the streams' history
    (default: a SQLite file in ``state_dir``); it is written whether or not the
    scheduler is reachable.
    """
    streams = list(streams)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Not in the main thread, there are no signals to handle: the caller owns `stop`.
        with contextlib.suppress(RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    store = StateStore(state_dir, database)
    try:
        dead = DeadLetterStore(state_dir, database=database)
    except Exception:
        store.close()
        raise
    lease = Lease(store, database.lease if database is not None else DEFAULT_LEASE)
    store.fence, dead.fence = lease.fence, lease.check
    keeper = Keeper(lease)
    keeper.start()
    ready = on_ready
    failures = 0
    specs = resolve_sinks(streams, sink, state_dir)
    figures = LoopMetrics()
    figures.lease = lease
    if specs:
        figures.backlog = store.backlog
    server = None
    if metrics is not None:
        try:
            server = figures.serve(metrics[1], metrics[0])
        except OSError as exc:  # the port is taken: the streams matter more than their figures
            log.error("etl: cannot serve metrics on %s:%d, running without: %s", *metrics, exc)
        else:
            log.info("etl: Prometheus metrics at http://%s:%d/metrics", *server.server_address[:2])
    roles = Roles(lease)
    history = asyncio.create_task(_keep_writing(Path(state_dir), specs, stop, database, lease))
    try:
        while not stop.is_set():
            try:
                async with connect(scheduler, LocalSpec(**(cluster or {}))) as client:
                    failures = 0
                    log.info(
                        "etl: %d streams, state in %s, Dask dashboard %s",
                        len(streams),
                        store.where,
                        client.dashboard_link,
                    )
                    if ready is not None:
                        await ready(client)
                        ready = None
                    while not stop.is_set() and client.status == "running":
                        if not lease.held and not await wait_for_lease(lease, client, roles, stop):
                            break
                        await _run_connected(
                            client, streams, store, ring, stop, figures, dead, lease, roles, keeper
                        )
                    if stop.is_set():
                        await roles.leave(client)
            except (OSError, TimeoutError) as exc:
                # Only an external scheduler can be away; the streams' state is in the store.
                failures += 1
                if failures == 1:
                    log.error("etl: scheduler unreachable, retrying: %s", exc)
                await sleep_unless_stopped(stop, backoff(failures))
    finally:
        stop.set()
        keeper.stop()
        with contextlib.suppress(Exception):  # unreachable: the lease runs out by itself
            await asyncio.to_thread(lease.release)
        await history
        if server is not None:
            server.shutdown()
            server.server_close()
        store.close()
        dead.close()
        log.info("etl: stopped")


def resolve_sinks(
    streams: list[Stream], defaults: SinkSpec | None, state_dir: str | Path
) -> dict[str, SinkSpec]:
    """Each stream's history setting, its unset fields filled in (streams without: left out)."""
    out = {}
    for stream in streams:
        if stream.sink is None:
            continue
        spec = out[stream.name] = stream.sink.defaults(defaults or SinkSpec(), state_dir)
        kept = f"rows kept {spec.retention}" if spec.retention is not None else "kept for ever"
        log.info("history: stream %s into %s, %s", stream.name, spec.display(), kept)
    return out


async def _keep_writing(
    state_dir: Path,
    specs: dict[str, SinkSpec],
    stop: asyncio.Event,
    database: StateSpec | None,
    lease: Lease,
) -> None:
    """Run the history writer process while this loop holds the lease, until ``stop``; start
    it again if it dies.

    With the lease, not with the scheduler: history is written while the scheduler is away.
    """
    if not specs:
        return
    failures = 0
    while not stop.is_set():
        if not lease.held:
            await sleep_unless_stopped(stop, 0.2)
            continue
        process = writer.start(state_dir, specs, database, lease.holder)
        while process.is_alive() and not stop.is_set() and lease.held:
            await sleep_unless_stopped(stop, 0.5)
        if stop.is_set() or not lease.held:
            process.terminate()  # SIGTERM: the writer finishes its batch and exits
            await asyncio.to_thread(process.join, 15)
            if process.is_alive():
                process.kill()
            continue
        if process.exitcode == 0:  # it stopped by itself: it saw this loop lose the lease
            log.info("history: the writer stopped; started again if this loop holds the lease")
            await sleep_unless_stopped(stop, 1.0)
            continue
        failures += 1
        log.error("history: the writer process exited with %s; starting it again", process.exitcode)
        await sleep_unless_stopped(stop, backoff(failures))


async def _run_connected(
    client: Client,
    streams: list[Stream],
    store: StateStore,
    ring: int,
    stop: asyncio.Event,
    metrics: LoopMetrics,
    dead: DeadLetterStore,
    lease: Lease,
    roles: Roles,
    keeper: Keeper,
) -> None:
    """Tick while this loop holds the lease: until ``stop``, until the lease is lost, or until
    the client gives up on a scheduler that went away.

    A Client reconnects by itself for ``distributed.comm.timeouts.connect``; after that it
    closes, and :func:`serve` connects afresh, carrying on from the stored state.
    """
    try:
        await claim(client, lease.token())
    except FencedOut as exc:  # a newer epoch of this state published: the lease is not ours
        lease.give_up(str(exc))
        roles.became(WAITING)
        return
    except Exception as exc:  # the scheduler is away: the client's status will say so
        log.error("etl: cannot tell the scheduler this loop's epoch: %s", exc)
        await sleep_unless_stopped(stop, 0.5)
        return
    session = asyncio.Event()
    runners: list[StreamRunner] = []
    ticking = asyncio.create_task(
        run_streams(
            client, streams, store, ring, session, runners, metrics, dead, token=lease.token
        )
    )
    reporter = asyncio.create_task(_report_health(client, runners, session, roles))
    status = client.status
    while not session.is_set():
        await sleep_unless_stopped(stop, 0.1)
        if client.status == "running":
            keeper.in_touch()
        if client.status != status:
            log.info("etl: client %s (was %s)", client.status, status)
            status = client.status
        if stop.is_set():
            session.set()
        elif lease.lost.is_set():
            log.error("etl: another loop took the lease; this one waits again")
            roles.became(WAITING)
            session.set()
        elif status in ("closing", "closed"):
            log.error("etl: the client gave up on the scheduler; connecting again")
            session.set()
    await asyncio.gather(ticking, reporter)
    if stop.is_set():  # a clean stop: the waiting loop takes over at once, not after the ttl
        with contextlib.suppress(Exception):
            await asyncio.to_thread(lease.release)


async def _report_health(
    client: Client, runners: list[StreamRunner], stop: asyncio.Event, roles: Roles
) -> None:
    """Keep each stream's health in the scheduler's metadata, for operators and the app, and
    this loop's role.

    Once more after ``stop``: the last second before a stop is reported too.
    """
    while True:
        stopping = stop.is_set()
        if runners and roles.lease.held:
            with contextlib.suppress(Exception):  # the scheduler is away; the ticks say so
                await report_health(client, [r.record() for r in runners])
        await roles.report(client, force=stopping)
        if stopping:
            return
        await sleep_unless_stopped(stop, HEALTH_EVERY)


def run(streams: Iterable[Stream], **settings: Any) -> None:
    """Blocking form of :func:`serve` for scripts: ``run(streams, scheduler=...)``."""
    asyncio.run(serve(streams, **settings))
