"""Tumbling and hopping windows over event time, with a grace period and an idle bound.

Windows are aligned to the Unix epoch (a window starts at a multiple of its step, like
``Series.dt.floor``), so they do not depend on where a tick's rows begin. A window
``[start, start + size)`` closes once the watermark, the latest event time seen, reaches
``start + size + grace``; it is then published once and never again. A row is late when
every window that holds it had closed before it came: it is not published, it is
counted, and the loop keeps it as a dead letter (reason ``late``) with how late it was.

Without ``grace`` (Resample's way) the watermark moves once per tick, so rows of one tick
are never late among themselves. With ``grace`` (``0s`` included) it follows the rows in
their order in the file, as a stream processor sees them.

``emit="early"`` publishes open windows too, each change as a revision of its row
(:mod:`headrace.etl.windows.early`).

``key_skew``: a watermark per key. A row is late only when its own key's watermark
had passed its windows (plus the grace): keys whose clocks or pipes lag each other
do not make each other's rows late. Windows close once the slowest key's watermark
passes them, so frames stay in time order; a key more than ``key_skew`` behind the
newest is forgotten (it no longer holds windows open, and its rows are late once
their windows closed).

``idle_close``: when a tick brings no rows and none came for that many seconds (wall
clock), every open window is published, followed by one empty window (``value`` NaN,
``count`` 0) so that a chart shows a gap instead of a line drawn across it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

import headrace.etl.windows.rows as R
from headrace.etl.contract.frames import TIME_DTYPE
from headrace.etl.steps import Carry, Step
from headrace.etl.windows.aggregate import aggregate, aggregations, columns
from headrace.etl.windows.early import emit_mode, revise
from headrace.etl.windows.spec import duration, seconds, text

_NONE = np.empty(0, np.int64)  # a step's late rows when none was late (shared: read-only)
_NONE.flags.writeable = False
MAX_WINDOWS_PER_ROW = 1000


class Window:
    """Windows of ``size`` starting every ``step``, per ``key`` if rows have one.

    Output columns: ``time`` (the window's start), ``value`` (the first aggregation),
    ``value_<agg>`` for each further one, ``count`` (rows in the window) and ``key``.
    """

    def __init__(
        self,
        size: str | pd.Timedelta,
        step: str | pd.Timedelta | None = None,
        *,
        agg: str | Sequence[str] = "max",
        grace: str | pd.Timedelta | None = None,
        idle_close: str | float | None = None,
        emit: str = "final",
        key_skew: str | pd.Timedelta | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.emit = emit_mode(emit)
        self.key_skew_ns = None if key_skew is None else duration(key_skew, "key_skew", zero=True)
        self.size_ns = duration(size, "size")
        self.step_ns = self.size_ns if step is None else duration(step, "step")
        if self.step_ns > self.size_ns:
            raise ValueError(f"step: {text(self.step_ns)} is longer than size {text(self.size_ns)}")
        if -(-self.size_ns // self.step_ns) > MAX_WINDOWS_PER_ROW:
            raise ValueError(
                f"step: {text(self.step_ns)} puts each row in more than {MAX_WINDOWS_PER_ROW}"
                f" windows of {text(self.size_ns)}"
            )
        self.aggs = aggregations(agg)
        self.grace_ns = None if grace is None else duration(grace, "grace", zero=True)
        self.idle_close = None if idle_close is None else seconds(idle_close, "idle_close")
        self.clock = clock

    def __repr__(self) -> str:
        parts = [repr(text(self.size_ns))]
        if self.step_ns != self.size_ns:
            parts.append(f"step={text(self.step_ns)!r}")
        parts.append(f"agg={self.aggs[0] if len(self.aggs) == 1 else list(self.aggs)!r}")
        if self.grace_ns is not None:
            parts.append(f"grace={text(self.grace_ns)!r}")
        if self.idle_close is not None:
            parts.append(f"idle_close={self.idle_close:g}")
        if self.emit != "final":
            parts.append(f"emit={self.emit!r}")
        if self.key_skew_ns is not None:
            parts.append(f"key_skew={text(self.key_skew_ns)!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    @property
    def columns(self) -> list[str]:
        """The aggregations' columns of the frames it publishes."""
        return columns(self.aggs)

    @property
    def ticks_when_idle(self) -> bool:
        """Called on ticks without rows too (the loop asks), to close idle windows."""
        return self.idle_close is not None

    def _until(self, marks: np.ndarray) -> np.ndarray:
        """The first window start still open under each watermark (NaT: none closed)."""
        edge = marks - (self.size_ns + (self.grace_ns or 0))
        out = edge - np.mod(edge, self.step_ns) + self.step_ns
        return np.where(marks > R.NAT + self.size_ns + (self.grace_ns or 0), out, R.NAT)

    def step(self, rows: pd.DataFrame, carry: Carry | None = None) -> Step[Carry]:
        new = R.arrays(rows)
        times = new[0]
        until = carry.published_until if carry is not None else None
        kept = R.held(carry.rows) if carry is not None and len(carry.rows) else None
        mark = carry.watermark if carry is not None else None
        if mark is None and until is not None:  # a carry from before grace existed
            mark = max(until, int(kept[0].max()) if kept is not None else until)
        floor_old = R.NAT if until is None else until
        latest = times - np.mod(times, self.step_ns)  # the last window holding each row
        per_key = self.key_skew_ns is not None and new[2] is not None
        key_marks = (carry.marks if carry is not None else None) or {}
        if per_key:
            marks, groups = R.key_arrival_marks(times, new[2], key_marks, self.grace_ns is not None)
        else:
            marks = R.arrival_marks(times, mark, per_line=self.grace_ns is not None)
        floors = np.maximum(self._until(marks), floor_old)
        # NaT, and times so near int64's minimum that a window would start before it,
        # have no window: late (their floor would wrap round to the far future).
        earliest = latest - (-(-self.size_ns // self.step_ns) - 1) * self.step_ns
        valid = (times != R.NAT) & (latest <= times) & (earliest <= latest)
        late = ~valid | (latest < floors)
        mark = R.advanced(mark, times, valid)
        edge = mark
        if per_key:
            key_marks, edge = R.advanced_keys(
                key_marks, times, valid, groups, mark, self.key_skew_ns
            )
        now_until = (
            floor_old if edge is None else max(int(self._until(np.array([edge]))[0]), floor_old)
        )
        data, data_floors = (R.take(new, ~late), floors[~late]) if late.any() else (new, floors)
        if kept is not None:
            data = R.join(kept, data)
            data_floors = np.concatenate([np.full(len(kept[0]), floor_old), data_floors])
        seen = carry.seen if carry is not None else None
        if len(times):
            seen = self.clock()
        idle = not len(times) and len(data[0]) and R.idle(self.idle_close, seen, self.clock())
        data_latest = data[0] - np.mod(data[0], self.step_ns)
        if idle:
            now_until = int(data_latest.max()) + self.step_ns
        frame = self._closed(data, data_latest, data_floors, now_until)
        if idle:
            frame = self._gap(frame, data[2], now_until)
            now_until += self.step_ns
        kept = data_latest >= now_until
        still_open = R.take(data, kept)
        early = None
        if self.emit == "early":
            opened = self._closed(
                still_open, data_latest[kept], data_floors[kept], R.END, since=now_until
            )
            frame, early = revise(frame, opened, carry.early if carry is not None else None)
        kept_rows = R.Held(*still_open)
        n_late = int(np.count_nonzero(late))
        late_rows, lateness = _NONE, _NONE
        if n_late:
            # How far past the close of its last window the watermark was when the row came.
            past = marks[late] - (latest[late] + self.size_ns + (self.grace_ns or 0))
            late_rows = np.flatnonzero(late)
            lateness = np.where(valid[late], np.maximum(past, 0), -1)
        return Step(
            frame=frame,
            carry=Carry(
                kept_rows,
                None if now_until == R.NAT else now_until,
                mark,
                seen,
                early,
                key_marks or None,
            ),
            late=n_late,
            carried=len(kept_rows),
            late_rows=late_rows,
            lateness=lateness,
        )

    def _closed(
        self,
        data: R.Arrays,
        latest: np.ndarray,
        floors: np.ndarray,
        until: int,
        since: int = R.NAT,
    ) -> pd.DataFrame:
        """The windows from ``since`` to before ``until`` of the rows, each row in those
        open when it came."""
        times, values, keys = data
        floors = np.maximum(floors, since)
        if self.step_ns == self.size_ns:  # tumbling: a row's one window
            mask = (latest >= floors) & (latest < until)
            if mask.all():
                return aggregate(times, values, keys, latest, self.aggs)
            return aggregate(*R.take(data, mask), latest[mask], self.aggs)
        parts = []
        for j in range(-(-self.size_ns // self.step_ns)):
            starts = latest - j * self.step_ns
            mask = (starts + self.size_ns > times) & (starts >= floors) & (starts < until)
            parts.append((np.flatnonzero(mask), starts[mask]))
        at = np.concatenate([p[0] for p in parts])
        starts = np.concatenate([p[1] for p in parts])
        return aggregate(
            times[at], values[at], None if keys is None else keys[at], starts, self.aggs
        )

    def _gap(self, frame: pd.DataFrame, keys: object, start: int) -> pd.DataFrame:
        """One empty window at ``start`` (per key): no rows came there."""
        names = pd.unique(np.asarray(keys, object)) if keys is not None else [None]
        gap = {"time": pd.array(np.full(len(names), start).view("M8[ns]"), TIME_DTYPE)}
        gap.update({c: np.full(len(names), np.nan) for c in self.columns})
        gap["count"] = np.zeros(len(names), np.int64)
        if keys is not None:
            gap["key"] = pd.array(list(names), dtype=frame["key"].dtype)
        return pd.concat([frame, pd.DataFrame(gap)], ignore_index=True)


class Tumbling(Window):
    """Back-to-back windows of ``size``: each row in exactly one."""

    def __init__(self, size: str | pd.Timedelta, **options: object) -> None:
        super().__init__(size, None, **options)  # type: ignore[arg-type]


class Hopping(Window):
    """Windows of ``size`` starting every ``step``: each row in ``size / step`` of them."""

    def __init__(
        self, size: str | pd.Timedelta, step: str | pd.Timedelta, **options: object
    ) -> None:
        super().__init__(size, step, **options)  # type: ignore[arg-type]
