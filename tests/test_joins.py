"""The interval join: every pair of rows of two streams within a distance, once each,
tick by tick and through the loop across a restart."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pandas as pd
import pytest
from helpers import fed_in_ticks, interval_pairs, run_loop

from headrace.cluster.demo.logwriter import LogWriter
from headrace.etl.config import ConfigError, parse
from headrace.etl.sources.streams import unpack
from headrace.etl.streams import Stream
from headrace.etl.transforms import Resample
from headrace.etl.windows import IntervalJoin

START = pd.Timestamp("2026-12-04", tz="UTC")
COLUMNS = ["time", "value", "value_mem", "time_mem"]


def side(rng: np.random.Generator, name: str, n: int, keys: bool) -> pd.DataFrame:
    times = START + pd.to_timedelta(np.sort(rng.integers(0, 10_000, n)), unit="ms")
    frame = pd.DataFrame({"time": times, "value": rng.normal(size=n), "input": name})
    return frame.assign(key=pd.Series(rng.choice(["a", "b"], n), dtype="str")) if keys else frame


@pytest.mark.parametrize("keys", [False, True], ids=["one series", "per key"])
def test_fed_tick_by_tick_it_gives_every_pair_within_reach_once(keys):
    rng = np.random.default_rng(5)
    left, right = side(rng, "cpu", 300, keys), side(rng, "mem", 200, keys)
    join = IntervalJoin("cpu", "mem", within="150ms", wait="1s")
    got, carry = fed_in_ticks(join, [left, right], START, 400)
    by = ["key"] if keys else []
    # The newest left rows wait for the right stream to pass them plus the reach.
    waiting = carry.left["time"]
    assert len(waiting) and (waiting + pd.Timedelta("150ms") > right["time"].max()).all()
    done = left[~left["time"].isin(waiting)].drop(columns="input")
    want = interval_pairs(done, right, "150ms", by)
    got = got.sort_values(["time", "time_mem", *by], ignore_index=True)
    assert len(want) > 50
    pd.testing.assert_frame_equal(got[COLUMNS + by], want, check_dtype=False)
    assert got["time"].is_monotonic_increasing
    assert got["time_mem"].dtype == got["time"].dtype == "datetime64[ns, UTC]"
    assert len(carry.right) < 40, "right rows no left row can reach were let go"


def test_a_left_row_waits_at_most_its_wait_for_a_stopped_stream():
    t = pd.to_datetime(
        ["2026-12-04T00:00:00.0Z", "2026-12-04T00:00:00.1Z", "2026-12-04T00:00:07.0Z"]
    )
    rows = pd.DataFrame({"time": t, "value": [1.0, 2.0, 3.0], "input": ["cpu", "mem", "cpu"]})
    join = IntervalJoin("cpu", "mem", within="200ms", wait="5s")
    step = join.step(rows, None)
    # 00:00 needs mem past 00:00.2 (it is at 00:00.1), but cpu is 7 s on: it goes.
    assert step.frame[["value", "value_mem"]].values.tolist() == [[1.0, 2.0]]
    assert step.frame["time_mem"].tolist() == [t[1]]
    later = pd.DataFrame(
        {"time": pd.to_datetime(["2026-12-04T00:00:12Z"]), "value": [4.0], "input": ["cpu"]}
    )
    step = join.step(later, step.carry)
    assert step.frame.empty and step.frame.columns.tolist() == COLUMNS  # no partner: no row
    assert step.frame["value_mem"].dtype == np.float64 and len(step.carry.left) == 1


def test_an_interval_join_from_yaml_and_its_settings_named_when_wrong():
    def config(transform):
        return parse(
            {
                "streams": {
                    "cpu": {"source": "/tmp/cpu.log"},
                    "mem": {"source": "/tmp/mem.log"},
                    "both": {"source": "stream://cpu,mem", "transform": transform},
                }
            }
        )

    join = {"join": "interval", "left": "cpu", "right": "mem", "within": "250ms"}
    got = config(join).streams[2].transform
    assert repr(got) == "IntervalJoin(left='cpu', right='mem', within='250ms')"
    for spec, says in [
        ({**join, "within": "soon"}, "within: 'soon' is not a duration"),
        ({k: v for k, v in join.items() if k != "within"}, "an interval join needs within"),
        ({**join, "tolerance": "1s"}, "unknown settings ['tolerance'] for an interval join"),
        ({**join, "join": "outer"}, "join: 'outer' is not one of asof, interval"),
    ]:
        with pytest.raises(ConfigError) as err:
            config(spec)
        assert "stream 'both'" in str(err.value) and says in str(err.value), err.value


def test_through_the_loop_across_a_restart_each_pair_is_published_once(
    two_workers, ftp_server, ftp_root, tmp_path
):
    paths = [ftp_root / "cpu.log", ftp_root / "mem.log"]
    writer = LogWriter(paths, rate=200, seed=4, keep=True).start()
    streams = [
        Stream("cpu", ftp_server.url("cpu.log"), transform=Resample("50ms", "max"), interval=0.1),
        Stream("mem", ftp_server.url("mem.log"), transform=Resample("75ms", "max"), interval=0.1),
        Stream(
            "both", "stream://cpu,mem", transform=IntervalJoin("cpu", "mem", "60ms"), interval=0.1
        ),
    ]

    def caught_up(runners) -> bool:
        by = {r.name: r for r in runners}
        read = all(by[p.stem].state.cursor.offset == p.stat().st_size for p in paths)
        inputs = [by["cpu"].health.published, by["mem"].health.published]
        return read and unpack(by["both"].state.cursor.offset, 2) == inputs

    time.sleep(1.5)
    first = asyncio.run(run_loop(two_workers.scheduler_address, streams, tmp_path, caught_up, 60))
    time.sleep(1.0)  # more lines; a second run of the loop carries on from its state
    writer.stop()
    _, frames = asyncio.run(
        run_loop(two_workers.scheduler_address, streams, tmp_path, caught_up, 60)
    )
    assert first[0]["both"].health.published > 0
    cpu, mem, both = (
        pd.concat([f for _, f in frames[name]], ignore_index=True)
        for name in ("cpu", "mem", "both")
    )
    seqs = [s for s, _ in frames["both"]]
    assert seqs == list(range(1, len(seqs) + 1))  # across the restart, none twice
    published = cpu[cpu["time"] <= both["time"].max()]  # the rest still wait for mem
    want = interval_pairs(published, mem, "60ms", [])
    assert len(want) > 20
    got = both.sort_values(["time", "time_mem"], ignore_index=True)[COLUMNS]
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
