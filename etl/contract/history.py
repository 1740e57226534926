"""Frames kept in a SQL database: the schema other programs read, and long-window reads.

The loop's sink (:mod:`headrace.etl.store.sink`) writes every published frame once; anything that
speaks SQL reads it. Times are UTC without a zone (``TIMESTAMP``/``DATETIME2``).

``headrace_rows``: every published row.
    ``stream``, ``key`` ('' for streams without keys), ``time`` (the period start),
    ``value``, ``count`` (log lines in the period), ``seq`` (the frame it came in).
``headrace_rollup_1s``, ``_10s``, ``_1min``, ``_10min``: rows per bucket, written as rows
    arrive.
    ``stream``, ``key``, ``time`` (bucket start), ``value_min``, ``value_max``,
    ``value_mean``, ``value_sum``, ``periods`` (rows in the bucket), ``count`` (lines).
``headrace_values``: a frame's further value columns (``value_<agg>`` of a window with
    more than one aggregation, ``value_<stream>`` of a join), one row per row and column:
    ``stream``, ``key``, ``time``, ``name`` (the column), ``value``, ``seq``. Raw rows only:
    the rollups summarise ``value``.
``headrace_frames``: one row per frame written: ``stream``, ``seq``, ``rows``,
    ``first_time``, ``last_time``, ``written_at``. The sink writes a frame's rows only if
    its ``(stream, seq)`` is not here yet, in the same transaction: exactly once.

:class:`HistoryReader` answers "stream s from t0 to t1 in about n points" from the
finest table that fits and keeps every extreme: each bucket's min and max, then
min-max downsampling (``tsdownsample``), never decimation or means alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import mssql

PREFIX = "headrace"
_TIME = sa.DateTime().with_variant(mssql.DATETIME2(precision=6), "mssql")
_NAME = sa.String(64)
_KEY = sa.String(200)

metadata = sa.MetaData()

rows = sa.Table(
    f"{PREFIX}_rows",
    metadata,
    sa.Column("stream", _NAME, nullable=False),
    sa.Column("key", _KEY, nullable=False, server_default=""),
    sa.Column("time", _TIME, nullable=False),
    sa.Column("value", sa.Float),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Index(f"ix_{PREFIX}_rows_stream_time", "stream", "time"),
)

values = sa.Table(
    f"{PREFIX}_values",
    metadata,
    sa.Column("stream", _NAME, nullable=False),
    sa.Column("key", _KEY, nullable=False, server_default=""),
    sa.Column("time", _TIME, nullable=False),
    sa.Column("name", _NAME, nullable=False),
    sa.Column("value", sa.Float),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Index(f"ix_{PREFIX}_values_stream_name_time", "stream", "name", "time"),
)

frames = sa.Table(
    f"{PREFIX}_frames",
    metadata,
    sa.Column("stream", _NAME, primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("first_time", _TIME),
    sa.Column("last_time", _TIME),
    sa.Column("written_at", _TIME, nullable=False),
)


@dataclass(frozen=True)
class Level:
    """A rollup table: rows grouped into buckets of ``width`` seconds."""

    name: str
    width: float
    table: sa.Table


def _rollup(name: str) -> sa.Table:
    return sa.Table(
        f"{PREFIX}_rollup_{name}",
        metadata,
        sa.Column("stream", _NAME, primary_key=True),
        sa.Column("key", _KEY, primary_key=True),
        sa.Column("time", _TIME, primary_key=True),
        sa.Column("value_min", sa.Float),
        sa.Column("value_max", sa.Float),
        sa.Column("value_mean", sa.Float),
        sa.Column("value_sum", sa.Float, nullable=False),
        sa.Column("periods", sa.BigInteger, nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
    )


# A tenfold or sixfold step between levels: any window reads between ~2,000 and ~20,000
# buckets for 2,000 points.
LEVELS = tuple(
    Level(name, width, _rollup(name))
    for name, width in (("1s", 1.0), ("10s", 10.0), ("1min", 60.0), ("10min", 600.0))
)
RAW_SPACING = 0.025  # seconds between rows assumed when choosing a level (25 ms periods)


def create(engine: sa.Engine) -> None:
    """Create the tables that are missing (never alters existing ones)."""
    metadata.create_all(engine)


def choose(span: float, points: int) -> Level | None:
    """The coarsest level that still gives ``points`` buckets over ``span`` s; None: raw rows."""
    if span / RAW_SPACING <= 2 * points:
        return None
    fitting = [level for level in LEVELS if span / level.width >= points]
    return fitting[-1] if fitting else None


def _naive(t: pd.Timestamp) -> pd.Timestamp:
    t = pd.Timestamp(t)
    return (t.tz_convert("UTC") if t.tzinfo else t).tz_localize(None)


class HistoryReader:
    """Long windows of a stream from the database, extremes kept. Thread-safe."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    @classmethod
    def from_url(cls, url: str | sa.URL) -> HistoryReader:
        return cls(sa.create_engine(url, pool_pre_ping=True))

    def window(
        self,
        stream: str,
        start: pd.Timestamp,
        end: pd.Timestamp,
        points: int = 2000,
        key: str = "",
        column: str = "value",
    ) -> pd.DataFrame:
        """``time`` (UTC) and ``value`` of ``stream`` in ``[start, end)``, at most ~``points`` rows.

        Each bucket gives its min and max; the frame's ``attrs["level"]`` names the
        table read ("raw", "1s", "1min"). ``column``: a further column of the stream's
        frames (``value_mean``), read from its raw rows and downsampled the same way.
        """
        start, end = _naive(start), _naive(end)
        # Further columns have raw rows only; raw rows are their own min and max.
        level = choose((end - start).total_seconds(), points) if column == "value" else None
        if level is None:
            table = rows if column == "value" else values
            columns = [table.c.time, table.c.value, table.c.value]
        else:
            table = level.table
            columns = [table.c.time, table.c.value_min, table.c.value_max]
        query = (
            sa.select(*columns)
            .where(table.c.stream == stream, table.c.key == key)
            .where(table.c.time >= start.to_pydatetime(), table.c.time < end.to_pydatetime())
            .where(*([values.c.name == column] if table is values else []))
            .order_by(table.c.time)
        )
        with self.engine.connect() as conn:
            got = conn.execute(query).all()
        times = np.array([r[0] for r in got], dtype="datetime64[ns]")
        lows = np.array([r[1] for r in got], dtype=float)
        highs = np.array([r[2] for r in got], dtype=float)
        frame = envelope(times, lows, highs, points)
        frame.attrs["level"] = "raw" if level is None else level.name
        return frame


def envelope(times: np.ndarray, lows: np.ndarray, highs: np.ndarray, points: int) -> pd.DataFrame:
    """A line through each bucket's min and max, downsampled to ``points`` keeping extremes."""
    if len(times) and not np.array_equal(lows, highs, equal_nan=True):
        # Min then max within a bucket, at its start: the line spans the bucket's range.
        times = np.repeat(times, 2)
        values = np.column_stack([lows, highs]).ravel()
    else:
        values = lows
    ok = ~np.isnan(values)
    times, values = times[ok], values[ok]
    n_out = max(4, points - points % 2)  # min-max takes two points per bin
    if len(values) > n_out:
        from tsdownsample import MinMaxDownsampler

        keep = np.sort(MinMaxDownsampler().downsample(times.view("int64"), values, n_out=n_out))
        times, values = times[keep], values[keep]
    return pd.DataFrame({"time": pd.to_datetime(times).tz_localize("UTC"), "value": values})
