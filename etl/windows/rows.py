"""A window's input rows as arrays (ns times, float values, keys) and back to a frame."""

from __future__ import annotations

import numpy as np
import pandas as pd
from pandas.api.extensions import ExtensionArray

from headrace.etl import pandas_internals as internals
from headrace.etl.contract.frames import REQUIRED, TIME_DTYPE, utc_ns
from headrace.etl.steps import Held

Arrays = tuple[np.ndarray, np.ndarray, ExtensionArray | None]
NAT = np.iinfo(np.int64).min  # NaT as int64
END = np.iinfo(np.int64).max  # after every window start


def arrays(rows: pd.DataFrame) -> Arrays:
    """ns times, float64 values and keys (or None) of a frame of rows."""
    # Columns by position: a name looked up in a new frame's columns first builds their
    # hash table, which cost more than the rest of this on a tick's few rows.
    names = internals.names(rows)
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise ValueError(f"rows lack column(s) {', '.join(missing)}")
    at, vat = names.index("time"), names.index("value")
    times = internals.column(rows, at)
    ns = times.asi8 if times.dtype == TIME_DTYPE else utc_ns(rows.iloc[:, at]).array.asi8
    values = internals.column(rows, vat)
    if not (isinstance(values, np.ndarray) and values.dtype == np.float64):
        values = rows.iloc[:, vat].to_numpy(np.float64)
    keys = rows.iloc[:, names.index("key")].array if "key" in names else None
    return ns, values, keys


def held(rows: Held | pd.DataFrame) -> Arrays:
    """The arrays of a carry's rows (a frame in a carry kept before :class:`Held` was)."""
    return rows.arrays() if isinstance(rows, Held) else arrays(rows)


def join(carried: Arrays, new: Arrays) -> Arrays:
    """The carried rows, then the new ones."""
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


def take(data: Arrays, mask: np.ndarray) -> Arrays:
    times, values, keys = data
    return times[mask], values[mask], None if keys is None else keys[mask]


def frame(data: Arrays) -> pd.DataFrame:
    """Rows as a frame."""
    return Held(*data).frame()


def arrival_marks(times: np.ndarray, before: int | None, per_line: bool) -> np.ndarray:
    """The watermark each row arrives under: the latest time of the rows before it.

    ``per_line``: rows count in their order in the file, as a stream processor sees
    them; otherwise a tick's rows all arrive together, under ``before``.
    """
    start = NAT if before is None else before
    if not per_line or not len(times):
        return np.full(len(times), start, np.int64)
    marks = np.empty(len(times), np.int64)
    marks[0] = start
    np.maximum.accumulate(times[:-1], out=marks[1:])
    return np.maximum(marks, start)


def advanced(mark: int | None, times: np.ndarray, valid: np.ndarray) -> int | None:
    """The watermark ``mark`` moved to the latest of the ``valid`` ``times``."""
    if not valid.any():
        return mark
    top = int(times[valid].max())
    return top if mark is None else max(mark, top)


def idle(bound: float | None, seen: float | None, now: float) -> bool:
    """No rows for ``bound`` seconds of wall clock since ``seen`` (None: no bound)."""
    return bound is not None and seen is not None and now - seen >= bound


def key_arrival_marks(
    times: np.ndarray, keys: ExtensionArray, marks: dict[str, int], per_line: bool
) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """:func:`arrival_marks` per key, each from its key's watermark in ``marks``; and
    each key's rows (positions), for :func:`advanced_keys`."""
    out = np.empty(len(times), np.int64)
    codes, uniques = pd.factorize(keys, use_na_sentinel=False)
    groups = []
    for code, key in enumerate(uniques):
        at = np.flatnonzero(codes == code)
        name = str(key)
        out[at] = arrival_marks(times[at], marks.get(name), per_line)
        groups.append((name, at))
    return out, groups


def advanced_keys(
    marks: dict[str, int],
    times: np.ndarray,
    valid: np.ndarray,
    groups: list[tuple[str, np.ndarray]],
    newest: int | None,
    skew: int,
) -> tuple[dict[str, int], int | None]:
    """Each key's watermark moved by its ``valid`` rows; keys more than ``skew`` behind
    the ``newest`` watermark forgotten (a key that stopped holds nothing back, and its
    state is bounded); and the watermark windows close at: the slowest key's."""
    marks = dict(marks)
    for name, at in groups:
        moved = advanced(marks.get(name), times[at], valid[at])
        if moved is not None:
            marks[name] = moved
    if newest is None:
        return marks, None
    marks = {name: m for name, m in marks.items() if m >= newest - skew}
    return marks, min(marks.values(), default=newest)
