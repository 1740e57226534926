"""One stream as every in-sync session of a process has it, and the rows a session lacks.

The fan-out (:mod:`headrace.app.live.fanout`) keeps one :class:`Channel` per stream. Indices are the
subscriber's (row ``i`` is the ``i``-th row the process ingested for the stream), so a
session is described by one number per stream: the first row its browser does not have.
"""

from __future__ import annotations

import numpy as np

from headrace.app.live.columns import Columns, concat, take


class Projected:
    """A window that sessions take with their sources' columns, projected once per window."""

    __slots__ = ("_as", "window")

    def window_as(self, columns: list[str]) -> Columns:
        """The window with exactly ``columns``, made once per window for all sessions."""
        key = tuple(columns)
        projected = self._as.get(key)
        if projected is None:
            projected = self._as[key] = project(self.window, columns)
        return projected


class Channel(Projected):
    """One stream as every in-sync session has it: the newest ``rollover`` rows, wire form."""

    __slots__ = ("end", "pending", "pending_end", "rollover", "stream")

    def __init__(self, stream: str, window: Columns, end: int, rollover: int) -> None:
        self.stream = stream
        self.rollover = rollover
        self.window = take(window, max(0, length(window) - rollover))
        self.end = end  # subscriber index of the row after the window's last
        self.pending: list[Columns] = []
        self.pending_end = end
        self._as: dict[tuple[str, ...], Columns] = {}  # the window projected, until it moves

    @property
    def start(self) -> int:
        return self.end - length(self.window)

    def add(self, rows: Columns, first: int) -> bool:
        """Queue rows (subscriber indices from ``first``); False if they were all known."""
        n = length(rows)
        if first + n <= self.pending_end:
            return False
        if first < self.pending_end:
            rows = take(rows, self.pending_end - first)
        self.pending.append(rows)
        self.pending_end = first + n
        return True

    def advance(self) -> bool:
        """The pending rows join the window (and the oldest roll out); False if none."""
        if not self.pending:
            return False
        window = concat([self.window, *self.pending])
        self.window = take(window, max(0, length(window) - self.rollover))
        self.end, self.pending = self.pending_end, []
        self._as = {}
        return True

    def newest(self) -> float:
        """The newest row's time (ms since the epoch, as Bokeh has it), 0 when empty."""
        times = self.window.get("time")
        return float(times[-1]) if times is not None and len(times) else 0.0

    def since(self, index: int, columns: list[str]) -> Columns:
        """The window's rows from ``index`` on (all of it if ``index`` rolled out)."""
        rows = take(self.window, max(0, index - self.start))
        return project(rows, columns)


def length(rows: Columns) -> int:
    """Rows in ``rows`` (a view's source may have no ``time`` column: ``x``, ``y0``...)."""
    return len(next(iter(rows.values()))) if rows else 0


def project(rows: Columns, columns: list[str]) -> Columns:
    """``rows`` with exactly ``columns`` (missing ones NaN), as a source holds them."""
    if list(rows) == columns:
        return rows
    n = length(rows)
    return {c: rows[c] if c in rows else np.full(n, np.nan) for c in columns}


class Replaced(Projected):
    """A source whose data is replaced each tick (a histogram of the last minute).

    The same interface as :class:`Channel` for the fan-out: ``end`` counts replacements,
    and a session behind by any number of them gets the newest data whole (a
    ``ColumnDataChanged``, encoded once for every session that needs it).
    """

    __slots__ = ("end", "pending", "stream")
    rollover = None  # replace, not stream
    start = 0  # nothing rolls out: a session is never told it skipped rows

    def __init__(self, stream: str, window: Columns) -> None:
        self.stream = stream
        self.window = window
        self.end = 1
        self.pending: Columns | None = None
        self._as: dict[tuple[str, ...], Columns] = {}

    def replace(self, data: Columns) -> None:
        self.pending = data

    def advance(self) -> bool:
        if self.pending is None:
            return False
        self.window, self.pending = self.pending, None
        self.end += 1
        self._as = {}
        return True

    def newest(self) -> float:
        return 0.0  # not a live row's time: kept out of the latency figures

    def since(self, index: int, columns: list[str]) -> Columns:
        return self.window_as(columns)
