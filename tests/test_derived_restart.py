"""Derived streams across a SIGKILL of the loop: a window over a stream and an as-of join of
two streams equal pandas over the input frames, every frame once."""

from __future__ import annotations

import os
import signal
import time

import pandas as pd
import pytest
import yaml
from distributed import Client, LocalCluster
from faultreport import record
from helpers import headrace_etl, interval_pairs, kill_groups, published_seq, wait_for

from headrace.cluster.demo.logwriter import LogWriter
from headrace.etl import contract
from headrace.etl.sources.streams import unpack
from headrace.etl.store.state import StateStore


@pytest.mark.fault
@pytest.mark.timeout(240)
def test_a_derived_window_and_a_join_exactly_once_across_a_sigkill(
    ftp_server, ftp_root, tmp_path, cluster_options
):
    paths = [ftp_root / "cpu.log", ftp_root / "mem.log"]
    writer = LogWriter(paths, rate=500, seed=4, keep=True)
    source = {
        "password_env": "FTP_PW",
        "interval": 0.1,
        "transform": {"resample": "25ms", "agg": "max"},
    }
    streams = {
        name: {**source, "source": ftp_server.url(f"{name}.log").replace(":s3cret-PW", "")}
        for name in ("cpu", "mem")
    }
    streams["cpu_100ms"] = {
        "source": "stream://cpu",
        "interval": 0.1,
        "transform": {"window": "tumbling", "size": "100ms", "agg": ["max", "count"]},
    }
    streams["cpu_mem"] = {
        "source": "stream://cpu,mem",
        "interval": 0.1,
        "transform": {
            "join": "asof",
            "left": "cpu",
            "right": "mem",
            "tolerance": "20ms",
        },
    }
    streams["cpu_near_mem"] = {
        "source": "stream://cpu,mem",
        "interval": 0.1,
        "transform": {"join": "interval", "left": "cpu", "right": "mem", "within": "20ms"},
    }
    state = tmp_path / "state"
    config = tmp_path / "etl.yaml"
    config.write_text(
        yaml.safe_dump(
            {"state_dir": str(state), "ring": 100_000, "sink": "none", "streams": streams}
        )
    )
    env = {"FTP_PW": "s3cret-PW"}
    with (
        open(tmp_path / "etl.log", "wb") as log,
        LocalCluster(**cluster_options) as cluster,
        Client(cluster) as client,
    ):
        writer.start()
        first = headrace_etl(config, cluster.scheduler_address, log, env)
        second = None
        try:
            wait_for(
                lambda: (
                    published_seq(client, "cpu_100ms") >= 10
                    and published_seq(client, "cpu_mem") >= 10
                ),
                60,
                "derived frames",
            )
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
            time.sleep(1.0)
            second = headrace_etl(config, cluster.scheduler_address, log, env)
            at = published_seq(client, "cpu_mem")
            wait_for(
                lambda: published_seq(client, "cpu_mem") >= at + 10,
                60,
                "derived frames after the restart",
            )
            writer.stop()
            store = StateStore(state)

            def caught_up() -> bool:
                files = all(
                    store.load(n).cursor.offset == p.stat().st_size
                    for n, p in zip(("cpu", "mem"), paths, strict=True)
                )
                window = unpack(store.load("cpu_100ms").cursor.offset, 1) == [
                    published_seq(client, "cpu")
                ]
                both = [published_seq(client, "cpu"), published_seq(client, "mem")]
                joins = all(
                    unpack(store.load(n).cursor.offset, 2) == both
                    for n in ("cpu_mem", "cpu_near_mem")
                )
                return files and window and joins

            wait_for(caught_up, 60, "every input frame consumed")
            waiting = len(store.load("cpu_mem").carry.left)  # newer than mem's last row
            near_waiting = store.load("cpu_near_mem").carry.left["time"]
            store.close()
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
        finally:
            writer.stop()
            kill_groups(first, second)
        frames = {n: contract.FrameStream(n, client).read(after=0) for n in streams}

    for name, got in frames.items():
        assert [s for s, _ in got] == list(range(1, len(got) + 1)), name
    rows = {n: pd.concat([f for _, f in got], ignore_index=True) for n, got in frames.items()}
    cpu, mem = rows["cpu"], rows["mem"]
    groups = cpu.groupby(cpu["time"].dt.floor("100ms"))["value"]
    want = pd.DataFrame({"max": groups.max(), "n": groups.size()}).iloc[: len(rows["cpu_100ms"])]
    window = rows["cpu_100ms"]
    assert len(window) >= len(groups) - 1
    assert window["time"].tolist() == want.index.tolist()
    assert window["value"].tolist() == want["max"].tolist()
    assert window["value_count"].tolist() == want["n"].astype(float).tolist()
    joined = pd.merge_asof(
        cpu[["time", "value"]],
        mem[["time", "value"]].rename(columns={"value": "value_mem"}),
        on="time",
        tolerance=pd.Timedelta("20ms"),
    )
    got = rows["cpu_mem"]
    assert len(got) + waiting == len(cpu)  # every cpu row once, across the SIGKILL
    pd.testing.assert_frame_equal(
        got[["time", "value", "value_mem"]], joined.iloc[: len(got)], check_dtype=False
    )
    # Every pair of rows within 20 ms, once, but those of the cpu rows still waiting.
    near = rows["cpu_near_mem"]
    pairs = interval_pairs(cpu[~cpu["time"].isin(near_waiting)], mem, "20ms", [])
    assert len(pairs) > 100
    pd.testing.assert_frame_equal(
        near.sort_values(["time", "time_mem"], ignore_index=True)[pairs.columns],
        pairs,
        check_dtype=False,
    )
    record(
        "the loop dies with derived streams",
        "SIGKILL of `headrace etl` with a 100 ms window over a 25 ms stream, an as-of join "
        "and an interval join of two streams, then a restart; against pandas over the input "
        "frames",
        written=len(cpu),
        published=len(got),
        open=0,
        lost=0,
        duplicated=0,
        window_periods=len(window),
    )
