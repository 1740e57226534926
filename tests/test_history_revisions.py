"""History of a window that emits early: a revision replaces its row, its further values
and its rollup buckets, exactly once, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import sqlalchemy as sa
from test_early import _lines, _run
from test_history import drain_all, queue

from headrace.etl.contract import history
from headrace.etl.store.sink import Sink, SinkSpec
from headrace.etl.store.state import StateStore
from headrace.etl.windows import Tumbling
from headrace.etl.windows.early import latest


def revisions_replace_rows(tmp_path, url: str) -> None:
    lines = _lines(n=6000, seed=3)  # 6 s of rows: buckets of 1 s and 10 s
    window = Tumbling("100ms", agg=["max", "mean"], grace="200ms", emit="early")
    frames, _ = _run(window, lines, every=53)
    frames = [f for f in frames if len(f)]
    assert sum(int((f["revision"] > 0).sum()) for f in frames) > 50
    store = StateStore(tmp_path / "state")
    sink = Sink(SinkSpec(url))
    half = len(frames) // 2
    queue(store, "w", frames[:half])
    asyncio.run(drain_all(store, {"w": sink}))  # revisions of rows in the database
    queue(store, "w", frames[half - 3 :], first_seq=half - 2)  # three re-queued: written once
    asyncio.run(drain_all(store, {"w": sink}))
    want = latest(frames)
    with sink.engine.connect() as conn:
        rows = pd.read_sql(sa.select(history.rows).order_by("time", "key"), conn)
        means = pd.read_sql(sa.select(history.values).order_by("time", "key"), conn)
        seconds = pd.read_sql(sa.select(history.LEVELS[0].table).order_by("time", "key"), conn)
    assert len(rows) == len(want)
    assert rows["time"].tolist() == want["time"].dt.tz_localize(None).tolist()
    assert rows["key"].tolist() == want["key"].tolist()
    np.testing.assert_allclose(rows["value"], want["value"])
    assert rows["count"].tolist() == want["count"].tolist()
    np.testing.assert_allclose(means["value"], want["value_mean"])
    expected = (
        want.assign(time=want["time"].dt.floor("1s").dt.tz_localize(None))
        .groupby(["time", "key"])
        .agg(value_max=("value", "max"), value_min=("value", "min"), count=("count", "sum"))
        .reset_index()
    )
    assert seconds["time"].tolist() == expected["time"].tolist()
    np.testing.assert_allclose(seconds["value_max"], expected["value_max"])
    np.testing.assert_allclose(seconds["value_min"], expected["value_min"])
    assert seconds["count"].tolist() == expected["count"].tolist()
    store.close()
    sink.engine.dispose()


def test_revisions_replace_rows_and_their_rollups(tmp_path):
    revisions_replace_rows(tmp_path, f"sqlite:///{tmp_path}/h.sqlite")


def test_revisions_replace_rows_in_postgresql(tmp_path, postgres):
    revisions_replace_rows(tmp_path, postgres.create_database("revisions"))
