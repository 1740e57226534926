"""Transforms: parsed rows -> frames to publish, with state carried between ticks.

A :class:`Transform` is called as ``transform.step(rows, carry) -> Step`` once per tick.
It keeps no state of its own: what one tick leaves for the next goes back in
``Step.carry`` and comes in as ``carry`` (None the first time); the loop keeps it in its
state store across restarts, so it must stay small and picklable. :class:`Map` makes a
transform of a stateless ``DataFrame -> DataFrame`` function.

:class:`Resample` aggregates rows into fixed periods and publishes a period only
once it is closed, i.e. once a row of a later period has been seen. A closed period
is never published again: rows that arrive for it afterwards are dropped and counted
as ``late``, as are rows no period can hold (a NaT time, or one so close to the
earliest datetime64[ns] that its period would start before it). Every input row ends
up in exactly one place:
``sum(frame["count"]) + late`` over all steps ``+ carried`` of the last step equals
the number of rows ever passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar, runtime_checkable

import numpy as np
import pandas as pd
from pandas.api.extensions import ExtensionArray

from headrace.etl.contract.frames import (
    TIME_DTYPE,
    conform,
    empty_frame,
    missing_columns,
    utc_ns,
)

# conform and empty_frame live in the contract (headrace.etl.contract.frames); kept here
# for code that imported them from this module.
__all__ = ["AGGS", "Carry", "Map", "Resample", "Step", "Transform", "conform", "empty_frame"]

AGGS = ("mean", "max", "min", "sum", "last", "first", "median")


@dataclass
class Carry:
    """Resample's state between ticks."""

    rows: pd.DataFrame  # rows of the period still open: time, value and key if any
    # ns since the epoch; periods starting before it are closed, whether or not they
    # had rows, and never published again.
    published_until: int | None = None


C = TypeVar("C")


@dataclass
class Step(Generic[C]):
    """What a transform returns for one tick."""

    frame: pd.DataFrame  # rows to publish, sorted by time, none published before
    carry: C | None  # what the next tick's call gets as ``carry``
    late: int = 0  # input rows dropped: their period was already published (or cannot be)
    carried: int = 0  # rows held in carry


@runtime_checkable
class Transform(Protocol[C]):
    """Parsed rows of one tick -> the frame to publish, with state carried in ``C``."""

    def step(self, rows: pd.DataFrame, carry: C | None) -> Step[C]: ...


class Resample:
    """Aggregate ``value`` per period (per ``key`` and period if rows have a key).

    Periods are aligned to the Unix epoch, like ``Series.dt.floor(period)``, so they
    do not depend on where a tick's rows begin. Output columns: ``time`` (period
    start), ``value`` (the aggregate), ``count`` (rows in the period) and ``key``.
    """

    def __init__(self, period: str | pd.Timedelta = "25ms", agg: str = "mean") -> None:
        if agg not in AGGS:
            raise ValueError(f"unknown agg {agg!r}: use one of {', '.join(AGGS)}")
        step = pd.Timedelta(period)
        if step <= pd.Timedelta(0):
            raise ValueError(f"period must be positive, got {period!r}")
        self.period = step
        self.period_ns = int(step.value)
        self.agg = agg

    def __repr__(self) -> str:
        return f"Resample({str(self.period)!r}, agg={self.agg!r})"

    def step(self, rows: pd.DataFrame, carry: Carry | None = None) -> Step[Carry]:
        times, values, keys = _columns(rows)
        until = carry.published_until if carry is not None else None
        if carry is not None and len(carry.rows):
            times, values, keys = _join(_columns(carry.rows), (times, values, keys))
        starts = times - np.mod(times, self.period_ns)  # floor, also before 1970
        late = starts < until if until is not None else np.zeros(len(times), bool)
        # A floor below int64's range wraps round to the far future, and NaT is int64's
        # minimum: placed, either would be a watermark that makes every later row late.
        # Only times within a period of that minimum can be either (one min() to know).
        if len(times) and times.min() < np.iinfo(np.int64).min + self.period_ns:
            late |= (starts > times) | (times == np.iinfo(np.int64).min)
        closed = still_open = placed = ~late
        if placed.any():
            watermark = int(starts[placed].max())
            closed, still_open = placed & (starts < watermark), placed & (starts == watermark)
            until = watermark if until is None else max(until, watermark)
        kept = _rows(times, values, keys, still_open)
        return Step(
            frame=self._aggregate(times, values, keys, starts, closed),
            carry=Carry(kept, until),
            late=int(late.sum()),
            carried=len(kept),
        )

    def _aggregate(
        self,
        times: np.ndarray,
        values: np.ndarray,
        keys: ExtensionArray | None,
        starts: np.ndarray,
        mask: np.ndarray,
    ) -> pd.DataFrame:
        """One row per (period, key) of the rows in ``mask``, sorted by period then key.

        NaN values are skipped, as pandas does, but counted in ``count``.
        """
        if not mask.all():
            times, values, starts = times[mask], values[mask], starts[mask]
        # Time order within a group, so that first/last mean earliest/latest. Log lines
        # mostly come in time order: then there is nothing to sort.
        if keys is None:
            if len(times) < 2 or bool((times[1:] >= times[:-1]).all()):
                order = slice(None)
            else:
                order = np.lexsort((times, starts))
        else:
            codes, uniques = pd.factorize(keys[mask], sort=True, use_na_sentinel=False)
            order = np.lexsort((times, codes, starts))
            codes = codes[order]
        starts, values = starts[order], values[order]
        new = np.ones(len(values), bool)
        new[1:] = starts[1:] != starts[:-1]
        if keys is not None:
            new[1:] |= codes[1:] != codes[:-1]
        first = np.flatnonzero(new)
        out = {
            "time": pd.array(starts[first].view("M8[ns]"), TIME_DTYPE),
            "value": _reduce(self.agg, values, first) if len(values) else np.empty(0),
            "count": np.diff(np.append(first, len(values))).astype(np.int64),
        }
        if keys is not None:
            out["key"] = uniques.take(codes[first]) if len(values) else keys[:0]
        return pd.DataFrame(out)


