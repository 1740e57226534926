"""Many streams on one loop: a tick's work per worker and server, one publish, one commit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import time
from collections import defaultdict

import msgpack
import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster, Worker, get_task_stream
from streamparts import Exploding, log_lines

from headrace.etl import contract
from headrace.etl.contract.batch import Outgoing, TickPublisher, report_health
from headrace.etl.contract.health import HealthRecord
from headrace.etl.contract.version import SchemaVersionError
from headrace.etl.loop import pipeline, ticks
from headrace.etl.loop.runner import StreamRunner
from headrace.etl.loop.ticks import Ticker, owner, run_streams
from headrace.etl.parse.regex import RegexParser
from headrace.etl.sources.base import Cursor
from headrace.etl.store.state import Checkpoint, StateStore
from headrace.etl.streams import Stream


def frame(start: str, n: int) -> pd.DataFrame:
    times = pd.date_range(start, periods=n, freq="25ms", tz="UTC", unit="ns")
    return pd.DataFrame({"time": times, "value": np.arange(n, dtype=float)})


def wire(f: pd.DataFrame):
    """``f`` as a worker's result carries it to the loop."""
    summary = pipeline.Summary(Cursor(), 0, 0, None)
    return pickle.loads(pickle.dumps(pipeline.Result(f, summary))).wire()


def test_a_stream_stays_on_its_worker_while_that_worker_stays():
    streams = [f"s{i}" for i in range(400)]
    two = ["tcp://a:1", "tcp://b:1"]
    three = [*two, "tcp://c:1"]
    before = {s: owner(s, two) for s in streams}
    after = {s: owner(s, three) for s in streams}
    moved = [s for s in streams if before[s] != after[s]]
    assert all(after[s] == "tcp://c:1" for s in moved)  # only to the new worker
    assert 100 < len(moved) < 170  # about its third
    assert 150 < sum(1 for s in streams if before[s] == "tcp://a:1") < 250  # spread evenly
    assert owner("s1", []) is None


@pytest.mark.timeout(60)
def test_a_tick_of_many_streams_is_published_in_one_message(cluster_options):
    async def main():
        async with (
            LocalCluster(**cluster_options, asynchronous=True) as cluster,
            Client(cluster, asynchronous=True) as client,
            Client(cluster, asynchronous=True) as raw,  # a client has one handler per topic
        ):
            messages, events = [], []
            raw.subscribe_topic(contract.TOPIC, lambda m: messages.append(m[1]))
            contract.subscribe_all(client, events.append)
            await asyncio.sleep(0.3)
            publisher = TickPublisher(client, ring=2)
            names = [f"s{i}" for i in range(50)]
            for seq in (1, 2, 3):
                frames = [frame(f"2026-01-01 00:00:0{seq}", seq) for _ in names]
                # Odd streams' frames as a worker sends them (serialized once, there).
                out = [
                    Outgoing(n, seq, wire(f) if i % 2 else f, contract.Span.of(f), 0.2)
                    for i, (n, f) in enumerate(zip(names, frames, strict=True))
                ]
                await publisher.publish(out)
            await asyncio.sleep(0.5)
            heads = await contract.heads(client)
            read = await contract.read_many(client, {"s7": (0, 3), "s8": (2, 3)})
            plain = await client.get_dataset(contract.dataset_name("s9", 3))
            return messages, events, heads, read, plain, frames[9]

    messages, events, heads, read, plain, sent = asyncio.run(main())
    pd.testing.assert_frame_equal(read["s7"][-1][1], sent)  # from a worker's bytes
    pd.testing.assert_frame_equal(plain, sent)  # a reader without headrace's contract
    assert len(messages) == 3  # one per tick, whatever the number of streams
    assert all(m["v"] == 2 and len(m["frames"]) == 50 for m in messages)
    assert len(events) == 150 and {e.seq for e in events if e.stream == "s3"} == {1, 2, 3}
    assert all(h.seq == 3 and h.ring == 2 and h.interval == 0.2 for h in heads.values())
    assert len(heads) == 50
    assert [s for s, _ in read["s7"]] == [2, 3]  # seq 1 left the ring of 2
    assert [len(f) for _, f in read["s8"]] == [3]


