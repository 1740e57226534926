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


class AsofJoin:
    """Each ``left`` row with the latest ``right`` row within ``tolerance`` before it."""

    def __init__(
        self,
        left: str,
        right: str,
        tolerance: str | pd.Timedelta,
        grace: str | None = None,
        wait: str | pd.Timedelta = "5s",
    ) -> None:
        if left == right:
            raise ValueError(f"left and right: the same stream {left!r}")
        self.left, self.right = left, right
        self.tolerance_ns = duration(tolerance, "tolerance", zero=True)
        self.grace_ns = 0 if grace is None else duration(grace, "grace", zero=True)
        self.wait_ns = duration(wait, "wait")

    def __repr__(self) -> str:
        return (
            f"AsofJoin(left={self.left!r}, right={self.right!r}, "
            f"tolerance={text(self.tolerance_ns)!r})"
        )

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
            ready |= times + self.grace_ns <= mark
        out = self._join(left[ready].sort_values("time", kind="stable"), right, cols)
        waiting = left[~ready].reset_index(drop=True)
        emitted = carry.emitted
        if len(out):
            emitted = int(out["time"].array.asi8.max())
        # Right rows a left row may still match: from the oldest it could be, minus the
        # tolerance, keeping the last row before that per key.
        oldest = [int(waiting["time"].array.asi8.min())] if len(waiting) else []
        oldest += [emitted] if emitted is not None else []
        right = _keep_from(right, min(oldest) - self.tolerance_ns if oldest else None)
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


def _keep_from(right: pd.DataFrame, start: int | None) -> pd.DataFrame:
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
