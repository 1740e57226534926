"""Child processes that are started, and stopped, as a whole with their own children.

``panel serve --num-procs N`` forks N children and ``dask worker --nworkers N`` spawns
some: a signal to the process we started would leave them running. So each process
starts in a session (and process group) of its own, and is stopped by its group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any


def start(
    args: Sequence[str], env: Mapping[str, str] | None = None, **popen: Any
) -> subprocess.Popen:
    """Run ``args`` in a process group of its own; ``popen`` goes to ``subprocess.Popen``."""
    return subprocess.Popen(
        list(args), env=dict(env) if env is not None else None, start_new_session=True, **popen
    )


def stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the process group of ``proc`` (see :func:`start`), then SIGKILL after ``grace`` s."""

    def group_alive() -> bool:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while group_alive():
        proc.poll()  # reap the leader, or the group never looks empty
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