@pytest.mark.timeout(60)
def test_a_tick_sends_the_heads_that_changed_and_a_new_scheduler_gets_them_all(cluster_options):
    """One call per tick writes the frames and changed heads; a scheduler the publisher
    has not published to (a restarted one) gets every stream's head from the first tick."""

    async def main():
        async with (
            LocalCluster(**cluster_options, asynchronous=True) as one,
            LocalCluster(**cluster_options, asynchronous=True) as two,
            Client(one, asynchronous=True) as first,
            Client(two, asynchronous=True) as second,
        ):
            publisher = TickPublisher(first, ring=4)
            names = [f"s{i}" for i in range(20)]
            f = frame("2026-01-01", 3)
            out = [Outgoing(n, 1, f, contract.Span.of(f), 0.2) for n in names]
            await publisher.publish(out)
            await publisher.publish([Outgoing("s3", 2, f, contract.Span.of(f), 0.2)])
            on_first = await contract.heads(first)
            publisher.client = second  # as after a reconnect to a new scheduler
            await publisher.publish([Outgoing("s5", 2, f, contract.Span.of(f), 0.2)])
            on_second = await contract.heads(second)
            read = await contract.read_many(second, {"s5": (0, 2), "s3": (0, 2)})
            return on_first, on_second, read

    on_first, on_second, read = asyncio.run(main())
    assert len(on_first) == 20 and on_first["s3"].seq == 2 and on_first["s4"].seq == 1
    assert len(on_second) == 20  # every head, not only the tick's
    assert on_second["s5"].seq == 2 and on_second["s3"].seq == 2 and on_second["s4"].seq == 1
    assert [s for s, _ in read["s5"]] == [2] and read["s3"] == []  # frames: the tick's only


def test_a_reader_of_version_1_refuses_a_tick_message_and_says_so():
    msg = {"v": 2, "published": 1.0, "frames": [["a", 1, 2, 3, 4]]}
    assert contract.events_of(msg) == [contract.Event("a", 1, 2, 3, 4, 1.0)]
    assert msgpack.unpackb(msgpack.packb(msg)) == msg
    with pytest.raises(SchemaVersionError, match="schema version 3"):
        contract.events_of({**msg, "v": 3})
    with pytest.raises(SchemaVersionError, match="refused tick"):
        contract.events_of({**msg, "v": 1})  # a tick message is never version 1


@pytest.mark.timeout(60)
def test_health_records_of_every_stream_go_in_one_call(cluster_options):
    async def main():
        async with (
            LocalCluster(**cluster_options, asynchronous=True) as cluster,
            Client(cluster, asynchronous=True) as client,
        ):
            await report_health(client, [HealthRecord("a", ticks=3), HealthRecord("b", ticks=4)])
            return await contract.health_records(client), await contract.FrameStream(
                "b", client
            ).health()

    every, b = asyncio.run(main())
    assert {s: r.ticks for s, r in every.items()} == {"a": 3, "b": 4}
    assert b.ticks == 4


def test_many_states_are_saved_in_one_transaction(tmp_path):
    store = StateStore(tmp_path)
    states = [(f"s{i}", Checkpoint(next_seq=i + 2), b"frame" if i % 2 else None) for i in range(5)]
    store.save_many(states, time.time())
    assert [store.load(f"s{i}").next_seq for i in range(5)] == [2, 3, 4, 5, 6]
    assert [(q.stream, q.seq) for q in store.queued(10)] == [("s1", 2), ("s3", 4)]
    with pytest.raises(Exception):  # noqa: B017 - a frame that is not bytes: all rolled back
        store.save_many([("s9", Checkpoint(next_seq=9), None), ("s1", Checkpoint(), object())], 0)
    assert store.load("s9").next_seq == 1 and store.load("s1").next_seq == 3
    store.close()


def test_a_publishing_ticks_write_ahead_updates_only_its_pending_offset(tmp_path):
    store = StateStore(tmp_path)
    kept = Checkpoint(Cursor(120, 7, b"pa", b"fp", b"head"), 4, {"carry": [1, 2]}, totals={"a": 1})
    store.save_many([("s", kept, None)], 1.0)
    ahead = Checkpoint(kept.cursor, 4, kept.carry, 180, totals=kept.totals)
    store.save_many([("s", ahead, None)], 2.0, frozenset({"s"}))
    assert store.load("s") == ahead
    new = Checkpoint(pending_until=99)  # no row yet: written whole, not lost
    store.save_many([("s", kept, None), ("new", new, None)], 3.0, frozenset({"s", "new"}))
    assert store.load("s") == kept and store.load("new") == new
    store.close()


