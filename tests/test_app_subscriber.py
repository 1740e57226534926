"""The per-process subscriber against a real Dask cluster and a synthetic publisher."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster
from helpers import Publisher, async_wait_for, count_dataset_gets, free_port

from headrace.app.live.columns import frame_columns
from headrace.app.live.fanout import Fanout
from headrace.app.live.subscriber import Subscriber
from headrace.app.live.window import Window
from headrace.app.views.freshness import Lag, describe
from headrace.etl import contract


def published_ns(publisher: Publisher, seqs=None) -> np.ndarray:
    return frame_columns(publisher.rows(seqs))["time"].view("int64")


def window_ns(subscriber: Subscriber, stream: str) -> np.ndarray:
    return subscriber.snapshot(stream).columns["time"].view("int64")


async def publish_without_event(client: Client, publisher: Publisher) -> int:
    """Publish the next frame's dataset and head but lose its event, as a dropped message."""

    async def lost(topic: str, msg: dict) -> None:
        pass

    client.log_event = lost  # the one fault here that cannot be provoked for real
    try:
        return await publisher.publish(client)
    finally:
        del client.log_event


@pytest.mark.timeout(60)
def test_each_frame_fetched_once_duplicates_ignored_gaps_filled(caplog, cluster_options):
    caplog.set_level(logging.INFO, logger="headrace.app")

    async def main():
        async with (
            LocalCluster(**cluster_options, asynchronous=True) as cluster,
            Client(cluster, asynchronous=True) as client,
        ):
            gets = count_dataset_gets(cluster.scheduler)
            publisher = Publisher("syn")
            for _ in range(3):  # published before the subscriber starts: read from the ring
                await publisher.publish(client)
            # A long poll interval: only events drive fetches after the first poll.
            subscriber = Subscriber(cluster.scheduler_address, window=600, poll_interval=60)
            batches = []
            subscriber.add_listener(lambda stream, rows, first: batches.append((first, rows)))
            subscriber.start()
            try:
                await async_wait_for(
                    lambda: subscriber.info()["streams"].get("syn", {}).get("seq") == 3,
                    10,
                    "the ring read",
                )
                for _ in range(3):
                    seq = await publisher.publish(client)
                    await async_wait_for(
                        lambda seq=seq: subscriber.info()["streams"]["syn"]["seq"] == seq,
                        10,
                        f"frame {seq}, fetched on its event",
                    )
                # A frame published again under its seq (a loop restarted after a crash).
                await publisher.publish(client, publisher.frames[5], seq=5)
                lost = await publish_without_event(client, publisher)
                await publisher.publish(client)  # its event shows the gap
                await publisher.publish(client)
                await async_wait_for(
                    lambda: subscriber.info()["streams"]["syn"]["seq"] == publisher.seq,
                    10,
                    "all frames",
                )
                await asyncio.sleep(0.3)  # late duplicates would land now
            finally:
                await subscriber.close()

            names = {contract.dataset_name("syn", s): s for s in publisher.frames}
            assert {names[n]: c for n, c in gets.items()} == dict.fromkeys(publisher.frames, 1)
            assert subscriber.stats["duplicates"] >= 1
            assert subscriber.stats["gaps"] == 1
            assert subscriber.stats["frames"] == publisher.seq
            assert f"gap: stream syn seq {lost + 1} after {lost - 1}" in caplog.text
            # Every published row once, in order, in the window and through the listener.
            expected = published_ns(publisher)
            np.testing.assert_array_equal(window_ns(subscriber, "syn"), expected)
            firsts = [first for first, _ in batches]
            sizes = [len(rows["time"]) for _, rows in batches]
            assert firsts == list(np.cumsum([0, *sizes[:-1]]))
            streamed = np.concatenate([rows["time"].view("int64") for _, rows in batches])
            np.testing.assert_array_equal(streamed, expected)

    asyncio.run(main())


def test_window_keeps_the_newest_seconds_of_row_time():
    window = Window(window_ns=int(1e9))
    start = pd.Timestamp("2026-01-01", tz="UTC")
    for i in range(40):  # 4 s of rows at 25 ms, in frames of 4
        times = pd.date_range(start + pd.Timedelta(milliseconds=100 * i), periods=4, freq="25ms")
        window.append(frame_columns(pd.DataFrame({"time": times, "value": np.arange(4.0)})))
    snap = window.snapshot()
    times = snap.columns["time"]
    newest = times[-1]
    assert newest == np.datetime64("2026-01-01T00:00:03.975")
    assert times[0] == newest - np.timedelta64(1000, "ms")  # the cutoff row itself is kept
    assert len(times) == 41
    assert snap.end == 160  # indices count every row ever ingested
    assert window.held() <= 41 + 4  # whole old frames are dropped as they age out
    assert snap.capacity >= 1000


