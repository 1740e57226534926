"""History: frames into SQL exactly once, rollups that keep extremes, long windows read back."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from headrace.etl.contract import history
from headrace.etl.store.sink import Sink, SinkSpec, drain, encode
from headrace.etl.store.state import Checkpoint, StateStore


def frames(n: int, rows: int = 40, start: str = "2026-01-01T00:00:00Z", spike_at: int = 77):
    """``n`` consecutive frames of 25 ms rows; one spike of 5.0 at row ``spike_at``."""
    step = pd.Timedelta("25ms")
    out = []
    for i in range(n):
        times = pd.date_range(pd.Timestamp(start) + i * rows * step, periods=rows, freq=step)
        values = np.full(rows, 0.1) + 0.001 * np.arange(rows)
        if i * rows <= spike_at < (i + 1) * rows:
            values[spike_at - i * rows] = 5.0
        out.append(pd.DataFrame({"time": times, "value": values, "count": np.full(rows, 2)}))
    return out


def queue(store: StateStore, stream: str, batch: list[pd.DataFrame], first_seq: int = 1) -> None:
    for i, frame in enumerate(batch):
        store.save(stream, Checkpoint(next_seq=first_seq + i + 1), 0.0, encode(frame))


async def drain_all(store: StateStore, sinks: dict[str, Sink]) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(drain(store, sinks, stop, idle=0.05))
    for _ in range(200):
        if store.backlog()[0] == 0:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await task


def test_frames_written_once_with_rollups(tmp_path):
    store = StateStore(tmp_path / "state")
    sink = Sink(SinkSpec().defaults(SinkSpec(), tmp_path / "state"))
    batch = frames(10)
    queue(store, "cpu", batch)
    queue(store, "cpu", batch[3:5], first_seq=4)  # re-queued after a crash: same seqs, same rows
    asyncio.run(drain_all(store, {"cpu": sink}))
    assert store.backlog() == (0, 0)
    with sink.engine.connect() as conn:
        got = pd.read_sql(sa.select(history.rows).order_by(history.rows.c.time), conn)
        seconds = pd.read_sql(sa.select(history.LEVELS[0].table), conn)
        written = conn.execute(sa.select(sa.func.count()).select_from(history.frames)).scalar()
    assert written == 10
    assert len(got) == 400 and got["count"].sum() == 800  # every row once
    assert got["seq"].tolist() == [s for s in range(1, 11) for _ in range(40)]
    expected = pd.concat(batch).assign(time=lambda f: f["time"].dt.floor("1s"))
    by_second = expected.groupby("time")["value"].agg(["min", "max", "size", "mean"])
    seconds = seconds.sort_values("time")
    np.testing.assert_allclose(seconds["value_max"], by_second["max"])
    np.testing.assert_allclose(seconds["value_min"], by_second["min"])
    np.testing.assert_allclose(seconds["value_mean"], by_second["mean"])
    assert seconds["periods"].tolist() == by_second["size"].tolist()  # buckets over frames
    assert seconds["value_max"].max() == 5.0


@pytest.mark.parametrize(
    ("hours", "level"),
    [(0.01, "raw"), (0.25, "1s"), (1, "10s"), (3, "1min"), (48, "10min")],
    ids=["raw", "1s", "10s", "1min", "10min"],
)
def test_long_windows_keep_every_spike(tmp_path, hours, level):
    sink = Sink(SinkSpec(f"sqlite:///{tmp_path}/h.sqlite"))
    store = StateStore(tmp_path / "state")
    queue(store, "s", frames(20, rows=200, spike_at=1001))
    asyncio.run(drain_all(store, {"s": sink}))
    reader = history.HistoryReader(sink.engine)
    start = pd.Timestamp("2026-01-01T00:00:00Z")
    window = reader.window("s", start, start + pd.Timedelta(hours=hours), points=100)
    assert window.attrs["level"] == level
    assert len(window) <= 100
    assert window["value"].max() == 5.0  # the spike survives every level
    assert window["value"].min() == pytest.approx(0.1)
    assert window["time"].is_monotonic_increasing


def windowed(batch: list[pd.DataFrame]) -> list[pd.DataFrame]:
    """The frames as a window with ``agg: [max, mean, first]`` per key gives them."""
    return [
        f.assign(value_mean=f["value"] / 2, value_first=np.nan, key=["a", "b"] * (len(f) // 2))
        for f in batch
    ]


def further_columns_written_once_and_read_back(tmp_path, url: str) -> None:
    store = StateStore(tmp_path / "state")
    sink = Sink(SinkSpec(url, retention=pd.Timedelta("1h")))
    now = pd.Timestamp.now(tz="UTC").floor("1s")
    old = windowed(frames(2, start=str(now - pd.Timedelta("5h"))))
    batch = windowed(frames(4, start=str(now - pd.Timedelta("1min"))))
    queue(store, "cpu", old + batch)
    queue(store, "cpu", batch[1:3], first_seq=4)  # re-queued after a crash: written once
    asyncio.run(drain_all(store, {"cpu": sink}))  # writes, then prunes the old ones
    with sink.engine.connect() as conn:
        got = pd.read_sql(sa.select(history.values), conn)
    mean = got[got["name"] == "value_mean"].sort_values(["time", "key"], ignore_index=True)
    want = pd.concat(batch, ignore_index=True)
    assert len(mean) == len(want) == 160 and set(got["name"]) == {"value_mean", "value_first"}
    np.testing.assert_allclose(mean["value"], want["value_mean"])
    assert mean["key"].tolist() == want["key"].tolist()
    assert mean["seq"].tolist() == [s for s in range(3, 7) for _ in range(40)]
    assert got.loc[got["name"] == "value_first", "value"].isna().all()  # NaN as NULL
    reader = history.HistoryReader(sink.engine)
    start, end = now - pd.Timedelta("2h"), now + pd.Timedelta("1min")
    line = reader.window("cpu", start, end, points=1000, key="a", column="value_mean")
    a = want[want["key"] == "a"]
    np.testing.assert_allclose(line["value"], a["value_mean"])
    assert line["time"].tolist() == a["time"].tolist()


def test_further_value_columns_are_written_once_and_read_back(tmp_path):
    further_columns_written_once_and_read_back(tmp_path, f"sqlite:///{tmp_path}/h.sqlite")


def test_further_value_columns_in_postgresql(tmp_path, postgres):
    further_columns_written_once_and_read_back(tmp_path, postgres.create_database("further"))


def test_retention_prunes_old_rows(tmp_path):
    spec = SinkSpec(f"sqlite:///{tmp_path}/h.sqlite", retention=pd.Timedelta("1h"))
    sink = Sink(spec)
    store = StateStore(tmp_path / "state")
    now = pd.Timestamp.now(tz="UTC")
    queue(store, "s", frames(3, start=str(now - pd.Timedelta("5h"))))
    queue(store, "s", frames(3, start=str(now - pd.Timedelta("10min"))), first_seq=4)
    asyncio.run(drain_all(store, {"s": sink}))  # writes, then prunes in slices
    with sink.engine.connect() as conn:
        left = pd.read_sql(sa.select(history.rows.c.time), conn)["time"]
        seconds = pd.read_sql(sa.select(history.LEVELS[0].table.c.time), conn)["time"]
    assert len(left) == 120 and left.min() >= (now - pd.Timedelta("1h")).tz_localize(None)
    assert seconds.min() >= (now - pd.Timedelta("1h")).floor("1s").tz_localize(None)
    assert sink.prune("s", now) == 0  # nothing older is left


def test_sink_settings_are_checked():
    with pytest.raises(ValueError, match="retention"):
        SinkSpec.parse({"retention": "soon"})
    with pytest.raises(ValueError, match="unknown settings"):
        SinkSpec.parse({"uri": "sqlite://"})
    spec = SinkSpec.parse({"url": "postgresql+psycopg://u:pw@db/h", "retention": "30d"})
    assert spec.retention == pd.Timedelta(days=30) and "pw" not in spec.display()


@pytest.mark.fault
@pytest.mark.timeout(120)
def test_database_outage_costs_the_live_path_nothing(
    postgres, ftp_server, ftp_root, tmp_path, cluster_options, capfd
):
    """PostgreSQL down for a while: frames keep being published; the backlog catches up."""
    from distributed import Client, LocalCluster
    from helpers import async_wait_for

    from headrace.cluster.demo.logwriter import LogWriter
    from headrace.cluster.service import serve
    from headrace.etl import contract
    from headrace.etl.streams import Stream

    url = postgres.create_database("outage")
    path = ftp_root / "out.log"
    path.touch()
    stream = Stream("out-1", ftp_server.url("out.log"), interval=0.1)

    async def main():
        async with (
            LocalCluster(**cluster_options, asynchronous=True) as cluster,
            Client(cluster, asynchronous=True) as client,
        ):
            stop = asyncio.Event()
            loop = asyncio.create_task(
                serve(
                    [stream],
                    cluster.scheduler_address,
                    tmp_path / "state",
                    ring=10_000,
                    stop=stop,
                    sink=SinkSpec(url),
                )
            )
            frames = contract.FrameStream("out-1", client)

            async def seq() -> int:
                head = await frames.head()
                return head.seq if head else 0

            with LogWriter([path], rate=200):
                # The backlog holds the last half second's frames while the sink keeps up.
                await async_wait_for(lambda: written() > 0, 30, "history written")
                postgres.stop()
                try:
                    during = await seq()
                    await asyncio.sleep(3)  # the outage: the database stays down 3 s
                    assert await seq() >= during + 15  # ~30 ticks: the live path goes on
                    assert store().backlog()[0] >= 10  # ... and frames wait on disk
                finally:
                    postgres.start()
            await async_wait_for(lambda: store().backlog()[0] == 0, 60, "the backlog written")
            stop.set()
            await loop
            return await frames.read()

    state = StateStore(tmp_path / "state")

    def store() -> StateStore:
        return state

    engine = sa.create_engine(url, pool_pre_ping=True)

    def written() -> int:
        try:
            with engine.connect() as conn:
                return conn.execute(sa.select(sa.func.count()).select_from(history.frames)).scalar()
        except sa.exc.DBAPIError:  # down, or no tables yet
            return 0

    published = asyncio.run(main())
    with engine.connect() as conn:
        kept = pd.read_sql(sa.select(history.rows), conn)
    engine.dispose()
    rows = pd.concat([f for _, f in published])
    assert written() == len(published) and len(kept) == len(rows)
    assert kept["count"].sum() == rows["count"].sum()
    # The writer is a process of its own: its lines are on the inherited stderr.
    written_log = capfd.readouterr().err
    assert "history: write failed" in written_log and "reachable again" in written_log


def test_a_window_asked_by_many_sessions_is_read_once(tmp_path):
    from headrace.app.views.history import HistoryCache

    sink = Sink(SinkSpec(f"sqlite:///{tmp_path}/h.sqlite"))
    store = StateStore(tmp_path / "state")
    queue(store, "s", frames(20, rows=200, spike_at=1001))
    asyncio.run(drain_all(store, {"s": sink}))
    cache = HistoryCache(f"sqlite:///{tmp_path}/h.sqlite")
    # Off the 1.8 s grid 1 h / 2,000 points rounds to, so every ask below rounds alike.
    start = pd.Timestamp("2026-01-01T00:00:00.5Z")

    async def main():
        # 30 sessions within a second or so ask for "the last hour": one read for all.
        asks = [
            cache.window(
                "s",
                start + pd.Timedelta(milliseconds=i),
                start + pd.Timedelta(hours=1, milliseconds=i),
            )
            for i in range(30)
        ]
        return await asyncio.gather(*asks)

    got = asyncio.run(main())
    assert cache.stats == {"asked": 30, "read": 1}
    assert all(g is got[0] for g in got) and got[0]["value"].max() == 5.0


def test_the_schema_compiles_for_sql_server_and_postgresql():
    from sqlalchemy.dialects import mssql, postgresql
    from sqlalchemy.schema import CreateTable

    for dialect in (mssql.dialect(), postgresql.dialect()):
        ddl = [str(CreateTable(t).compile(dialect=dialect)) for t in history.metadata.sorted_tables]
        assert len(ddl) == 3 + len(history.LEVELS)
    assert "DATETIME2(6)" in str(CreateTable(history.rows).compile(dialect=mssql.dialect()))
