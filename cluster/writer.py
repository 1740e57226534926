"""The history writer: a process of its own, so that its pandas and SQL work never holds
the tick loop's interpreter, at a lower CPU priority than the live path.

It drains the backlog the loop fills in the state directory (:func:`headrace.etl.store.sink.drain`);
SQLite's WAL lets both use the file at once, and the exactly-once guard in the database
makes a writer restarted mid-batch harmless.

A writer never outlives its loop: it checks twice a second that its parent is the
loop that started it (a SIGKILLed loop leaves it to init) and stops after its batch.
Two writers never drain one backlog at once: each holds an exclusive lock on
``history.lock`` in the state directory while it writes, and one started while another
holds it waits for it (the lock goes with the process, however it ends).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import multiprocessing
import os
import signal
from pathlib import Path
from typing import IO

from headrace.etl.store.sink import SinkSpec

NICE = 10
IDLE = 2.0  # seconds between batches: fewer, larger transactions cost less CPU per row
WATCH = 0.5  # seconds between checks that the loop is alive, and for the lock
LOCK = "history.lock"

log = logging.getLogger(__name__)


def start(state_dir: Path, specs: dict[str, SinkSpec]) -> multiprocessing.Process:
    """Start the writer for ``specs`` (stream → resolved sink); SIGTERM stops it cleanly.

    A signal rather than a ``multiprocessing.Event``: setting an Event whose waiter died
    (killed with the process group, say) blocks the setter for ever.
    """
    context = multiprocessing.get_context("spawn")  # no fork of a process with threads
    level = logging.getLogger("headrace").getEffectiveLevel()
    process = context.Process(
        target=_main, args=(str(state_dir), specs, level, os.getpid()), name="headrace-history"
    )
    process.start()
    return process


def _main(state_dir: str, specs: dict[str, SinkSpec], level: int, loop_pid: int) -> None:
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
        watch = asyncio.create_task(_watch_loop(loop_pid, done))
        with open(Path(state_dir) / LOCK, "a+") as lock:
            await _acquire(lock, done)
            if done.is_set():
                return
            store = StateStore(state_dir)
            try:
                await drain(store, sinks_for(specs), done, idle=IDLE)
            finally:
                store.close()
        watch.cancel()

    asyncio.run(run())


async def _watch_loop(loop_pid: int, done: asyncio.Event) -> None:
    """Set ``done`` once the loop that started this writer is gone."""
    while not done.is_set():
        if os.getppid() != loop_pid:
            log.warning("history: the loop (pid %d) is gone; the writer stops", loop_pid)
            done.set()
        await asyncio.sleep(WATCH)


async def _acquire(lock: IO[str], done: asyncio.Event) -> None:
    """Hold ``lock`` exclusively, waiting while another writer does (unless ``done``)."""
    said = False
    while not done.is_set():
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not said:
                lock.seek(0)
                holder = lock.read().strip() or "?"
                log.info("history: another writer (pid %s) drains the backlog; waiting", holder)
                said = True
            await asyncio.sleep(WATCH)
            continue
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        if said:
            log.info("history: the other writer stopped; this one drains the backlog")
        return