_Arrays = tuple[np.ndarray, np.ndarray, ExtensionArray | None]


def _columns(rows: pd.DataFrame) -> _Arrays:
    """ns times, float64 values and keys (or None) of a frame of rows."""
    missing = missing_columns(rows)
    if missing:
        raise ValueError(f"rows lack column(s) {', '.join(missing)}")
    times = rows["time"]
    if times.dtype != TIME_DTYPE:
        times = utc_ns(times)
    keys = rows["key"].array if "key" in rows.columns else None
    return times.array.asi8, rows["value"].to_numpy(np.float64), keys


def _join(carried: _Arrays, new: _Arrays) -> _Arrays:
    times = np.concatenate([carried[0], new[0]])
    values = np.concatenate([carried[1], new[1]])
    if carried[2] is None and new[2] is None:
        return times, values, None
    # A keyed stream can get rows without keys (the empty frame of a parser that
    # failed): missing keys become NaN rather than the key column being dropped.
    dtype = (carried[2] if carried[2] is not None else new[2]).dtype
    keys = [
        pd.Series(k if k is not None else np.nan, index=range(len(t)), dtype=dtype)
        for t, _, k in (carried, new)
    ]
    return times, values, pd.concat(keys, ignore_index=True).array


def _rows(
    times: np.ndarray, values: np.ndarray, keys: ExtensionArray | None, mask: np.ndarray
) -> pd.DataFrame:
    """The rows in ``mask`` as a frame (what the carry holds)."""
    rows = {"time": pd.array(times[mask].view("M8[ns]"), TIME_DTYPE), "value": values[mask]}
    if keys is not None:
        rows["key"] = keys[mask]
    return pd.DataFrame(rows)


def _reduce(agg: str, values: np.ndarray, first: np.ndarray) -> np.ndarray:
    """``agg`` of each run ``values[first[i]:first[i + 1]]``, skipping NaN."""
    n = len(values)
    valid = ~np.isnan(values)
    counts = np.add.reduceat(valid, first)
    if agg in ("max", "min"):
        return (np.fmax if agg == "max" else np.fmin).reduceat(values, first)
    if agg in ("sum", "mean"):
        sums = np.add.reduceat(np.where(valid, values, 0.0), first)
        if agg == "sum":
            return sums
        return np.divide(sums, counts, out=np.full(len(first), np.nan), where=counts > 0)
    if agg in ("first", "last"):
        at = np.where(valid, np.arange(n), n if agg == "first" else -1)
        pick = (np.minimum if agg == "first" else np.maximum).reduceat(at, first)
        return np.where(counts > 0, values[np.clip(pick, 0, n - 1)], np.nan)
    # median: sort each run by value (NaN last), then take its middle
    run = np.repeat(np.arange(len(first)), np.diff(np.append(first, n)))
    ordered = values[np.lexsort((values, run))]
    lo = first + np.maximum(counts - 1, 0) // 2
    hi = first + counts // 2
    return np.where(counts > 0, (ordered[lo] + ordered[np.minimum(hi, n - 1)]) / 2, np.nan)


class Map:
    """A stateless ``DataFrame -> DataFrame`` function as a :class:`Transform` (no carry).

    Its output is checked and coerced to the contract: ``time`` and ``value`` columns
    required (ValueError naming what is missing), ``time`` as datetime64[ns, UTC],
    ``value`` as float64, rows sorted by time.
    """

    def __init__(self, fn: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    def __repr__(self) -> str:
        return f"Map({self.fn!r})"

    def step(self, rows: pd.DataFrame, carry: None = None) -> Step[None]:
        out = conform(self.fn(rows), f"transform {self.__name__!r}")
        out = out.sort_values("time", kind="stable", ignore_index=True)
        return Step(out, None, 0, 0)
