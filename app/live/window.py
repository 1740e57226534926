"""One stream's recent rows in a Panel process, and the snapshot a new session starts from."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from headrace.app.live.columns import Columns, concat, empty, names_of, take

DEFAULT_SPACING_NS = 25_000_000  # row spacing assumed before a stream has shown its own


@dataclass
class Snapshot:
    """The window of a stream as a new session starts with it.

    ``end`` is the index the next row will get: a listener that registers together with
    the snapshot (under :attr:`headrace.app.live.subscriber.Subscriber.lock`) receives rows from
    exactly ``end`` on.
    """

    columns: Columns
    end: int
    seq: int
    capacity: int  # rows that fit the window at the stream's row spacing


@dataclass
class Window:
    """The newest ``window_ns`` of row time of one stream, as chunks of column arrays."""

    window_ns: int
    rows: int = 0  # index of the next row: rows appended since the process started
    chunks: deque[Columns] = field(default_factory=deque)
    names: list[str] | None = None  # columns besides time, fixed by the first frame
    newest_ns: int | None = None  # newest row time
    spacing_ns: int = DEFAULT_SPACING_NS

    def append(self, columns: Columns) -> int:
        """Add rows; return the index of the first one. Trims rows older than the window."""
        first = self.rows
        n = len(columns["time"])
        self.chunks.append(columns)
        self.rows += n
        times = columns["time"].view("int64")
        self.newest_ns = int(times[-1])
        if n > 1:
            self.spacing_ns = max(1, int(np.median(np.diff(times))))
        cutoff = self.newest_ns - self.window_ns
        # Whole chunks only: a snapshot slices the first one, which keeps appends O(1).
        while len(self.chunks) > 1 and self.chunks[0]["time"][-1].view("int64") < cutoff:
            self.chunks.popleft()
        return first

    def older(self, columns: Columns, or_equal: bool = False) -> int:
        """How many first rows of ``columns`` are older than the newest row held.

        With ``or_equal``, rows as old as it count too.
        """
        if self.newest_ns is None:
            return 0
        times = columns["time"].view("int64")
        return int(np.searchsorted(times, self.newest_ns, side="right" if or_equal else "left"))

    def snapshot(self, seq: int = 0) -> Snapshot:
        capacity = max(1000, int(self.window_ns // self.spacing_ns) + 1)
        if not self.chunks:
            return Snapshot(empty(names_of(self.names)), self.rows, seq, capacity)
        columns = concat(list(self.chunks))
        assert self.newest_ns is not None
        start = int(np.searchsorted(columns["time"].view("int64"), self.newest_ns - self.window_ns))
        return Snapshot(take(columns, start), self.rows, seq, capacity)

    def held(self) -> int:
        """Rows held now (a little more than the window: whole chunks are trimmed)."""
        return sum(len(c["time"]) for c in self.chunks)
