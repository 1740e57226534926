"""The benchmark's data: one FTP server and one writer, shared by headrace and the peer.

The expected rows of a stream are the 25 ms periods that have at least one line in the
written file (read back from disk at the end: the files are the ground truth for both
systems), with the period's max value so that a received row can be matched to its file.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from headrace.cluster.demo.ftpserver import FTPServer
from headrace.cluster.demo.logwriter import LogWriter

STREAMS = ["alpha", "beta", "gamma"]
RATE = 40.0  # lines per second per stream, as in the demo
PERIOD_MS = 25.0


@dataclass
class Feed:
    server: FTPServer
    writer: LogWriter
    root: Path

    def path(self, stream: str) -> Path:
        return self.root / f"{stream}.log"

    def url(self, stream: str) -> str:
        return self.server.url(f"{stream}.log")


@contextlib.contextmanager
def feed(root: Path, streams: list[str] = STREAMS, rate: float = RATE) -> Iterator[Feed]:
    """An anonymous FTP server on a free port and a writer, both threads of this process."""
    root.mkdir(parents=True, exist_ok=True)
    paths = [root / f"{s}.log" for s in streams]
    for p in paths:
        p.touch()
    server = FTPServer(root).start()
    writer = LogWriter(paths, rate=rate, seed=1).start()
    try:
        yield Feed(server, writer, root)
    finally:
        writer.stop()
        server.stop()


def periods(path: Path, start: float, end: float) -> pd.Series:
    """Max value per 25 ms period (index: period start in ms since the epoch) of the lines
    whose period closes within [start, end] (wall-clock seconds)."""
    data = path.read_bytes()
    df = pd.read_csv(io.BytesIO(data), sep=" ", header=None, names=["time", "value"])
    # as_unit: pandas 3 infers microseconds from these strings; asi8 is in that unit.
    t = pd.to_datetime(df["time"], format="ISO8601", utc=True).dt.as_unit("ns").array.asi8 / 1e6
    start_ms = np.floor(t / PERIOD_MS) * PERIOD_MS
    close = (start_ms + PERIOD_MS) / 1000
    keep = (close >= start) & (close <= end)
    return pd.Series(df["value"].to_numpy()[keep], index=start_ms[keep]).groupby(level=0).max()
