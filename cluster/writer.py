"""The history writer: a process of its own, so that its pandas and SQL work never holds
the tick loop's interpreter, at a lower CPU priority than the live path.

It drains the backlog the loop fills in the state directory (:func:`headrace.etl.store.sink.drain`);
SQLite's WAL lets both use the file at once, and the exactly-once guard in the database
makes a writer restarted mid-batch harmless.

A writer never outlives its loop: it checks twice a second that its parent is the
loop that started it (a SIGKILLed loop leaves it to init) and that this loop still holds
the state's lease (a loop paused while a standby took over), and stops after its batch.
Two writers never drain one backlog at once: each holds an exclusive lock on
``history.lock`` in the state directory while it writes, and one started while another
holds it waits for it (the lock goes with the process, however it ends); the writers of
loops on two hosts are kept apart by the lease, which only one loop holds.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import multiprocessing
import os
import signal
from pathlib import Path
from typing import IO, TYPE_CHECKING

from headrace.etl.store.database import StateSpec
from headrace.etl.store.sink import SinkSpec

NICE = 10
IDLE = 2.0  # seconds between batches: fewer, larger transactions cost less CPU per row
WATCH = 0.5  # seconds between checks that the loop is alive, and for the lock
LOCK = "history.lock"

if TYPE_CHECKING:
    from headrace.etl.store.lease import Lease

log = logging.getLogger(__name__)


def start(
    state_dir: Path,
    specs: dict[str, SinkSpec],
    database: StateSpec | None = None,
    holder: str | None = None,
) -> multiprocessing.Process:
    """Start the writer for ``specs`` (stream → resolved sink); SIGTERM stops it cleanly.

    ``database``: where the state is, if not in ``state_dir``; ``holder``: the loop's
    lease, which the writer stops without.

    A signal rather than a ``multiprocessing.Event``: setting an Event whose waiter died
    (killed with the process group, say) blocks the setter for ever.
    """
    context = multiprocessing.get_context("spawn")  # no fork of a process with threads
    level = logging.getLogger("headrace").getEffectiveLevel()
    process = context.Process(
        target=_main,
        args=(str(state_dir), specs, level, os.getpid(), database, holder),
        name="headrace-history",
    )
    process.start()
    return process


def _main(
    state_dir: str,
    specs: dict[str, SinkSpec],
    level: int,
    loop_pid: int,
    database: StateSpec | None,
    holder: str | None,
) -> None:
    from headrace.cluster.logs import setup_logging
    from headrace.etl.store.lease import Lease
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
        store = StateStore(state_dir, database)
        lease = Lease(store, 0, holder) if holder is not None else None
        watch = asyncio.create_task(_watch_loop(loop_pid, done, lease))
        # The lock is per host; the state's directory holds nothing else when the state is
        # in a database, and may not exist yet.
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(state_dir) / LOCK, "a+") as lock:
            await _acquire(lock, done)
            if done.is_set():
                store.close()
                return
            try:
                await drain(store, sinks_for(specs), done, idle=IDLE)
            finally:
                store.close()
        watch.cancel()

    asyncio.run(run())


async def _watch_loop(loop_pid: int, done: asyncio.Event, lease: Lease | None) -> None:
    """Set ``done`` once the loop that started this writer is gone, or lost its lease."""
    while not done.is_set():
        if os.getppid() != loop_pid:
            log.warning("history: the loop (pid %d) is gone; the writer stops", loop_pid)
            done.set()
        elif lease is not None and not await asyncio.to_thread(_holds, lease):
            log.warning("history: the loop (pid %d) lost its lease; the writer stops", loop_pid)
            done.set()
        await asyncio.sleep(WATCH)


def _holds(lease: Lease) -> bool:
    try:
        now = lease.current()
    except Exception:  # the database is away: so are the writes, which say so themselves
        return True
    return now is not None and now.holder == lease.holder


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
