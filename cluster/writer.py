"""The history writer: its own process, so that writing to the database never competes
with the tick loop for the interpreter.

Measured in the loop's process (a thread beside the event loop), its pandas and SQL
work added ~25 ms to the median publish delay at three 0.2 s streams; in a process of
its own it adds nothing. It drains the backlog the loop fills in the state directory
(:func:`etl.sink.drain`); SQLite's WAL lets both use the file at once, and the exactly-
once guard in the database makes a writer restarted mid-batch harmless.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.synchronize
import os
import signal
import sys
from pathlib import Path

from etl.sink import SinkSpec

log = logging.getLogger("headrace.etl")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
NICE = 10
IDLE = 2.0  # seconds between batches: fewer, larger transactions cost less CPU per row


def start(
    state_dir: Path, specs: dict[str, SinkSpec]
) -> tuple[multiprocessing.Process, multiprocessing.synchronize.Event]:
    """Start the writer for ``specs`` (stream → resolved sink); returns it and its stop event."""
    context = multiprocessing.get_context("spawn")  # no fork of a process with threads
    stop = context.Event()
    level = logging.getLogger("headrace").getEffectiveLevel()
    process = context.Process(
        target=_main, args=(str(state_dir), specs, stop, level), name="headrace-history"
    )
    process.start()
    return process, stop


def _main(
    state_dir: str, specs: dict[str, SinkSpec], stop: multiprocessing.synchronize.Event, level: int
) -> None:
    from etl.sink import drain, sinks_for
    from etl.state import StateStore

    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the loop stops us, after its last frame
    # Behind the live path for the CPU too: history may be a few seconds late, viewers not.
    os.nice(NICE)

    async def run() -> None:
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, lambda: (stop.wait(), loop.call_soon_threadsafe(done.set)))
        store = StateStore(state_dir)
        try:
            await drain(store, sinks_for(specs), done, idle=IDLE)
        finally:
            store.close()

    asyncio.run(run())