@pytest.mark.timeout(120)
def test_streams_of_a_server_share_a_task_and_a_failing_parser_fails_alone(
    cluster_options, ftp_server, ftp_root, tmp_path, caplog, monkeypatch
):
    """Twenty streams on one FTP server and two workers: at most two tasks a tick."""
    caplog.set_level(logging.INFO, logger="headrace")
    # Tasks of ten intervals: a share's streams in one task however slow this machine is.
    monkeypatch.setattr(ticks, "TASK_SHARE", 10)
    names = [f"s{i:02d}" for i in range(20)]
    for name in names:
        (ftp_root / f"{name}.log").write_bytes(log_lines(3))
    # Ticks long enough for every task to end within its tick: a task that outlasts it
    # has its streams tick again at once, in a task of their own under the same tick.
    streams = [Stream(n, ftp_server.url(f"{n}.log"), transform=None, interval=0.5) for n in names]
    streams.append(Stream("bad", ftp_server.url("s00.log"), parser=Exploding(), interval=0.5))

    async def main():
        opts = {**cluster_options, "n_workers": 2, "threads_per_worker": 1}
        async with (
            LocalCluster(**opts, asynchronous=True) as cluster,
            Client(cluster, asynchronous=True) as client,
        ):
            store, stop, runners = StateStore(tmp_path / "state"), asyncio.Event(), []
            async with get_task_stream(client) as ts:
                task = asyncio.create_task(run_streams(client, streams, store, 100, stop, runners))
                deadline, appended = time.monotonic() + 60, False
                while time.monotonic() < deadline:
                    by = {r.name: r for r in runners}
                    done = len(by) == 21 and all(by[n].health.published == 2 for n in names)
                    if done and by["bad"].health.failures >= 2:
                        break
                    ready = len(by) == 21 and all(by[n].health.published == 1 for n in names)
                    if ready and not appended:
                        appended = True
                        for n in names:
                            with open(ftp_root / f"{n}.log", "ab") as f:
                                f.write(log_lines(2, start=3))
                    await asyncio.sleep(0.05)
                stop.set()
                await task
            store.close()
            read = await contract.read_many(client, {n: (0, 5) for n in names})
            return {r.name: r for r in runners}, ts.data, read

    runners, tasks, read = asyncio.run(main())
    per_tick = defaultdict(list)
    for t in tasks:
        if t["key"].startswith("tick("):
            per_tick[t["key"].split("-")[1]].append(t["worker"])
    assert per_tick and max(len(ws) for ws in per_tick.values()) <= 2, per_tick
    assert len({w for ws in per_tick.values() for w in ws}) == 2  # both workers had a share
    for n in names:
        assert [len(f) for _, f in read[n]] == [3, 2], n  # every line once, in order
        assert runners[n].health.failures == 0
    bad = runners["bad"].health
    assert bad.published == 0 and "this parser fails on every line" in bad.error
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "stream bad" in errors[0], errors


@contextlib.asynccontextmanager
async def one_worker(cluster_options, streams, tmp_path):
    """A cluster of one single-threaded worker, and a ticker of ``streams`` every 0.1 s."""
    opts = {**cluster_options, "n_workers": 1, "threads_per_worker": 1, "processes": False}
    async with (
        LocalCluster(**opts, asynchronous=True) as cluster,
        Client(cluster, asynchronous=True) as client,
    ):
        store = StateStore(tmp_path / "state")
        runners = [StreamRunner(s, store) for s in streams]
        yield cluster, client, Ticker(client, runners, store, TickPublisher(client, 16), 0.1)


