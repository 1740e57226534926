"""Rows as the app holds and sends them: a dict of column arrays, ``time`` first.

Bokeh sends numpy float and datetime arrays as binary buffers (lists and object arrays
go as JSON), so rows stay numpy from the fetched frame to ``cds.stream``. The frames
come as the contract defines them (:mod:`headrace.etl.contract.frames`); the columns keep
their names.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from headrace.etl.contract.frames import TIME, VALUE

Columns = dict[str, np.ndarray]


def names_of(names: list[str] | None) -> list[str]:
    """The columns a stream's rows carry: ``time``, then ``names`` (before any: ``value``)."""
    return [TIME, *(names or [VALUE])]


def frame_columns(frame: pd.DataFrame, names: list[str] | None = None) -> Columns:
    """Column arrays of ``frame`` in the form Bokeh sends as binary buffers.

    ``time`` becomes tz-naive ``datetime64[ns]`` (UTC), every other numeric column
    ``float64`` and any other column (``key``) an array of ``str``: live views split
    and label series by it; a source fed by stream name leaves it out
    (:meth:`headrace.app.live.fanout.Fanout.register`). ``names`` fixes the column set (a
    stream's first frame decides it) so every batch streams into the same
    ``ColumnDataSource``.
    """
    times = frame[TIME]
    if isinstance(times.dtype, pd.DatetimeTZDtype):
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    columns: Columns = {TIME: times.to_numpy(dtype="datetime64[ns]")}
    if names is None:
        names = [c for c in frame.columns if c != TIME]
    for name in names:
        if name not in frame:
            columns[name] = np.full(len(frame), np.nan)
        elif numeric(frame[name]):
            columns[name] = frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            columns[name] = frame[name].astype(str).to_numpy(dtype=object)
    return columns


def numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)


def empty(names: list[str]) -> Columns:
    """No rows, with ``names`` as columns (``time`` as datetime64[ns], the rest float64)."""
    return {n: np.array([], dtype="datetime64[ns]" if n == TIME else "float64") for n in names}


def concat(chunks: list[Columns]) -> Columns:
    if len(chunks) == 1:
        return chunks[0]
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}


def take(columns: Columns, start: int, stop: int | None = None) -> Columns:
    return {name: array[start:stop] for name, array in columns.items()}


def to_wire(columns: Columns) -> Columns:
    """``columns`` with datetimes as float ms since the epoch, as Bokeh sends them.

    Done once per batch for the whole process, not by Bokeh once per session.
    """
    from bokeh.util.serialization import convert_datetime_array

    if not any(a.dtype.kind == "M" for a in columns.values()):
        return columns
    return {n: convert_datetime_array(a) if a.dtype.kind == "M" else a for n, a in columns.items()}
