"""Joins of two streams by time, for a derived stream reading both (``stream://a,b``).

Rows come with an ``input`` column naming their stream. :class:`AsofJoin` gives each
row of ``left`` the latest row of ``right`` (of the same ``key``, if rows have one) at
or before its time and within ``tolerance``: ``time``, ``value`` and ``key`` are the left
row's, ``value_<right>`` the right row's value (NaN when none is close enough). A left
row waits until the right stream's watermark reaches its time plus ``grace``, so a
right row that comes a little late still counts; then it is published, once. Right rows
older than any left row could still want are let go, so the state stays bounded. If
the right stream falls behind or stops, a left row waits at most ``wait`` of event time:
once the left stream's own watermark is that far past it, it is published with what
there is. Both bounds are of event time, so a replayed tick, or ticks cut elsewhere,
give the same rows.

:class:`IntervalJoin` gives every pair of a ``left`` and a ``right`` row (of the same
``key``) at most ``within`` apart, in either direction: one row per pair, at the left
row's time, with ``time_<right>`` the right row's time; a left row without a partner
gives none (an inner join). A left row waits until the right stream's watermark reaches
its time plus ``within`` plus ``grace``, or the left stream's is ``wait`` past it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from headrace.etl.contract.frames import TIME_DTYPE, utc_ns
from headrace.etl.steps import Step
from headrace.etl.windows.spec import duration, text


@dataclass
class JoinCarry:
    left: pd.DataFrame  # left rows waiting for the right stream to pass them
    right: pd.DataFrame  # right rows a waiting or future left row may match
    right_mark: int | None = None  # the right stream's latest time seen
    emitted: int | None = None  # the latest left time published
    left_mark: int | None = None  # the left stream's latest time seen


class _Join:
    """What both joins share: the two sides' watermarks, waiting left rows, bounded right
    rows, late left rows. A join says how far past a left row the right stream must be
    before the row is published (:attr:`ahead_ns`), how far before it right rows still
    match (:attr:`behind_ns`), and how it matches (:meth:`_join`)."""

    ahead_ns = behind_ns = 0

    def __init__(self, left: str, right: str, grace: str | None, wait: str | pd.Timedelta) -> None:
        if left == right:
            raise ValueError(f"left and right: the same stream {left!r}")
        self.left, self.right = left, right
        self.grace_ns = 0 if grace is None else duration(grace, "grace", zero=True)
        self.wait_ns = duration(wait, "wait")

    @property
    def column(self) -> str:
        return f"value_{self.right}"

    def step(self, rows: pd.DataFrame, carry: JoinCarry | None = None) -> Step[JoinCarry]:
        if rows["time"].dtype != TIME_DTYPE:
            rows = rows.assign(time=utc_ns(rows["time"]))
        cols = ["time", "value", *(["key"] if "key" in rows.columns else [])]
        side = rows["input"] if "input" in rows.columns else pd.Series("", index=rows.index)
        new_left, new_right = rows.loc[side == self.left, cols], rows.loc[side == self.right, cols]
        if carry is None:
            carry = JoinCarry(new_left.iloc[:0], new_right.iloc[:0])
        mark, left_mark = carry.right_mark, carry.left_mark
        if len(new_right):
            top = int(new_right["time"].max().value)
            mark = top if mark is None else max(mark, top)
        if len(new_left):
            top = int(new_left["time"].max().value)
            left_mark = top if left_mark is None else max(left_mark, top)
        # A left row older than one already published would come out of order: late.
        left = pd.concat([carry.left, new_left], ignore_index=True)
        late = np.zeros(len(left), bool)
        if carry.emitted is not None:
            late[len(carry.left) :] = new_left["time"].array.asi8 < carry.emitted
        left = left[~late]
        right = pd.concat([carry.right, new_right], ignore_index=True).sort_values(
            "time", kind="stable", ignore_index=True
        )
        times = left["time"].array.asi8
        ready = (
            np.zeros(len(left), bool) if left_mark is None else times + self.wait_ns <= left_mark
        )
        if mark is not None:
            ready |= times + self.ahead_ns + self.grace_ns <= mark
        out = self._join(left[ready].sort_values("time", kind="stable"), right, cols)
        waiting = left[~ready].reset_index(drop=True)
        emitted = carry.emitted
        if len(out):
            emitted = int(out["time"].array.asi8.max())
        # Right rows a left row may still match: from the oldest it could be, minus how
        # far back a right row matches (an as-of join also keeps the last before that).
        oldest = [int(waiting["time"].array.asi8.min())] if len(waiting) else []
        oldest += [emitted] if emitted is not None else []
        right = self._keep_from(right, min(oldest) - self.behind_ns if oldest else None)
        late_rows = np.flatnonzero(late[len(carry.left) :])
        return Step(
            frame=out,
            carry=JoinCarry(waiting, right, mark, emitted, left_mark),
            late=len(late_rows),
            carried=len(waiting),
            late_rows=new_left.index.to_numpy()[late_rows] if len(late_rows) else late_rows,
            lateness=np.full(len(late_rows), -1),
        )

    def _join(self, left: pd.DataFrame, right: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
        raise NotImplementedError

    def _keep_from(self, right: pd.DataFrame, start: int | None) -> pd.DataFrame:
        """Right rows from time ``start`` (None: all)."""
        if start is None or not len(right):
            return right
        return right[right["time"].array.asi8 >= start].reset_index(drop=True)


class AsofJoin(_Join):
    """Each ``left`` row with the latest ``right`` row within ``tolerance`` before it."""

    def __init__(
        self,
        left: str,
        right: str,
        tolerance: str | pd.Timedelta,
        grace: str | None = None,
        wait: str | pd.Timedelta = "5s",
    ) -> None:
        super().__init__(left, right, grace, wait)
        self.tolerance_ns = self.behind_ns = duration(tolerance, "tolerance", zero=True)

    def __repr__(self) -> str:
        return (
            f"AsofJoin(left={self.left!r}, right={self.right!r}, "
            f"tolerance={text(self.tolerance_ns)!r})"
        )

    def _join(self, left: pd.DataFrame, right: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
        by = "key" if "key" in cols else None
        matched = pd.merge_asof(
            left,
            right.rename(columns={"value": self.column}),
            on="time",
            by=by,
            tolerance=pd.Timedelta(self.tolerance_ns, "ns"),
            direction="backward",
            allow_exact_matches=True,
        )
        matched["time"] = matched["time"].astype(TIME_DTYPE)
        return matched[["time", "value", self.column, *(["key"] if by else [])]].reset_index(
            drop=True
        )

    def _keep_from(self, right: pd.DataFrame, start: int | None) -> pd.DataFrame:
        """Right rows from ``start``, and the last before it (per key): a left row's match."""
        if start is None or not len(right):
            return right
        times = right["time"].array.asi8
        keep = times >= start
        if "key" in right.columns:
            before = right[~keep].groupby("key", sort=False).tail(1)
            return pd.concat([before, right[keep]]).sort_values(
                "time", kind="stable", ignore_index=True
            )
        last = np.flatnonzero(~keep)
        if len(last):
            keep[last[-1]] = True
        return right[keep].reset_index(drop=True)


