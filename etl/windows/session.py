"""Session windows: rows of a key less than ``gap`` apart make one session.

A session closes once the watermark (the latest event time seen) reaches its last row's
time plus ``gap`` plus ``grace``; it is published then, once, as one row: ``time`` (its
last row's time: sessions close in that order, so frames stay in time order), ``start``
(its first row's time), the aggregations, ``count`` and ``key``. A row is late when the
session it would start or join had closed before it came: it is counted and kept as a
dead letter, not published. What a key leaves behind once its sessions closed is kept
only as long as a row could still be mistaken for a new session (``gap`` + ``grace``
behind the watermark), so keys seen once cost nothing for long.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

import headrace.etl.windows.rows as R
from headrace.etl.contract.frames import TIME_DTYPE
from headrace.etl.steps import Step
from headrace.etl.windows.aggregate import aggregate, aggregations, columns
from headrace.etl.windows.early import emit_mode
from headrace.etl.windows.spec import duration, seconds, text


@dataclass
class SessionCarry:
    rows: pd.DataFrame  # rows of sessions still open
    closed: dict = field(default_factory=dict)  # key -> last published session's end + gap
    watermark: int | None = None
    seen: float | None = None  # wall-clock time rows last came (for idle_close)


class Session:
    """Session windows of ``gap``, per ``key`` if rows have one."""

    def __init__(
        self,
        gap: str | pd.Timedelta,
        *,
        agg: str | Sequence[str] = "max",
        grace: str | pd.Timedelta | None = None,
        idle_close: str | float | None = None,
        emit: str = "final",
        key_skew: str | pd.Timedelta | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if key_skew is not None:
            # Sessions close by one watermark, in the order of their last rows, which keeps
            # frames in time order; a key's own would publish them out of that order.
            raise ValueError("key_skew: is for tumbling and hopping windows")
        if emit_mode(emit) != "final":
            # A session's start and end move as rows join or merge it: an early result
            # would have no fixed time to revise.
            raise ValueError(
                "emit: early is for tumbling and hopping windows; a session window is "
                "published once closed"
            )
        self.gap_ns = duration(gap, "gap")
        self.aggs = aggregations(agg)
        self.grace_ns = None if grace is None else duration(grace, "grace", zero=True)
        self.idle_close = None if idle_close is None else seconds(idle_close, "idle_close")
        self.clock = clock

    def __repr__(self) -> str:
        agg = self.aggs[0] if len(self.aggs) == 1 else list(self.aggs)
        extra = "" if self.grace_ns is None else f", grace={text(self.grace_ns)!r}"
        return f"Session({text(self.gap_ns)!r}, agg={agg!r}{extra})"

    @property
    def columns(self) -> list[str]:
        return ["start", *columns(self.aggs)]

    @property
    def ticks_when_idle(self) -> bool:
        return self.idle_close is not None

    def step(self, rows: pd.DataFrame, carry: SessionCarry | None = None) -> Step[SessionCarry]:
        carry = carry or SessionCarry(R.frame(R.arrays(rows.iloc[:0])))
        new = R.arrays(rows)
        times, keys = new[0], new[2]
        reach = self.gap_ns + (self.grace_ns or 0)
        marks = R.arrival_marks(times, carry.watermark, per_line=self.grace_ns is not None)
        valid = times != R.NAT
        closed = dict(carry.closed)
        carried = R.arrays(carry.rows) if len(carry.rows) else None
        late = self._late(times, keys, marks, valid, carried, closed)
        mark = R.advanced(carry.watermark, times, valid)
        data = R.take(new, ~late)
        if carried is not None:
            data = R.join(carried, data)
        seen = self.clock() if len(times) else carry.seen
        idle = not len(times) and R.idle(self.idle_close, seen, self.clock())
        frame, kept, closed = self._sessions(data, mark, idle, closed)
        if mark is not None:  # past gap + grace behind the watermark, rule one covers a key
            closed = {k: v for k, v in closed.items() if v + reach > mark}
        past = np.where(valid[late], np.maximum(marks[late] - (times[late] + reach), 0), -1)
        return Step(
            frame=frame,
            carry=SessionCarry(R.frame(kept), closed, mark, seen),
            late=int(late.sum()),
            carried=len(kept[0]),
            late_rows=np.flatnonzero(late),
            lateness=past,
        )

    def _late(
        self,
        times: np.ndarray,
        keys: object,
        marks: np.ndarray,
        valid: np.ndarray,
        carried: R.Arrays | None,
        closed: dict,
    ) -> np.ndarray:
        """Which rows came after the session they start or join had closed, line by line.

        A key's open sessions are kept as [first, last] intervals; those whose last row
        plus gap plus grace the watermark passed close as the key's next row comes (the
        same as closing them as the watermark moves: only that key's rows can join them).
        ``closed`` gets each key's last closed session's end + gap.
        """
        gap, reach = self.gap_ns, self.gap_ns + (self.grace_ns or 0)
        spans: dict = {}
        if carried is not None:
            ct, _, ck = carried
            for k, t in sorted(zip(_keys(ck, len(ct)), ct.tolist(), strict=True), key=_by_key):
                ivs = spans.setdefault(_key(k), [])
                if ivs and t - ivs[-1][1] <= gap:
                    ivs[-1][1] = t
                else:
                    ivs.append([t, t])
        late = ~valid
        for i, (t, m, k) in enumerate(
            zip(times.tolist(), marks.tolist(), _keys(keys, len(times)), strict=True)
        ):
            if late[i]:
                continue
            if m != R.NAT and t + reach <= m:
                late[i] = True
                continue
            k = _key(k)
            ivs = spans.setdefault(k, [])
            while ivs and ivs[0][1] + reach <= m:
                closed[k] = max(closed.get(k, R.NAT), ivs.pop(0)[1] + gap)
            if t <= closed.get(k, R.NAT):
                late[i] = True
                continue
            _insert(ivs, t, gap)
        return late

    def _sessions(
        self, data: R.Arrays, mark: int | None, idle: bool, closed: dict
    ) -> tuple[pd.DataFrame, R.Arrays, dict]:
        """The sessions that closed (as a frame), the rows of those still open, ``closed``."""
        times, values, keys = data
        if keys is not None:
            codes, _ = pd.factorize(keys, sort=True, use_na_sentinel=False)
            order = np.lexsort((times, codes))
        else:
            codes, order = np.zeros(len(times), np.int64), np.argsort(times, kind="stable")
        t, c = times[order], codes[order]
        new = np.ones(len(t), bool)
        new[1:] = (c[1:] != c[:-1]) | (t[1:] - t[:-1] > self.gap_ns)
        session = np.cumsum(new) - 1
        first = np.flatnonzero(new)
        last = np.maximum.reduceat(t, first) if len(t) else t
        reach = self.gap_ns + (self.grace_ns or 0)
        shut = (
            np.ones(len(first), bool)
            if idle
            else (np.zeros(len(first), bool) if mark is None else last + reach <= mark)
        )
        done = np.zeros(len(times), bool)
        done[order] = shut[session]
        at = np.flatnonzero(done)
        by_row_end = np.empty(len(times), np.int64)
        by_row_end[order] = last[session]
        sub_keys = None if keys is None else keys[at]
        frame = aggregate(times[at], values[at], sub_keys, by_row_end[at], self.aggs)
        starts = pd.DataFrame({"end": last[shut], "start": t[first][shut]})
        if keys is not None:
            starts["key"] = keys[order][first][shut]
            for k, end in zip(starts["key"], starts["end"], strict=True):
                closed[_key(k)] = max(closed.get(_key(k), R.NAT), int(end) + self.gap_ns)
        elif shut.any():
            closed[None] = max(closed.get(None, R.NAT), int(last[shut].max()) + self.gap_ns)
        starts = starts.sort_values(["end", "key"] if keys is not None else ["end"], kind="stable")
        frame.insert(1, "start", pd.array(starts["start"].to_numpy().view("M8[ns]"), TIME_DTYPE))
        return frame, R.take(data, ~done), closed


def _insert(ivs: list[list[int]], t: int, gap: int) -> None:
    """Add a row at ``t`` to sorted, gap-separated intervals, merging what it bridges."""
    j = bisect.bisect_right(ivs, [t, np.iinfo(np.int64).max])
    if j and t - ivs[j - 1][1] <= gap:
        j -= 1
        ivs[j][1] = max(ivs[j][1], t)
    elif j < len(ivs) and ivs[j][0] - t <= gap:
        ivs[j][0] = t
    else:
        ivs.insert(j, [t, t])
        return
    while j + 1 < len(ivs) and ivs[j + 1][0] - ivs[j][1] <= gap:
        ivs[j][1] = max(ivs[j][1], ivs.pop(j + 1)[1])
    while j and ivs[j][0] - ivs[j - 1][1] <= gap:
        ivs[j - 1][1] = max(ivs[j - 1][1], ivs.pop(j)[1])
        j -= 1


def _by_key(item: tuple) -> tuple:
    return (str(_key(item[0])), item[1])


def _keys(keys: object, n: int) -> list:
    return [None] * n if keys is None else list(keys)


def _key(k: object) -> object:
    return None if k is None or (isinstance(k, float) and np.isnan(k)) else k
