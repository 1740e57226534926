"""A deployment as real processes, restartable one by one, and what the fault tests measure.

``Stack``: `dask scheduler`, `headrace worker` (a `dask worker` and its nanny, started
again when they stop), `headrace etl`, each logging to a file; ``Events``: every frame
announcement as the cluster sends it, to measure how long publication stopped;
``exactly_once``: every written line in one published period, once (the table's rows
are written with :func:`faultreport.record`).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
from helpers import dask_scheduler, dask_worker, headrace_etl

from headrace.cluster import processes

PERIOD_MS = 25


class Stack:
    """The processes of a deployment, restartable one by one; everything logs to ``logs``."""

    def __init__(self, logs: Path, config: Path, port: int, etl_env: dict | None = None) -> None:
        self.logs, self.config, self.port = logs, config, port
        self.address = f"tcp://127.0.0.1:{port}"
        self.etl_env = etl_env or {}
        self.procs: dict[str, object] = {}
        self.files = []

    def _log(self, name: str):
        f = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115  (closed in stop_all)
        self.files.append(f)
        return f

    def start(self, name: str) -> None:
        """Start ``name``: scheduler, worker, or etl (etl2, etl3...: more loops of the state)."""
        start = {
            "scheduler": lambda log: dask_scheduler(self.port, log),
            "worker": lambda log: dask_worker(self.address, log),
            "etl": lambda log: headrace_etl(self.config, self.address, log, self.etl_env),
        }[name.rstrip("0123456789")]
        self.procs[name] = start(self._log(name))

    def start_all(self) -> None:
        """The scheduler, its worker and the loop, in that order."""
        for name in ("scheduler", "worker", "etl"):
            self.start(name)

    def kill(self, name: str) -> None:
        """SIGKILL, with no SIGTERM first: the process dies without a word."""
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        processes.stop(proc, grace=0)  # reaps it

    def stop(self, name: str) -> None:
        """SIGTERM, as a supervisor stops it (SIGKILL after the grace period)."""
        processes.stop(self.procs.pop(name))

    def stop_all(self) -> None:
        for name in list(self.procs):
            processes.stop(self.procs.pop(name))
        for f in self.files:
            f.close()

    def stalled(self) -> float:
        """The longest the scheduler's event loop stood still (s, as Dask logs it): the whole
        machine stopping (a host pausing the VM) stops it too, while a fault in a source,
        a worker or the loop does not."""
        text = (self.logs / "scheduler.log").read_text(errors="replace")
        found = re.findall(r"Event loop was unresponsive in Scheduler for ([\d.]+)s", text)
        return max((float(s) for s in found), default=0.0)

    def tail(self) -> str:
        return "\n".join(
            f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
            for p in sorted(self.logs.glob("*.log"))
        )


def periods_ms(lines: list[str]) -> np.ndarray:
    """The 25 ms periods the written lines fall in, as integer ms since the epoch."""
    times = pd.to_datetime(pd.Series([line.split(" ", 1)[0] for line in lines]), utc=True)
    ms = times.dt.as_unit("ms").astype("int64").to_numpy()
    return np.unique(ms - ms % PERIOD_MS)


def gaps_ms(rows: np.ndarray, periods: np.ndarray, what: str) -> list[tuple[int, int]]:
    """Check ``rows`` are written periods, in order, none twice; return the runs they skip."""
    assert len(rows), f"{what}: no rows"
    assert np.all(np.diff(rows) > 0), f"{what}: rows out of order or repeated"
    at = np.searchsorted(periods, rows)
    assert np.all(at < len(periods)) and np.array_equal(periods[at], rows), (
        f"{what}: rows that were never written"
    )
    skipped = np.flatnonzero(np.diff(at) > 1)
    return [(int(rows[i]), int(rows[i + 1])) for i in skipped]


def exactly_once(written: list[str], frames: list[tuple[int, pd.DataFrame]], carry) -> dict:
    """Compare the lines written with the periods published (and the one still open).

    Returns the reliability table's figures: lines written, published, still open, lost
    and duplicated (lines counted in more periods than they fell in, or a period twice).
    """
    seqs = [s for s, _ in frames]
    assert seqs == list(range(1, len(seqs) + 1)), "sequence numbers not consecutive"
    rows = pd.concat([f for _, f in frames], ignore_index=True)
    got_ms = rows["time"].astype("int64").to_numpy() // 1_000_000
    times = pd.to_datetime(pd.Series([w.split(" ", 1)[0] for w in written]), utc=True)
    ms = times.dt.as_unit("ms").astype("int64").to_numpy()
    expected = pd.Series(ms - ms % PERIOD_MS).value_counts()
    got = pd.Series(rows["count"].to_numpy(), index=got_ms).groupby(level=0).sum()
    index = expected.index.union(got.index)
    diff = got.reindex(index, fill_value=0) - expected.reindex(index, fill_value=0)
    still_open = len(carry.rows) if carry is not None else 0
    return dict(
        written=len(written),
        published=int(rows["count"].sum()),
        open=still_open,
        lost=max(0, int(-diff[diff < 0].sum()) - still_open),
        duplicated=int(diff[diff > 0].sum()) + int(len(got_ms) - len(np.unique(got_ms))),
    )


class Events(threading.Thread):
    """Every frame event of ``stream`` (seq, published, arrived here), from its own client."""

    def __init__(self, address: str, stream: str) -> None:
        super().__init__(daemon=True, name=f"events-{stream}")
        self.address, self.stream = address, stream
        self.seen: list[tuple[int, float, float]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        from distributed import Client

        from headrace.etl import contract

        while not self._halt.is_set():
            try:
                with Client(self.address, timeout=5) as client:
                    frames = contract.FrameStream(self.stream, client)
                    frames.subscribe(lambda e: self.seen.append((e.seq, e.published, time.time())))
                    while not self._halt.wait(0.5) and client.status == "running":
                        pass
            except Exception:  # the scheduler is away: subscribe again when it is back
                self._halt.wait(0.5)

    def stop(self) -> None:
        self._halt.set()
        self.join(15)

    def longest_pause(self, after: float = 0.0) -> float:
        """The longest time between two publications (s), after ``after``."""
        times = sorted(p for _, p, _ in self.seen if p >= after)
        return float(np.max(np.diff(times))) if len(times) > 1 else float("inf")
