"""Aggregations of a window's rows: names, output columns and the vectorised reductions.

A window has one or more aggregations. The first gives the frame's ``value`` column
(what every view and the history database read); each further one adds a column
``value_<agg>``. ``m4`` stands for max, min, first and last, in that order: ``value``
is then the window's maximum, so a spike survives at every window size, and the
columns ``value_min``, ``value_first`` and ``value_last`` let a view draw the M4 shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from pandas.api.extensions import ExtensionArray

from headrace.etl import pandas_internals as internals

AGGS = ("mean", "max", "min", "sum", "last", "first", "median", "count")
M4 = ("max", "min", "first", "last")


def aggregations(agg: str | Sequence[str], where: str = "agg") -> tuple[str, ...]:
    """``agg`` as a tuple of known aggregations (``m4`` expanded); ValueError naming it."""
    names = [agg] if isinstance(agg, str) else list(agg)
    if not names:
        raise ValueError(f"{where}: at least one aggregation, one of {', '.join(AGGS)} or m4")
    out: list[str] = []
    for name in names:
        if not isinstance(name, str) or (name not in AGGS and name != "m4"):
            raise ValueError(f"{where}: unknown aggregation {name!r}: use {', '.join(AGGS)} or m4")
        for one in M4 if name == "m4" else (name,):
            if one not in out:
                out.append(one)
    return tuple(out)


def columns(aggs: Sequence[str]) -> list[str]:
    """The frame's column for each aggregation: ``value``, then ``value_<agg>``."""
    return ["value"] + [f"value_{a}" for a in aggs[1:]]


def aggregate(
    times: np.ndarray,
    values: np.ndarray,
    keys: ExtensionArray | None,
    starts: np.ndarray,
    aggs: Sequence[str],
) -> pd.DataFrame:
    """One row per (start, key), sorted by start then key: ``time`` (the start), the
    aggregations' columns, ``count`` (rows, NaN values included) and ``key``.

    NaN values are skipped, as pandas does. Within a group, time order decides first
    and last; log lines mostly come in time order, and then nothing is sorted.
    """
    if keys is None:
        if len(times) < 2 or bool(
            (times[1:] >= times[:-1]).all() and (starts[1:] >= starts[:-1]).all()
        ):
            order: slice | np.ndarray = slice(None)
        else:
            order = np.lexsort((times, starts))
    else:
        codes, uniques = pd.factorize(keys, sort=True, use_na_sentinel=False)
        order = np.lexsort((times, codes, starts))
        codes = codes[order]
    starts, values = starts[order], values[order]
    new = np.ones(len(values), bool)
    new[1:] = starts[1:] != starts[:-1]
    if keys is not None:
        new[1:] |= codes[1:] != codes[:-1]
    first = np.flatnonzero(new)
    count = np.empty(len(first), np.int64)  # each run's length (np.diff of an append: 3x)
    count[:-1] = first[1:] - first[:-1]
    count[-1:] = len(values) - first[-1:]
    out: dict[str, np.ndarray | ExtensionArray] = {"time": internals.times(starts[first])}
    for name, column in zip(aggs, columns(aggs), strict=True):
        if not len(values):
            out[column] = np.empty(0)
        elif name == "count":
            out[column] = np.add.reduceat(~np.isnan(values), first).astype(np.float64)
        else:
            out[column] = reduce(name, values, first)
    out["count"] = count
    if keys is not None:
        out["key"] = uniques.take(codes[first]) if len(values) else keys[:0]
    return internals.frame(out)


def reduce(agg: str, values: np.ndarray, first: np.ndarray) -> np.ndarray:
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
