"""Rows into the history tables: inserts, revisions that replace rows, and the rollups.

A rollup bucket is merged with new rows as they come (min, max, sums and counts combine
without reading the rows again). A revision (a window published early, then changed:
:mod:`headrace.etl.windows.early`) replaces its row, and the buckets holding it are
computed again from ``headrace_rows``: a maximum cannot be taken back out of a bucket.
Everything here runs inside the sink's transaction, so it happens exactly once.
"""

from __future__ import annotations

import pandas as pd
import sqlalchemy as sa

from headrace.etl.contract import history

KEYS = ["stream", "key", "time"]
# How buckets of the same stream, key and time combine: what makes rollups mergeable.
_COMBINE = {
    "value_min": ("value_min", "min"),
    "value_max": ("value_max", "max"),
    "value_sum": ("value_sum", "sum"),
    "periods": ("periods", "sum"),
    "count": ("count", "sum"),
}


def records(frame: pd.DataFrame) -> list[dict]:
    """Rows as SQLAlchemy parameters: NaN as NULL, datetimes as Python datetimes."""
    out = frame.astype(object).where(frame.notna(), None).to_dict("records")
    for record in out:
        for name, value in record.items():
            if isinstance(value, pd.Timestamp):
                record[name] = value.to_pydatetime()
    return out


def write(conn: sa.Connection, rows: pd.DataFrame, further: list[pd.DataFrame]) -> None:
    """Insert ``rows`` (``headrace_rows``' columns, and ``revision`` if revised) and their
    further values, replacing the rows that revisions revise, and roll them up."""
    values = pd.concat(further) if further else None
    revised = rows[rows["revision"] > 0] if "revision" in rows else rows.iloc[:0]
    if len(revised):
        # A batch can hold a window's several revisions: the last one stands.
        rows = rows.drop_duplicates(KEYS, keep="last")
        if values is not None:
            values = values.drop_duplicates([*KEYS, "name"], keep="last")
        for table in (history.rows, history.values):
            _delete(conn, table, revised)
    rows = rows.drop(columns="revision", errors="ignore")
    if values is not None:
        conn.execute(sa.insert(history.values), records(values))
    if len(rows):
        conn.execute(sa.insert(history.rows), records(rows))
        for level in history.LEVELS:
            again = _buckets_of(revised, level)
            untouched = rows
            if len(again):
                _compute_again(conn, level, again)  # from every row they hold, these included
                untouched = rows[~_in(_floored(rows, level), again)]
            _merge(conn, level, untouched)


def _delete(conn: sa.Connection, table: sa.Table, rows: pd.DataFrame) -> None:
    t = table.c
    where = sa.and_(
        t.stream == sa.bindparam("b_stream"),
        t.key == sa.bindparam("b_key"),
        t.time == sa.bindparam("b_time"),
    )
    params = records(rows[KEYS].drop_duplicates().add_prefix("b_"))
    conn.execute(sa.delete(table).where(where), params)


def combine(parts: pd.DataFrame) -> pd.DataFrame:
    """Buckets with the same stream, key and time as one (NaN values skipped)."""
    out = parts.groupby(KEYS).agg(**_COMBINE).reset_index()
    return out.assign(value_mean=out["value_sum"] / out["periods"])


def buckets(new: pd.DataFrame, level: history.Level) -> pd.DataFrame:
    """Rows as ``level``'s buckets: each row a bucket of one period, then combined."""
    value = new["value"]
    return combine(
        pd.DataFrame(
            {
                "stream": new["stream"],
                "key": new["key"],
                "time": _floored(new, level)["time"],
                "value_min": value,
                "value_max": value,
                "value_sum": value,
                "periods": 1,
                "count": new["count"],
            }
        )
    )


def _floored(rows: pd.DataFrame, level: history.Level) -> pd.DataFrame:
    times = pd.to_datetime(rows["time"]).dt.floor(pd.Timedelta(seconds=level.width))
    return rows[["stream", "key"]].assign(time=times)


def _buckets_of(rows: pd.DataFrame, level: history.Level) -> pd.DataFrame:
    return _floored(rows, level).drop_duplicates() if len(rows) else rows[KEYS]


def _in(rows: pd.DataFrame, of: pd.DataFrame) -> pd.Series:
    index = pd.MultiIndex.from_frame(of[KEYS])
    return pd.Series(pd.MultiIndex.from_frame(rows[KEYS]).isin(index), index=rows.index)


def _merge(conn: sa.Connection, level: history.Level, new: pd.DataFrame) -> None:
    # Read, merge, replace the buckets these rows touch: plain SQL every database has
    # (SQL Server has no ON CONFLICT), safe because one sink writes a stream at a time.
    if not len(new):
        return
    t, add = level.table, buckets(new, level)
    for (stream, key), part in add.groupby(["stream", "key"]):
        lo, hi = part["time"].min().to_pydatetime(), part["time"].max().to_pydatetime()
        where = sa.and_(t.c.stream == stream, t.c.key == key, t.c.time.between(lo, hi))
        old = pd.DataFrame(conn.execute(sa.select(t).where(where)).mappings().all())
        merged = combine(pd.concat([old, part], ignore_index=True)) if len(old) else part
        if len(old):
            conn.execute(sa.delete(t).where(where))
        conn.execute(sa.insert(t), records(merged))


def _compute_again(conn: sa.Connection, level: history.Level, again: pd.DataFrame) -> None:
    """Buckets ``again`` (stream, key, time) from the rows they hold now."""
    t, r = level.table, history.rows
    width = pd.Timedelta(seconds=level.width)
    for (stream, key), part in again.groupby(["stream", "key"]):
        starts = [s.to_pydatetime() for s in part["time"]]
        lo, hi = min(starts), (part["time"].max() + width).to_pydatetime()
        mine = sa.and_(r.c.stream == stream, r.c.key == key, r.c.time >= lo, r.c.time < hi)
        query = sa.select(r.c.stream, r.c.key, r.c.time, r.c.value, r.c.count).where(mine)
        raw = pd.DataFrame(conn.execute(query).mappings().all())
        conn.execute(sa.delete(t).where(t.c.stream == stream, t.c.key == key, t.c.time.in_(starts)))
        if not len(raw):
            continue
        raw = raw.assign(time=pd.to_datetime(raw["time"]), value=raw["value"].astype(float))
        raw = raw[_in(_floored(raw, level), part).to_numpy()]
        if len(raw):
            conn.execute(sa.insert(t), records(buckets(raw, level)))
