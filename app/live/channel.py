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
    """One stream as every in-sync session has it: the newest ``rollover`` rows, wire form.

    Revised rows (a window that emits early) are replaced in the window and kept as
    numbered patches, which each session gets for the rows its browser already has.
    """

    __slots__ = (
        "end",
        "patched",
        "patches",
        "pending",
        "pending_end",
        "pending_patches",
        "rollover",
        "stream",
    )

    def __init__(self, stream: str, window: Columns, end: int, rollover: int) -> None:
        self.stream = stream
        self.rollover = rollover
        self.window = take(window, max(0, length(window) - rollover))
        self.end = end  # subscriber index of the row after the window's last
        self.pending: list[Columns] = []
        self.pending_end = end
        self._as: dict[tuple[str, ...], Columns] = {}  # the window projected, until it moves
        self.pending_patches: list[tuple[np.ndarray, Columns]] = []
        self.patches: list[tuple[int, np.ndarray, Columns]] = []  # (number, indices, rows)
        self.patched = 0  # the newest patch's number

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

    def locate(self, column: str, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The indices (as :meth:`add`'s) of the last rows whose ``column`` (ascending)
        equals each of ``values``, and which of ``values`` were found."""
        held = self.window.get(column)
        if held is not None and self.pending:
            held = np.concatenate([held, *(rows[column] for rows in self.pending)])
        if held is None or not len(held) or not len(values):
            return np.empty(0, np.int64), np.zeros(len(values), bool)
        at = np.searchsorted(held, values, side="right") - 1
        found = (at >= 0) & (held[np.maximum(at, 0)] == values)
        return self.start + at[found], found

    def patch(self, indices: np.ndarray, rows: Columns) -> None:
        """Queue new values for rows added before (indices as :meth:`add`'s)."""
        self.pending_patches.append((indices, rows))

    def advance(self) -> bool:
        """The pending rows join the window (and the oldest roll out), the pending
        patches replace their rows; False if neither was pending."""
        if not self.pending and not self.pending_patches:
            return False
        grew = bool(self.pending)
        if grew:
            window = concat([self.window, *self.pending])
            self.window = take(window, max(0, length(window) - self.rollover))
            self.end, self.pending = self.pending_end, []
        if self.pending_patches:
            # Sessions' sources and earlier messages share the window's arrays: patched in
            # a copy, unless the rows just added made the window new arrays already.
            if not grew:
                self.window = {name: array.copy() for name, array in self.window.items()}
            self._apply(self.pending_patches)
            self.pending_patches = []
        self._as = {}
        return True

    def _apply(self, patches: list[tuple[np.ndarray, Columns]]) -> None:
        start = self.start
        for indices, rows in patches:
            at = indices - start
            held = (at >= 0) & (at < length(self.window))
            if not held.any():
                continue
            rows = {n: a[held] for n, a in rows.items() if n in self.window and n != "time"}
            for name, values in rows.items():
                self.window[name][at[held]] = values
            self.patched += 1
            self.patches.append((self.patched, indices[held], rows))
        while self.patches and self.patches[0][1].max() < start:  # rolled out for everyone
            self.patches.pop(0)

    def patches_for(self, offset: int, have: int, after: int, columns: list[str]) -> dict:
        """Bokeh patches (``{column: [(index, value)]}``) of the rows a browser holds:
        rows ``offset`` to ``have - 1`` at its indices 0 on, patches numbered after ``after``."""
        out: dict[str, list] = {}
        # Numbered one by one and trimmed from the front: the first after ``after`` is at
        # a known place, so an in-sync session costs nothing for the patches it had.
        first = max(0, after + 1 - self.patches[0][0]) if self.patches else 0
        for _, indices, rows in self.patches[first:]:
            mine = (indices >= offset) & (indices < have)
            if not mine.any():
                continue
            at = (indices[mine] - offset).tolist()
            for name in columns:
                if name in rows:
                    out.setdefault(name, []).extend(zip(at, rows[name][mine].tolist(), strict=True))
        return out

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
    patched = 0  # replaced whole: never patched

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

    def patches_for(self, offset: int, have: int, after: int, columns: list[str]) -> dict:
        return {}
