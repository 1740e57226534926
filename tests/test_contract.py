"""FrameStream: the one way both sides use the published frames, with sync and async clients."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import replace

import msgpack
import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster
from helpers import async_wait_for, topic_subscribers

from headrace.app.live.subscriber import Subscriber
from headrace.etl import contract
from headrace.etl.contract.health import HealthRecord, Sample, statuses
from headrace.etl.contract.version import SchemaVersionError
from headrace.etl.loop.health import Health
from headrace.etl.parse.parser import Malformed


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
            await async_wait_for(
                lambda: client.id in topic_subscribers(cluster.scheduler, contract.TOPIC),
                10,
                "the subscription to reach the scheduler",
            )
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
        frames.report_health(HealthRecord("web-2", ticks=7))
        assert frames.head().seq == 1
        assert [s for s, _ in frames.read()] == [1]
        assert frames.health().ticks == 7
        # Every field goes to the scheduler and back as it was.
        record = replace(full_record(), stream="web-2")
        frames.report_health(record)
        assert frames.health() == record
        assert contract.health_records(client) == {"web-2": record}


def test_names_are_checked():
    with pytest.raises(ValueError, match="invalid stream name 'CPU'"):
        contract.validate_name("CPU")
    assert contract.validate_name("web-1_a") == "web-1_a"


def full_record() -> HealthRecord:
    return HealthRecord(
        stream="cpu",
        published=12,
        ticks=30,
        overruns=1,
        lines=400,
        blank=2,
        rows=12,
        malformed=3,
        late=1,
        transfers=29,
        bytes=9000,
        failures=2,
        error="SourceError: gone",
        error_since=1000.5,
        last_published=999.0,
        last_tick=1001.0,
        samples=(Sample("ftp://h/cpu.log", 25, "does not match pattern", "not a log line 25"),),
        since_start={"lines": 40, "malformed": 1},
        lines_per_second=12.5,
        rows_per_second=0.5,
        interval=0.2,
        reported=1001.2,
    )


def test_health_record_round_trips_through_its_message():
    record = full_record()
    msg = record.to_message()
    assert msg["v"] == contract.SCHEMA_VERSION and msg["samples"][0]["line"] == 25
    assert json.loads(json.dumps(msg)) == msg
    assert msgpack.unpackb(msgpack.packb(msg)) == msg
    assert HealthRecord.from_message(msg) == record
    assert HealthRecord.from_message(msgpack.unpackb(msgpack.packb(msg))) == record
    # An older loop's record lacks fields added since: they take their defaults.
    older = HealthRecord.from_message({"stream": "cpu", "published": 3, "ticks": 4, "new": 1})
    assert older == HealthRecord("cpu", published=3, ticks=4)
    [status] = statuses({"cpu": record}, stale_after=30, now=1001.5)
    assert (status.state, status.malformed_since_start) == ("failing", 1)


def test_the_loop_builds_the_record_from_its_live_counts():
    health = Health(published=5, lines=10, rows=4, malformed=1, started={"lines": 6})
    health.samples.append(Malformed(7, "does not match pattern", "oops", "cpu.log"))
    record = health.record("cpu", 0.2, now=100.0)
    assert (record.stream, record.published, record.lines, record.interval) == ("cpu", 5, 10, 0.2)
    assert record.reported == 100.0 and record.since_start["lines"] == 4
    assert record.samples == (Sample("cpu.log", 7, "does not match pattern", "oops"),)
    assert HealthRecord.from_message(record.to_message()) == record


EVENT = contract.Event("cpu", 1, 2, 3, 4, 5.0)


@pytest.mark.parametrize(
    ("what", "read", "msg"),
    [
        ("event", contract.Event.from_message, EVENT.to_message()),
        ("health record", HealthRecord.from_message, full_record().to_message()),
        (
            "head",
            lambda m: contract.Head.from_message("cpu", m),
            {"seq": 1, "ring": 64, "published": 5.0},
        ),
    ],
)
def test_an_unknown_schema_version_is_refused(what, read, msg):
    assert read(msg) is not None  # as written by this version
    no_version = {k: v for k, v in msg.items() if k != "v"}
    assert read(no_version) is not None  # before ``v``: version 1
    with pytest.raises(SchemaVersionError) as refused:
        read({**msg, "v": 99})
    text = str(refused.value)
    assert text.startswith(f"refused {what} of stream 'cpu': schema version 99"), text
    assert "reads version(s) 1, 2 only" in text and "newer headrace" in text, text
    assert "upgrade headrace in this process" in text, text
    assert isinstance(refused.value, ValueError)
    for unknown in (0, "1", None):
        with pytest.raises(SchemaVersionError, match=f"schema version {unknown!r}"):
            read({**msg, "v": unknown})


@pytest.mark.timeout(60)
def test_a_newer_streams_messages_are_refused_once_and_the_others_go_on(caplog, cluster_options):
    """A newer loop's stream (version 99) next to a current one, read by a subscriber."""
    caplog.set_level(logging.INFO, logger="headrace")
    now = time.time()
    newer_event = {**contract.Event("newer", 1, 1, 0, 0, now).to_message(), "v": 99}
    newer_head = {"seq": 3, "ring": 64, "published": now, "interval": 0.2, "v": 99}
    newer_health = {**HealthRecord("newer").to_message(), "v": 99}

    async def main():
        async with (
            LocalCluster(**cluster_options, asynchronous=True) as cluster,
            Client(cluster, asynchronous=True) as client,
        ):
            every = []
            contract.subscribe_all(client, every.append)
            subscriber = Subscriber(cluster.scheduler_address, window=600, poll_interval=0.2)
            subscriber.start()
            try:
                await async_wait_for(subscriber.connected.is_set, 20, "the subscriber")
                await async_wait_for(  # this test's client's and the subscriber's
                    lambda: len(topic_subscribers(cluster.scheduler, contract.TOPIC)) == 2,
                    10,
                    "both subscriptions to reach the scheduler",
                )
                await client.set_metadata(["headrace", "streams", "newer"], newer_head)
                await client.set_metadata(["headrace", "health", "newer"], newer_health)
                current = contract.FrameStream("current", client)
                for seq in (1, 2, 3):
                    await client.log_event(contract.TOPIC, {**newer_event, "seq": seq})
                    await current.publish(seq, frame(f"2026-01-01T00:00:0{seq}", 2))
                    await current.report_health(HealthRecord("current", published=seq))
                await async_wait_for(lambda: len(every) == 3, 10, "the current stream's events")
                fetched = await async_wait_for(
                    lambda: subscriber.info()["streams"].get("current", {}).get("seq") == 3,
                    10,
                    "the subscriber to fetch the current stream's frames",
                )
                assert fetched and subscriber.info()["errors"] == 0
                await asyncio.sleep(0.5)  # more polls of the heads
                assert [(e.stream, e.seq) for e in every] == [("current", s) for s in (1, 2, 3)]
                assert subscriber.streams() == ["current"]
                assert list(await contract.heads(client)) == ["current"]
                records = await contract.health_records(client)
                assert list(records) == ["current"] and records["current"].published == 3
                with pytest.raises(SchemaVersionError, match="refused health record"):
                    await contract.FrameStream("newer", client).health()
                with pytest.raises(SchemaVersionError, match="refused head"):
                    await contract.FrameStream("newer", client).head()
            finally:
                await subscriber.close()

    asyncio.run(main())
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    # Once per kind of message and stream, at ERROR, whatever the number of clients and polls.
    assert sorted(r.getMessage().split(" of stream 'newer'")[0] for r in refused) == [
        "refused event",
        "refused head",
        "refused health record",
    ], [r.getMessage() for r in refused]
    assert all(
        r.levelno == logging.ERROR and "schema version 99" in r.getMessage() for r in refused
    )
