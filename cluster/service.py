"""The tick loop as a service: find the cluster, restore state, tick until told to stop.

It outlives its cluster: when the scheduler goes away for longer than the client waits,
it connects afresh and carries on from the state store.
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
from headrace.etl import contract
from headrace.etl.contract.batch import report_health
from headrace.etl.loop.metrics import LoopMetrics
from headrace.etl.loop.runner import StreamRunner, backoff, sleep_unless_stopped
from headrace.etl.loop.ticks import run_streams
from headrace.etl.store.deadletter import DeadLetterStore
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
) -> None:
    """Tick ``streams`` on the cluster until ``stop`` is set (or SIGINT/SIGTERM).

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
    store = StateStore(state_dir)
    dead = DeadLetterStore(state_dir)
    ready = on_ready
    failures = 0
    specs = resolve_sinks(streams, sink, state_dir)
    figures = LoopMetrics()
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
    history = asyncio.create_task(_keep_writing(Path(state_dir), specs, stop))
    try:
        while not stop.is_set():
            try:
                async with connect(scheduler, LocalSpec(**(cluster or {}))) as client:
                    failures = 0
                    log.info(
                        "etl: %d streams, state in %s, Dask dashboard %s",
                        len(streams),
                        store.path,
                        client.dashboard_link,
                    )
                    if ready is not None:
                        await ready(client)
                        ready = None
                    await _run_connected(client, streams, store, ring, stop, figures, dead)
            except (OSError, TimeoutError) as exc:
                # Only an external scheduler can be away; the streams' state is in the store.
                failures += 1
                if failures == 1:
                    log.error("etl: scheduler unreachable, retrying: %s", exc)
                await sleep_unless_stopped(stop, backoff(failures))
    finally:
        stop.set()
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


async def _keep_writing(state_dir: Path, specs: dict[str, SinkSpec], stop: asyncio.Event) -> None:
    """Run the history writer process until ``stop``; start it again if it dies."""
    if not specs:
        return
    failures = 0
    while not stop.is_set():
        process = writer.start(state_dir, specs)
        while process.is_alive() and not stop.is_set():
            await sleep_unless_stopped(stop, 0.5)
        if stop.is_set():
            process.terminate()  # SIGTERM: the writer finishes its batch and exits
            await asyncio.to_thread(process.join, 15)
            if process.is_alive():
                process.kill()
            return
        failures += 1
        log.error("history: the writer process exited with %s; starting it again", process.exitcode)
        await sleep_unless_stopped(stop, backoff(failures))


async def _run_connected(
    client: Client,
    streams: list[Stream],
    store: StateStore,
    ring: int,
    stop: asyncio.Event,
    metrics: LoopMetrics | None = None,
    dead: DeadLetterStore | None = None,
) -> None:
    """Tick until ``stop``, or until the client gives up on a scheduler that went away.

    A Client reconnects by itself for ``distributed.comm.timeouts.connect``; after that it
    closes, and :func:`serve` connects afresh, carrying on from the stored state.
    """
    session = asyncio.Event()
    runners: list[StreamRunner] = []
    ticking = asyncio.create_task(
        run_streams(client, streams, store, ring, session, runners, metrics, dead)
    )
    reporter = asyncio.create_task(_report_health(client, runners, session))
    status = client.status
    while not session.is_set():
        await sleep_unless_stopped(stop, 0.5)
        if client.status != status:
            log.info("etl: client %s (was %s)", client.status, status)
            status = client.status
        if stop.is_set():
            session.set()
        elif status in ("closing", "closed"):
            log.error("etl: the client gave up on the scheduler; connecting again")
            session.set()
    await asyncio.gather(ticking, reporter)


async def _report_health(client: Client, runners: list[StreamRunner], stop: asyncio.Event) -> None:
    """Keep each stream's health in the scheduler's metadata, for operators and the app.

    Once more after ``stop``: the last second before a stop is reported too.
    """
    while True:
        stopping = stop.is_set()
        if runners:
            with contextlib.suppress(Exception):  # the scheduler is away; the ticks say so
                await report_health(client, [r.record() for r in runners])
        if stopping:
            return
        await sleep_unless_stopped(stop, HEALTH_EVERY)


def run(streams: Iterable[Stream], **settings: Any) -> None:
    """Blocking form of :func:`serve` for scripts: ``run(streams, scheduler=...)``."""
    asyncio.run(serve(streams, **settings))
