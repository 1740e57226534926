"""FrameStream: the one way both sides use the published frames, with sync and async clients."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster
from helpers import async_wait_for

from headrace.etl import contract


def frame(start: str, n: int) -> pd.DataFrame:
    times = pd.date_range(start, periods=n, freq="25ms", tz="UTC", unit="ns")
    return pd.DataFrame({"time": times, "value": np.arange(n, dtype=float)})


@pytest.mark.timeout(60)
def test_publish_read_head_and_events_per_stream(cluster_options):
    async def main():
        async with (
            LocalCluster(**cluster_options, asynchronous=True) as cluster,
            Client(cluster, asynchronous=True) as client,
        ):
            a = contract.FrameStream("cpu-1", client, ring=3, interval=0.2)
            b = contract.FrameStream("app_log", client)
            mine, every = [], []
            a.subscribe(mine.append)
            b.subscribe(lambda e: None)  # a second stream's handler on the same client
            contract.subscribe_all(client, every.append)
            await asyncio.sleep(0.2)  # the subscriptions reach the scheduler
            for i in range(5):
                event = await a.publish(i + 1, frame(f"2026-01-01T00:00:0{i}", 4))
            await b.publish(1, frame("2026-01-01", 2))
            await async_wait_for(lambda: len(every) == 6, 10, "every event")
            assert [e.seq for e in mine] == [1, 2, 3, 4, 5]  # only its own stream's
            assert {e.stream for e in every} == {"cpu-1", "app_log"}
            assert event == mine[-1]
            assert (event.rows, event.first) == (
                4,
                frame("2026-01-01T00:00:04", 1)["time"][0].value,
            )
            head = await a.head()
            assert (head.seq, head.ring, head.interval) == (5, 3, 0.2)
            assert head.published == event.published
            # The ring keeps the last 3: older frames are gone, which a reader sees as a gap.
            got = await a.read()
            assert [s for s, _ in got] == [3, 4, 5]
            pd.testing.assert_frame_equal(got[-1][1], frame("2026-01-01T00:00:04", 4))
            assert [s for s, _ in await a.read(after=3, until=4)] == [4]
            heads = await contract.heads(client)
            assert set(heads) == {"cpu-1", "app_log"} and heads["app_log"].seq == 1
            assert await contract.FrameStream("nothing", client).head() is None
            [future] = await client.scatter([frame("2026-01-02", 3)], hash=False)
            with pytest.raises(TypeError, match="span"):
                a.publish(6, future)

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_sync_client_and_health(cluster_options):
    with LocalCluster(**cluster_options) as cluster, Client(cluster) as client:
        frames = contract.FrameStream("web-2", client)
        assert frames.health() is None
        frames.publish(1, frame("2026-01-01", 3))
        frames.report_health({"ticks": 7})
        assert frames.head().seq == 1
        assert [s for s, _ in frames.read()] == [1]
        assert frames.health() == {"ticks": 7}


def test_names_are_checked():
    with pytest.raises(ValueError, match="invalid stream name 'CPU'"):
        contract.validate_name("CPU")
    assert contract.validate_name("web-1_a") == "web-1_a"
