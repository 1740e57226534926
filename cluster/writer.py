"""The history writer: a process of its own, so that its pandas and SQL work never holds
the tick loop's interpreter, at a lower CPU priority than the live path.

It drains the backlog the loop fills in the state directory (:func:`headrace.etl.store.sink.drain`);
SQLite's WAL lets both use the file at once, and the exactly-once guard in the database
makes a writer restarted mid-batch harmless.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from pathlib import Path

from headrace.etl.store.sink import SinkSpec

NICE = 10
IDLE = 2.0  # seconds between batches: fewer, larger transactions cost less CPU per row


def start(state_dir: Path, specs: dict[str, SinkSpec]) -> multiprocessing.Process:
    """Start the writer for ``specs`` (stream → resolved sink); SIGTERM stops it cleanly.

    A signal rather than a ``multiprocessing.Event``: setting an Event whose waiter died
    (killed with the process group, say) blocks the setter for ever.
    """
    context = multiprocessing.get_context("spawn")  # no fork of a process with threads
    level = logging.getLogger("headrace").getEffectiveLevel()
    process = context.Process(
        target=_main, args=(str(state_dir), specs, level), name="headrace-history"
    )
    process.start()
    return process


def _main(state_dir: str, specs: dict[str, SinkSpec], level: int) -> None:
    from headrace.cluster.logs import setup_logging
    from headrace.etl.store.sink import drain, sinks_for
    from headrace.etl.store.state import StateStore

    setup_logging(logging.getLevelName(level))  # as the loop logs: same format, same stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the loop stops us, after its last frame
    # Behind the live path for the CPU too: history may be a few seconds late, viewers not.
    os.nice(NICE)

    async def run() -> None:
        done = asyncio.Event()
        # SIGTERM: finish the batch in hand, then exit.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, done.set)
        store = StateStore(state_dir)
        try:
            await drain(store, sinks_for(specs), done, idle=IDLE)
        finally:
            store.close()

    asyncio.run(run())
