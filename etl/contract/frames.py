"""The frames the loop publishes: their columns and dtypes, defined and checked here.

A frame is a ``pandas.DataFrame`` with

- ``time``: datetime64[ns, UTC], sorted ascending (a period's start for aggregating
  transforms);
- ``value``: float64;
- optionally ``count`` (int64: log lines in the period, from aggregating transforms) and
  ``key`` (the series, when one file carries several); other columns pass through;
- with windows that emit early (``emit: early``), ``revision`` (int64): 0 for a row
  published for the first time, n for its n-th change, which replaces the row with the
  same ``time`` and ``key`` (:func:`headrace.etl.windows.early.latest` applies them);

and otherwise only rows not published before. :func:`empty_frame` makes one without rows;
:func:`conform` checks and coerces what user code returns (a parser's or a ``Map``'s
function), naming who returned it and the column at fault.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

TIME, VALUE, COUNT, KEY, REVISION = "time", "value", "count", "key", "revision"
REQUIRED = (TIME, VALUE)
TIME_DTYPE = pd.DatetimeTZDtype("ns", "UTC")
VALUE_DTYPE = np.dtype(np.float64)
COUNT_DTYPE = np.dtype(np.int64)


def empty_frame(extra: dict[str, str] | None = None) -> pd.DataFrame:
    """A frame with no rows and the contract's columns, plus ``extra`` {name: dtype}."""
    columns = {TIME: pd.Series(dtype=TIME_DTYPE), VALUE: pd.Series(dtype=VALUE_DTYPE)}
    columns.update({name: pd.Series(dtype=dtype) for name, dtype in (extra or {}).items()})
    return pd.DataFrame(columns)


def utc_ns(times: pd.Series) -> pd.Series:
    """Times as datetime64[ns, UTC]; naive times are taken as UTC."""
    return pd.to_datetime(times, utc=True).dt.as_unit("ns")


def missing_columns(frame: pd.DataFrame) -> list[str]:
    """The required columns (``time``, ``value``) that ``frame`` lacks."""
    return [c for c in REQUIRED if c not in frame.columns]


def conform(frame: object, who: str) -> pd.DataFrame:
    """``frame`` with ``time`` as datetime64[ns, UTC] and ``value`` as float64.

    TypeError or ValueError, naming ``who`` and what is wrong, if it is not a frame,
    lacks either column, or a column does not convert (the error names it).
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{who} returned {type(frame).__name__}")
    missing = missing_columns(frame)
    if missing:
        raise ValueError(f"{who} returned a frame without column(s) {', '.join(missing)}")
    if frame[TIME].dtype == TIME_DTYPE and frame[VALUE].dtype == VALUE_DTYPE:
        return frame
    converted = {}
    for column, convert, dtype in (
        (TIME, utc_ns, TIME_DTYPE),
        (VALUE, lambda s: s.astype(VALUE_DTYPE), VALUE_DTYPE),
    ):
        try:
            converted[column] = convert(frame[column])
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(
                f"{who} returned times or values that do not convert: column {column!r} "
                f"is not {dtype}: {exc}"
            ) from None
    return frame.assign(**converted)