def test_fanout_drops_sinks_of_gone_documents():
    import gc

    from bokeh.document import Document
    from bokeh.models import ColumnDataSource

    subscriber = Subscriber("tcp://127.0.0.1:1", window=60)
    fanout = Fanout(subscriber)
    keep = Document()
    fanout.register("s", keep, ColumnDataSource())
    fanout.register("s", Document(), ColumnDataSource())
    gc.collect()
    frame = pd.DataFrame(
        {"time": pd.date_range("2026", periods=3, freq="25ms"), "value": [1.0, 2.0, 3.0]}
    )
    subscriber.ingest("s", 1, frame)
    assert fanout.sinks("s") == 1  # the gone document's sink went with its first update


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "down",
    [
        pytest.param(0.0, id="quick"),
        pytest.param(7.0, id="client-gives-up", marks=pytest.mark.slow),
    ],
)
def test_scheduler_restart_resubscribes_and_resumes(caplog, down, cluster_options):
    """A new scheduler on the same address; after 7 s down the client has closed (5 s timeout)."""
    caplog.set_level(logging.INFO, logger="headrace.app")
    port = free_port()
    cluster_args = {**cluster_options, "scheduler_port": port, "asynchronous": True}

    async def main():
        publisher = Publisher("restart", interval=0.1)
        stop = asyncio.Event()
        cluster = await LocalCluster(**cluster_args)
        subscriber = Subscriber(cluster.scheduler_address, window=600, poll_interval=0.5)
        subscriber.start()
        task = asyncio.create_task(publisher.run(cluster.scheduler_address, stop))
        try:
            await async_wait_for(lambda: subscriber.stats["frames"] >= 5, 20, "frames")
            await cluster.close()
            before = publisher.seq  # later frames can only go to the new scheduler
            await asyncio.sleep(down)  # the outage: nothing on the scheduler's address
            cluster = await LocalCluster(**cluster_args)  # same address, new scheduler
            await async_wait_for(lambda: publisher.seq >= before + 10, 30, "publishing again")
            stop.set()
            await task
            # Compared with every frame published, so wait for the last one too.
            await async_wait_for(
                lambda: subscriber.info()["streams"]["restart"]["seq"] == publisher.seq,
                20,
                "the subscriber to catch up",
            )
        finally:
            stop.set()
            await task
            info = subscriber.info()
            await subscriber.close()
            await cluster.close()
        assert info["subscriptions"] == 2, info
        assert info["connects"] == (2 if down else 1), info
        # Resumed: every frame published after the restart arrived, rows in time order.
        times = window_ns(subscriber, "restart")
        assert np.all(np.diff(times) > 0)
        after = [s for s in publisher.frames if s > before]
        np.testing.assert_array_equal(
            times[-len(published_ns(publisher, after)) :], published_ns(publisher, after)
        )
        assert ("reconnecting" if down else "resubscribing") in caplog.text

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_head_going_backwards_is_followed_without_repeating_rows(caplog, cluster_options):
    """State wiped upstream: a publisher starts again at seq 1 with partly repeated rows."""
    caplog.set_level(logging.INFO, logger="headrace.app")

    async def main():
        async with (
            LocalCluster(**cluster_options, asynchronous=True) as cluster,
            Client(cluster, asynchronous=True) as client,
        ):
            first = Publisher("again")
            subscriber = Subscriber(cluster.scheduler_address, window=600, poll_interval=0.3)
            subscriber.start()
            try:
                for _ in range(6):
                    await first.publish(client)
                await async_wait_for(
                    lambda: subscriber.info()["streams"].get("again", {}).get("seq") == 6,
                    10,
                    "the first run",
                )
                second = Publisher("again")
                second.next_time = first.frames[5]["time"].iloc[0]  # repeats frames 5 and 6
                await second.publish(client)
                await async_wait_for(  # the poll sees head 1 < 6 and fetches it
                    lambda: subscriber.info()["streams"]["again"]["seq"] == 1,
                    10,
                    "the subscriber to follow the new numbering",
                )
                for _ in range(3):
                    await second.publish(client)
                await async_wait_for(
                    lambda: subscriber.info()["streams"]["again"]["seq"] == 4, 10, "the second run"
                )
            finally:
                await subscriber.close()
            times = window_ns(subscriber, "again")
            assert np.all(np.diff(times) > 0)  # nothing repeated, nothing out of order
            assert times[-1] == published_ns(second)[-1]
            assert "reset: stream again head seq 1 below ours 6" in caplog.text

    asyncio.run(main())


def test_freshness_lines():
    now = 1_800_000_000.0
    assert describe(None, None) == "waiting for data"
    assert describe(0.14, now - 0.1, 0.2, now) == "live, 0.2 s behind"
    assert describe(0.2, now - 0.1, 0.2, now) == "live, 0.2 s behind"
    # Coarser steps as the delay grows: jitter under load does not change the text.
    assert describe(0.41, now - 0.1, 0.2, now) == "live, 0.5 s behind"
    assert describe(0.62, now - 0.1, 0.2, now) == "live, 0.8 s behind"
    assert describe(0.9, now - 0.1, 0.2, now) == "live, 1 s behind"
    assert describe(75, now - 0.1, 0.2, now) == "live, 75 s behind"
    assert describe(0.3, now - 12.4, 0.2, now) == "stale: no data for 12 s"
    # A slow stream is not stale before a few of its own ticks have passed.
    assert describe(0.1, now - 8, 2.0, now) == "live, 0.1 s behind"


def test_behind_is_the_worst_recent_delay():
    def ns(t: float) -> int:
        return int(t * 1e9)

    now = 1_800_000_000.0
    lag = Lag(window=5)
    assert lag.worst() is None
    lag.add(now - 10, ns(now - 12))  # a 2 s delay, long ago
    lag.add(now, ns(now - 0.1))
    assert lag.worst() == pytest.approx(0.1)  # the old delay no longer counts
    lag.add(now + 0.2, ns(now - 0.05))
    lag.add(now + 0.4, ns(now + 0.35))
    assert lag.worst() == pytest.approx(0.25)  # steady between frames: the text stays put