class IntervalJoin(_Join):
    """Every pair of a ``left`` and a ``right`` row at most ``within`` apart (per key)."""

    def __init__(
        self,
        left: str,
        right: str,
        within: str | pd.Timedelta,
        grace: str | None = None,
        wait: str | pd.Timedelta = "5s",
    ) -> None:
        super().__init__(left, right, grace, wait)
        self.within_ns = self.ahead_ns = self.behind_ns = duration(within, "within", zero=True)

    def __repr__(self) -> str:
        return (
            f"IntervalJoin(left={self.left!r}, right={self.right!r}, "
            f"within={text(self.within_ns)!r})"
        )

    @property
    def time_column(self) -> str:
        return f"time_{self.right}"

    def _join(self, left: pd.DataFrame, right: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
        keyed = "key" in cols
        groups = right.groupby("key", sort=False) if keyed else [(None, right)]
        by_key = {key: part for key, part in groups}
        pairs = []
        for key, part in left.groupby("key", sort=False) if keyed else [(None, left)]:
            other = by_key.get(key)
            if other is not None and len(other):
                pairs.append(self._pairs(part, other))
        columns = ["time", "value", self.column, self.time_column, *(["key"] if keyed else [])]
        if not pairs:
            times = left["time"].iloc[:0]
            none = {
                "time": times,
                "value": left["value"].iloc[:0],
                self.column: [],
                self.time_column: times,
                "key": left.get("key", times).iloc[:0],
            }
            return pd.DataFrame({c: none[c] for c in columns}).astype({self.column: "float64"})
        out = pd.concat(pairs, ignore_index=True)
        return out.sort_values(["time", self.time_column], kind="stable", ignore_index=True)[
            columns
        ]

    def _pairs(self, left: pd.DataFrame, right: pd.DataFrame) -> pd.DataFrame:
        """Each left row repeated once per right row within reach, beside it."""
        right = right.sort_values("time", kind="stable")
        theirs, ours = right["time"].array.asi8, left["time"].array.asi8
        lo = np.searchsorted(theirs, ours - self.within_ns, side="left")
        hi = np.searchsorted(theirs, ours + self.within_ns, side="right")
        counts = hi - lo
        mine = np.repeat(np.arange(len(left)), counts)
        # The right rows lo..hi-1 of each left row, laid end to end.
        starts = np.repeat(lo - (np.cumsum(counts) - counts), counts)
        partner = starts + np.arange(int(counts.sum()))
        out = left.iloc[mine].reset_index(drop=True)
        out[self.column] = right["value"].to_numpy()[partner]
        out[self.time_column] = right["time"].iloc[partner].to_numpy()
        return out
