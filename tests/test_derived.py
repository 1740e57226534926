"""Streams computed from streams: a window over another stream's frames, through the loop."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pandas as pd
import pytest
from helpers import fed_in_ticks, run_loop

from headrace.cluster.demo.logwriter import LogWriter
from headrace.etl.config import ConfigError, parse
from headrace.etl.sources.streams import StreamsSource, pack, unpack
from headrace.etl.streams import Stream
from headrace.etl.transforms import Resample
from headrace.etl.windows import AsofJoin, Tumbling


def caught_up(path):
    def done(runners) -> bool:
        by = {r.name: r for r in runners}
        cpu, slow = by["cpu"], by["cpu_100ms"]
        read_all = cpu.state.cursor.offset == path.stat().st_size
        return read_all and unpack(slow.state.cursor.offset, 1) == [cpu.health.published]

    return done


def test_a_window_over_another_streams_frames_equals_pandas_and_resumes(
    two_workers, ftp_server, ftp_root, tmp_path
):
    path = ftp_root / "cpu.log"
    writer = LogWriter([path], rate=400, seed=3, keep=True).start()
    url = ftp_server.url("cpu.log")
    streams = [
        Stream("cpu", url, transform=Resample("25ms", "max"), interval=0.1),
        Stream(
            "cpu_100ms",
            "stream://cpu",
            transform=Tumbling("100ms", agg=["max", "count"]),
            interval=0.1,
        ),
    ]
    time.sleep(1.5)
    first = asyncio.run(
        run_loop(two_workers.scheduler_address, streams, tmp_path, caught_up(path), 60)
    )
    time.sleep(1.0)  # more lines; then a second run of the loop carries on from its state
    writer.stop()
    runners, frames = asyncio.run(
        run_loop(two_workers.scheduler_address, streams, tmp_path, caught_up(path), 60)
    )
    assert first[0]["cpu_100ms"].health.published > 0
    cpu = pd.concat([f for _, f in frames["cpu"]], ignore_index=True)
    derived = pd.concat([f for _, f in frames["cpu_100ms"]], ignore_index=True)
    seqs = [s for s, _ in frames["cpu_100ms"]]
    assert seqs == list(range(1, len(seqs) + 1))  # across the restart, none twice
    groups = cpu.groupby(cpu["time"].dt.floor("100ms"))["value"]
    want = pd.DataFrame({"max": groups.max(), "n": groups.size()}).iloc[: len(derived)]
    assert len(derived) >= len(want) - 1 and len(derived) > 10
    assert derived["time"].tolist() == want.index.tolist()
    assert derived["value"].tolist() == want["max"].tolist()
    assert derived["value_count"].tolist() == want["n"].astype(float).tolist()
    # Rows read, all-time: every row of every cpu frame, once, across both runs.
    assert runners["cpu_100ms"].health.lines == len(cpu)


def test_derived_streams_are_named_tasks_and_bad_inputs_say_which_stream():
    s = Stream("m", "stream://cpu,mem", transform=None)
    assert isinstance(s.source, StreamsSource) and s.source.server == "stream://m"
    assert unpack(pack([7, 9]), 2) == [7, 9] and unpack(pack([7]), 1) == [7]
    for streams, says in [
        ({"a": {"source": "stream://b"}, "b": {"source": "stream://a"}}, "cycle: a -> b -> a"),
        ({"a": {"source": "stream://zz"}}, "input 'zz' is not a stream of this loop"),
        ({"a": {"source": "stream://x,y,z"}}, "name one stream (stream://cpu) or two"),
        ({"a": {"source": "stream://a"}}, "cycle: a -> a"),
        (
            {
                "a": {"source": "stream://e"},
                "e": {
                    "source": "/tmp/e.log",
                    "transform": {"window": "tumbling", "size": "1s", "emit": "early"},
                },
            },
            "input 'e' emits early (revisions of its rows); a derived stream reads final rows",
        ),
    ]:
        with pytest.raises(ConfigError) as err:
            parse({"streams": streams})
        assert "stream 'a'" in str(err.value) and "setting 'source'" in str(err.value)
        assert says in str(err.value), err.value


def test_an_asof_join_fed_tick_by_tick_equals_pandas_merge_asof_once_each():
    rng = np.random.default_rng(2)
    start = pd.Timestamp("2026-12-04", tz="UTC")

    def side(name: str, n: int) -> pd.DataFrame:
        times = start + pd.to_timedelta(np.sort(rng.integers(0, 10_000, n)), unit="ms")
        keys = pd.Series(rng.choice(["a", "b"], n), dtype="str")
        return pd.DataFrame(
            {"time": times, "value": rng.normal(size=n), "key": keys, "input": name}
        )

    left, right = side("cpu", 400), side("mem", 300)
    join = AsofJoin("cpu", "mem", tolerance="200ms", wait="1s")
    got, carry = fed_in_ticks(join, [left, right], start, 500)
    # The newest left rows wait for the right stream to pass them, and the rest were
    # published once each.
    waiting = carry.left["time"]
    assert len(waiting) and (waiting > right["time"].max()).all()
    assert len(got) + len(waiting) == len(left)
    want = pd.merge_asof(
        left.drop(columns="input"),
        right.drop(columns="input").rename(columns={"value": "value_mem"}),
        on="time",
        by="key",
        tolerance=pd.Timedelta("200ms"),
    ).iloc[: len(got)]
    columns = ["time", "key", "value", "value_mem"]
    pd.testing.assert_frame_equal(
        got.sort_values(["time", "key"], ignore_index=True)[columns],
        want.sort_values(["time", "key"], ignore_index=True)[columns],
        check_dtype=False,
    )
    assert got["value_mem"].notna().sum() > 100 and len(carry.right) < 50


def test_a_join_does_not_wait_for_a_stopped_stream_beyond_its_wait():
    t = pd.to_datetime(["2026-12-04T00:00:00Z", "2026-12-04T00:00:01Z", "2026-12-04T00:00:07Z"])
    rows = pd.DataFrame({"time": t, "value": [1.0, 2.0, 3.0], "input": ["cpu", "mem", "cpu"]})
    step = AsofJoin("cpu", "mem", tolerance="1s", wait="5s").step(rows, None)
    # 00:00 was passed by mem; 00:07 waits for mem, which stopped at 00:01, until cpu is at 00:12.
    assert step.frame["value"].tolist() == [1.0] and len(step.carry.left) == 1
    later = pd.DataFrame(
        {"time": pd.to_datetime(["2026-12-04T00:00:12Z"]), "value": [4.0], "input": ["cpu"]}
    )
    step = AsofJoin("cpu", "mem", tolerance="1s", wait="5s").step(later, step.carry)
    assert step.frame["value"].tolist() == [3.0] and np.isnan(step.frame["value_mem"].iloc[0])


def test_a_join_from_yaml():
    config = parse(
        {
            "streams": {
                "cpu": {"source": "/tmp/cpu.log"},
                "mem": {"source": "/tmp/mem.log"},
                "both": {
                    "source": "stream://cpu,mem",
                    "transform": {"join": "asof", "left": "cpu", "right": "mem", "tolerance": "1s"},
                },
            }
        }
    )
    assert repr(config.streams[2].transform) == "AsofJoin(left='cpu', right='mem', tolerance='1s')"
