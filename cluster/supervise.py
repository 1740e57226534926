"""``headrace worker``: a ``dask worker`` that is started again whenever it stops.

A Dask worker does not outlive its scheduler: when the scheduler goes away the worker
and its nanny close (distributed does not reconnect workers). Where no systemd or
Kubernetes restarts it, this does: it runs ``dask worker ARGS``, and when that exits,
for whatever reason, starts it again after a short delay, until it is told to stop
(SIGTERM or SIGINT, passed on to the worker and its processes).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence

from headrace.cluster import processes

log = logging.getLogger(__name__)

FIRST_DELAY = 1.0  # seconds before a restart; doubled while it keeps stopping at once
MAX_DELAY = 15.0
STEADY = 10.0  # a worker that ran this long stopped for a reason of the moment: no backoff
FIRST_TRIES = 3  # failures at start, before it was ever up, before giving up


def worker_command(args: Sequence[str]) -> list[str]:
    """``dask worker ARGS``, run by this Python (its environment's distributed)."""
    return [sys.executable, "-m", "dask", "worker", *args]


def supervise(command: Sequence[str], name: str = "dask worker") -> int:
    """Run ``command`` until SIGTERM/SIGINT, starting it again each time it exits.

    Returns 0 once stopped; or the command's exit code if it failed :data:`FIRST_TRIES`
    times at start before it was ever up (a usage error, a bad certificate): restarting
    would only repeat it.
    """
    stop = threading.Event()
    proc = None

    def stopping(signum: int, frame: object) -> None:
        log.info("worker: %s received, stopping %s", signal.Signals(signum).name, name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stopping)
    delay = FIRST_DELAY
    failed_at_start: int | None = 0
    try:
        while not stop.is_set():
            started = time.monotonic()
            proc = processes.start(command)
            log.info("worker: started %s (pid %d)", name, proc.pid)
            while proc.poll() is None and not stop.wait(0.2):
                pass
            if stop.is_set():
                break
            ran = time.monotonic() - started
            if failed_at_start is not None and proc.returncode != 0 and ran < STEADY:
                # Never up yet: a usage error or a bad certificate fails every time, a
                # scheduler that closed the registration (a busy machine) does not.
                failed_at_start += 1
                if failed_at_start >= FIRST_TRIES:
                    log.error(
                        "worker: %s failed at start %d times (exit code %s, its log above);"
                        " not restarting it",
                        name,
                        failed_at_start,
                        proc.returncode,
                    )
                    return proc.returncode
            else:
                failed_at_start = None  # it was up once: from now on, always started again
            if ran >= STEADY:
                delay = FIRST_DELAY
            log.warning(
                "worker: %s exited with code %s after %.1f s (its scheduler gone?);"
                " starting it again in %.0f s",
                name,
                proc.returncode,
                ran,
                delay,
            )
            stop.wait(delay)
            delay = min(delay * 2, MAX_DELAY)
    finally:
        if proc is not None and proc.poll() is None:
            processes.stop(proc, grace=10)  # the nanny closes its worker in that time
    log.info("worker: stopped")
    return 0