@pytest.mark.timeout(120)
def test_a_worker_added_takes_its_share_at_the_next_ticks(
    cluster_options, ftp_server, ftp_root, tmp_path
):
    names = [f"w{i:02d}" for i in range(12)]
    for name in names:
        (ftp_root / f"{name}.log").write_bytes(log_lines(1))
    streams = [Stream(n, ftp_server.url(f"{n}.log"), transform=None, interval=0.1) for n in names]

    async def main():
        async with one_worker(cluster_options, streams, tmp_path) as (cluster, client, ticker):
            store, runners = ticker.store, ticker.runners
            first = (await client.ncores()).keys()
            async with get_task_stream(client) as before:
                for _ in range(3):
                    await ticker.tick()
            async with Worker(cluster.scheduler_address, nthreads=1) as added:
                await asyncio.sleep(1.1)  # the ticker looks at the workers once a second
                async with get_task_stream(client) as after:
                    for _ in range(3):
                        await ticker.tick()
                        await asyncio.sleep(0.1)
                added_address = added.address
            store.close()
            return set(first), before.data, after.data, added_address, runners

    first, before, after, added, runners = asyncio.run(main())
    assert {t["worker"] for t in before if t["key"].startswith("tick(")} <= first
    workers_after = [t["worker"] for t in after if t["key"].startswith("tick(")]
    assert added in workers_after and set(workers_after) - {added}  # both have a share now
    assert all(r.health.published == 1 and r.health.failures == 0 for r in runners)


class Slow:
    """The built-in parser, taking ``seconds`` more per chunk: a task outlasts its tick."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def parse(self, data: bytes, first_line: int = 1, source: str = "") -> object:
        time.sleep(self.seconds)
        return RegexParser().parse(data, first_line, source)


@pytest.mark.timeout(120)
def test_a_task_that_outlasts_its_ticks_is_settled_as_it_ends_and_its_streams_tick_at_once(
    cluster_options, ftp_server, ftp_root, tmp_path
):
    names = ["a", "b"]
    for name in names:
        (ftp_root / f"{name}.log").write_bytes(log_lines(3))
    streams = [
        Stream(n, ftp_server.url(f"{n}.log"), parser=Slow(0.3), transform=None, interval=0.1)
        for n in names
    ]

    async def until(condition, what: str) -> None:
        deadline = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.01)

    async def main():
        async with one_worker(cluster_options, streams, tmp_path) as (_, client, ticker):
            store, runners = ticker.store, ticker.runners
            settler = asyncio.ensure_future(ticker._settle_as_they_end(asyncio.Event()))
            await ticker.tick()  # waits 0.09 s of the task's 0.6 s
            assert ticker.busy == set(names) and len(ticker.flying) == 1
            await ticker.tick()  # the next tick: both streams still in flight
            assert len(ticker.flying) == 1
            for name in names:
                with open(ftp_root / f"{name}.log", "ab") as f:
                    f.write(log_lines(2, start=3))
            # No tick from here on: what settles and ticks them is the task's end.
            await until(lambda: all(r.health.published == 1 for r in runners), "settled")
            await until(lambda: ticker.flying, "ticked again at once")
            assert ticker.busy == set(names)
            await until(lambda: all(r.health.published == 2 for r in runners), "second tick")
            settler.cancel()
            store.close()
            read = await contract.read_many(client, {n: (0, 2) for n in names})
            return read

    read = asyncio.run(main())
    for name in names:
        assert [len(f) for _, f in read[name]] == [3, 2], name  # every line once, in order


@pytest.mark.parametrize(
    ("cost", "streams", "sizes"),
    [
        (None, 64, [32, 32]),  # not measured yet: FIRST_BATCH streams a task
        (0.001, 100, [50] * 2),  # 1 ms a stream, 0.1 s tick: tasks of 50 ms
        (0.0005, 200, [100] * 2),
        (0.0001, 100, [100]),  # fast streams: one task
        (0.05, 100, [50] * 2),  # slow: at most two tasks a share
        (10.0, 20, [20]),  # a worker short of CPU: not tasks of fewer than MIN_BATCH
        (10.0, 40, [20, 20]),
    ],
)
def test_a_shares_streams_go_in_tasks_of_half_an_interval(cost, streams, sizes):
    ticker = Ticker(None, [], None, None, 0.1)
    ticker.cost = cost
    tasks = ticker._batches(list(range(streams)))
    assert sorted(map(len, tasks), reverse=True) == sizes
    assert sorted(s for t in tasks for s in t) == list(range(streams))  # each once
