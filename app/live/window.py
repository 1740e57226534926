"""One stream's recent rows in a Panel process, the snapshot a new session starts from, and
what the subscriber knows of the stream (:class:`Feed`)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from headrace.app.live.columns import Columns, concat, empty, names_of, take
from headrace.app.views import freshness
from headrace.etl import contract

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

    def revised(self, columns: Columns) -> tuple[np.ndarray, Columns, Columns]:
        """Apply a frame's revisions: its rows as old as the newest held that replace a
        held row (:meth:`revise`).

        Returns the replaced rows' indices, the rows that replaced them, and the frame's
        other rows. Rows of a window that emits early come again, changed, with the same
        time (and key); its older rows that match no held row (a key or a period first
        seen late) stay in the rest, for the caller to drop as late.
        """
        older = self.older(columns, or_equal=True)
        if not older:
            return np.empty(0, np.int64), take(columns, 0, 0), columns
        indices, found = self.revise(take(columns, 0, older))
        keep = np.ones(len(columns["time"]), bool)
        keep[np.flatnonzero(found)] = False
        rows = {name: array[:older][found] for name, array in columns.items()}
        return indices, rows, {name: array[keep] for name, array in columns.items()}

    def revise(self, columns: Columns) -> tuple[np.ndarray, np.ndarray]:
        """Replace the held rows with the same ``time`` (and ``key``) as rows of ``columns``.

        Returns the replaced rows' indices and which rows of ``columns`` found one. The
        chunks holding them are copied first: sessions and snapshots share the old ones.
        """
        n = len(columns["time"])
        times = columns["time"].view("int64")
        found = np.zeros(n, bool)
        if not n or not self.chunks:
            return np.empty(0, np.int64), found
        tail: list[Columns] = []  # the newest chunks, back to the oldest revised time
        while len(tail) < len(self.chunks):
            tail.insert(0, self.chunks[-1 - len(tail)])
            if tail[0]["time"][0].view("int64") <= times.min():
                break
        held = {name: array.copy() for name, array in concat(tail).items()}
        held_times = held["time"].view("int64")
        keys = held.get("key")
        at = np.full(n, -1, np.int64)
        for i in range(n):
            lo, hi = (
                np.searchsorted(held_times, times[i], "left"),
                np.searchsorted(held_times, times[i], "right"),
            )
            for j in range(lo, hi):  # a period holds one row per key
                if keys is None or keys[j] == columns["key"][i]:
                    at[i] = j
        found = at >= 0
        for name, array in held.items():
            if name in columns:
                array[at[found]] = columns[name][found]
        for _ in tail:
            self.chunks.pop()
        self.chunks.append(held)
        return self.rows - len(held_times) + at[found], found

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


@dataclass
class Feed:
    """What the subscriber knows of one stream: how far fetching is, and the window."""

    name: str
    window: Window
    seq: int = 0  # newest frame ingested (or skipped as unavailable)
    target: int = 0  # newest frame known to exist
    arrived: float | None = None  # wall-clock time the newest rows arrived
    lag: freshness.Lag = field(default_factory=freshness.Lag)
    interval: float = 0.0
    ring: int = contract.DEFAULT_RING
    reset: bool = False  # head went backwards: drop rows not newer than what we have

    def newer(self, columns: Columns) -> tuple[int, Columns]:
        """How many first rows are older than the newest held, and the rows after them."""
        # After a reset, equal times are repeats of rows we hold; otherwise they can be real.
        late = self.window.older(columns, or_equal=self.reset)
        if late < len(columns["time"]):
            # Past the rows we held before the reset: from here on, equal times are real.
            self.reset = False
        return late, take(columns, late) if late else columns
