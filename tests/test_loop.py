"""The tick loop against a real FTP server and a real Dask cluster."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pandas as pd
import pytest
from distributed import LocalCluster
from helpers import run_loop, wait_for

from headrace.cluster.demo.logwriter import LogWriter
from headrace.etl.loop.runner import StreamRunner
from headrace.etl.parse.parser import take_lines
from headrace.etl.parse.regex import RegexParser
from headrace.etl.store.pickles import value
from headrace.etl.streams import Stream

PASSWORD = "s3cret-PW"


@pytest.fixture(scope="module")
def cluster(cluster_options):
    # Two workers, so that a tick's extract and transform can run on different ones.
    with LocalCluster(**{**cluster_options, "n_workers": 2, "threads_per_worker": 1}) as c:
        yield c


def concat(frames: list[tuple[int, pd.DataFrame]]) -> pd.DataFrame:
    return pd.concat([f for _, f in frames], ignore_index=True)


def consumed(runner: StreamRunner, path: Path) -> bool:
    return runner.state.cursor.offset == path.stat().st_size


@pytest.mark.slow
def test_every_line_once_at_high_rate(cluster, ftp_server, ftp_root, tmp_path):
    path = ftp_root / "fast.log"
    writer = LogWriter([path], rate=1000, keep=True)
    raw = Stream("fast", ftp_server.url("fast.log"), transform=None, interval=0.1)
    resampled = Stream("fast-agg", ftp_server.url("fast.log"), interval=0.1)
    runners, frames = asyncio.run(
        run_loop(
            cluster.scheduler_address,
            [raw, resampled],
            tmp_path,
            until=write_then_drain(writer, path, seconds=3),
        )
    )

    written = pd.to_datetime([line.split()[0] for line in writer.lines(path)], utc=True)
    assert len(written) >= 2000
    rows = concat(frames["fast"])
    assert rows["time"].tolist() == list(written)  # same lines, same order, none twice
    seqs = [s for s, _ in frames["fast"]]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 5  # spread over many ticks

    agg = concat(frames["fast-agg"])
    carried = len(value(runners["fast-agg"].state.carry).rows)
    assert agg["count"].sum() + carried == len(written)
    assert agg["time"].is_monotonic_increasing and agg["time"].is_unique
    assert runners["fast"].health.transfers <= runners["fast"].health.ticks


def write_then_drain(writer: LogWriter, path: Path, seconds: float):
    """An ``until`` for run_loop: write for ``seconds`` while ticking, then until all is read."""
    writer.start()
    started = time.monotonic()

    def until(runners) -> bool:
        if writer.running and time.monotonic() - started > seconds:
            writer.stop()
        return not writer.running and all(consumed(r, path) for r in runners)

    return until


def test_malformed_lines_are_counted_and_neighbours_kept(cluster, ftp_server, ftp_root, tmp_path):
    (ftp_root / "mixed.log").write_bytes(
        b"2026-11-23T09:00:00.000000Z 0.1\n"
        b"garbage line\n"
        b"2026-11-23T09:00:00.010000Z abc\n"
        b"2026-11-23T09:00:00.020000Z 0.3\n"
    )
    stream = Stream("mixed", ftp_server.url("mixed.log"), transform=None)
    runners, frames = asyncio.run(
        run_loop(
            cluster.scheduler_address, [stream], tmp_path, until=lambda rs: rs[0].health.ticks >= 2
        )
    )
    assert concat(frames["mixed"])["value"].tolist() == [0.1, 0.3]
    health = runners["mixed"].health
    assert health.malformed == 2 and health.lines == 4
    samples = [str(s) for s in health.samples]
    assert any(":2:" in s and "garbage line" in s for s in samples), samples
    assert any(":3:" in s and "abc" in s for s in samples), samples


def test_one_broken_stream_does_not_stop_the_others(
    cluster, ftp_server, ftp_root, tmp_path, caplog
):
    (ftp_root / "good.log").write_bytes(b"2026-11-23T09:00:00.000000Z 0.1\n")
    good = Stream("good", ftp_server.url("good.log"), transform=None, interval=0.05)
    broken = Stream("broken", ftp_server.url("missing.log"), transform=None, interval=0.05)
    caplog.set_level(logging.INFO, logger="headrace")

    def progress(rs):
        by = {r.stream.name: r for r in rs}
        if by["good"].health.published == 1 and not hasattr(progress, "appended"):
            with open(ftp_root / "good.log", "ab") as f:
                f.write(b"2026-11-23T09:00:01.000000Z 0.2\n")
            progress.appended = True
        return by["good"].health.published >= 2 and by["broken"].health.failures >= 3

    _, frames = asyncio.run(
        run_loop(cluster.scheduler_address, [good, broken], tmp_path, until=progress)
    )
    assert concat(frames["good"])["value"].tolist() == [0.1, 0.2]
    assert frames["broken"] == []
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # one line per state change
    assert "missing.log" in errors[0].getMessage()


def test_unreachable_server_recovers_without_loss(cluster, ftp_server, ftp_root, tmp_path, caplog):
    path = ftp_root / "outage.log"
    writer = LogWriter([path], rate=200, keep=True)
    writer.start()
    stream = Stream("outage", ftp_server.url("outage.log"), transform=None, interval=0.1)
    caplog.set_level(logging.INFO, logger="headrace")
    phase = {"stopped_at": None, "restarted": False}

    def script(rs):
        r = rs[0]
        if phase["stopped_at"] is None and r.health.published >= 3:
            ftp_server.stop()
            phase["stopped_at"] = time.monotonic()
        elif phase["stopped_at"] and not phase["restarted"] and r.health.failures >= 2:
            ftp_server.start()
            phase["restarted"] = True
            writer.stop()
        return phase["restarted"] and r.health.failures == 0 and consumed(r, path)

    _, frames = asyncio.run(
        run_loop(cluster.scheduler_address, [stream], tmp_path, until=script, timeout=60)
    )
    written = pd.to_datetime([line.split()[0] for line in writer.lines(path)], utc=True)
    assert concat(frames["outage"])["time"].tolist() == list(written)
    messages = [r.getMessage() for r in caplog.records if "outage" in r.getMessage()]
    assert any("tick failed" in m for m in messages) and any("recovered" in m for m in messages)
    assert sum("tick failed" in m for m in messages) == 1


@pytest.mark.slow
def test_overrunning_tick_takes_everything_since(cluster, ftp_server, ftp_root, tmp_path):
    path = ftp_root / "slow.log"
    writer = LogWriter([path], rate=300, keep=True)
    writer.start()
    stream = Stream(
        "slow", ftp_server.url("slow.log"), parser=SlowParser(0.4), transform=None, interval=0.05
    )
    wait_for(lambda: writer.written[path] >= 100, 10, "a backlog of lines in the file")

    def done(rs):
        if rs[0].health.ticks >= 6 and writer.running:
            writer.stop()
        return not writer.running and consumed(rs[0], path)

    runners, frames = asyncio.run(
        run_loop(cluster.scheduler_address, [stream], tmp_path, until=done, timeout=60)
    )
    health = runners["slow"].health
    assert health.overruns >= 3
    written = pd.to_datetime([line.split()[0] for line in writer.lines(path)], utc=True)
    assert concat(frames["slow"])["time"].tolist() == list(written)
    # No pile-up: every tick ran after the previous one finished, so ticks took >= 0.4 s each.
    assert health.ticks <= 3 + health.published


class SlowParser(RegexParser):
    """A parser that takes ``delay`` seconds per chunk, to make ticks overrun their interval."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def parse(self, data, first_line=1, source=""):
        time.sleep(self.delay)
        return super().parse(data, first_line, source)


def test_credentials_never_logged(cluster, ftp_server, ftp_root, tmp_path, caplog):
    (ftp_root / "secret.log").write_bytes(b"2026-11-23T09:00:00.000000Z 0.1\n")
    caplog.set_level(logging.DEBUG)
    good = Stream("secret", ftp_server.url("secret.log"), transform=None)
    bad_url = ftp_server.url("secret.log").replace(PASSWORD, PASSWORD + "-wrong")
    bad = Stream("wrongpw", bad_url, transform=None, interval=0.05)
    runners, _ = asyncio.run(
        run_loop(
            cluster.scheduler_address,
            [good, bad],
            tmp_path,
            until=lambda rs: rs[0].health.published >= 1 and rs[1].health.failures >= 2,
        )
    )
    assert PASSWORD in ftp_server.url("secret.log")
    assert runners["wrongpw"].health.error and PASSWORD not in runners["wrongpw"].health.error
    assert PASSWORD not in caplog.text
    assert "alice" in caplog.text  # the user is named, so the messages do say which login


def test_sequence_numbers_continue_after_restart(cluster, ftp_server, ftp_root, tmp_path):
    path = ftp_root / "again.log"
    path.write_bytes(b"2026-11-23T09:00:00.000000Z 0.1\n")
    stream = Stream("again", ftp_server.url("again.log"), transform=None)
    asyncio.run(
        run_loop(
            cluster.scheduler_address,
            [stream],
            tmp_path,
            until=lambda rs: rs[0].health.published == 1,
        )
    )
    with open(path, "ab") as f:
        f.write(b"2026-11-23T09:00:01.000000Z 0.2\n")
    stream = Stream("again", ftp_server.url("again.log"), transform=None)
    _, frames = asyncio.run(
        run_loop(
            cluster.scheduler_address,
            [stream],
            tmp_path,
            until=lambda rs: rs[0].health.published == 2,
        )
    )
    assert [(s, f["value"].tolist()) for s, f in frames["again"]] == [(1, [0.1]), (2, [0.2])]


def parse_csv_lines(lines: list[str]) -> pd.DataFrame:
    """A user's own extract: 'epoch_seconds,value' lines; raises on anything else."""
    rows = [line.split(",") for line in lines]
    return pd.DataFrame(
        {
            "time": pd.to_datetime([float(t) for t, _ in rows], unit="s", utc=True),
            "value": [float(v) for _, v in rows],
        }
    )


def double(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(value=frame["value"] * 2)


def test_user_functions_as_a_stream(cluster, ftp_server, ftp_root, tmp_path):
    path = ftp_root / "user.csv"
    path.write_bytes(b"1700000000,1.5\n1700000001,2.5\n")
    stream = Stream(
        "user", ftp_server.url("user.csv"), parser=take_lines(parse_csv_lines), transform=double
    )

    appends = [b"not,a,number\n", b"1700000002,3.5\n"]  # one chunk the user's parser chokes on

    def script(rs):
        health = rs[0].health
        if appends and health.published == 1 and health.malformed == 2 - len(appends):
            with open(path, "ab") as f:
                f.write(appends.pop(0))
        return health.published == 2

    runners, frames = asyncio.run(run_loop(cluster.scheduler_address, [stream], tmp_path, script))
    assert concat(frames["user"])["value"].tolist() == [3.0, 5.0, 7.0]
    health = runners["user"].health
    assert health.malformed == 1
    assert "parse_csv_lines" in str(health.samples[-1]) and "not,a,number" in str(
        health.samples[-1]
    )


@pytest.mark.parametrize("how", ["truncated", "rotated"])
def test_truncation_and_rotation_restart_at_byte_zero(cluster, ftp_server, ftp_root, tmp_path, how):
    path = ftp_root / f"{how}.log"
    old = [f"2026-11-23T09:00:0{i}.000000Z 0.{i}\n".encode() for i in range(3)]
    new = [
        f"2026-11-23T09:01:0{i}.000000Z 1.{i}\n".encode()
        for i in range(5 if how == "rotated" else 1)
    ]
    path.write_bytes(b"".join(old))
    stream = Stream(how, ftp_server.url(path.name), transform=None, interval=0.05)
    replaced = []

    def script(rs):
        if not replaced and rs[0].health.published == 1:
            if how == "rotated":  # a new file, already longer than the old offset
                path.rename(path.with_suffix(".1"))
            path.write_bytes(b"".join(new))
            replaced.append(True)
        return rs[0].health.published == 2

    _, frames = asyncio.run(run_loop(cluster.scheduler_address, [stream], tmp_path, script))
    values = [f["value"].tolist() for _, f in frames[how]]
    assert values == [[0.0, 0.1, 0.2], [1.0 + i / 10 for i in range(len(new))]]


def test_tasks_are_named_for_the_server_they_read_in_the_dashboard(
    cluster, ftp_server, ftp_root, tmp_path
):
    """One task per tick reads a server's files; Dask's key_split keeps its name whole."""
    from dask.utils import key_split

    from headrace.etl.loop.runner import task_key

    names = ["cpu1", "app_log", "web-1", "web-2"]
    for name in names:
        (ftp_root / f"{name}.log").write_bytes(b"2026-11-23T09:00:00Z 1\n2026-11-23T09:00:01Z 2\n")
    streams = [Stream(n, ftp_server.url(f"{n}.log"), interval=0.05) for n in names]
    asyncio.run(
        run_loop(
            cluster.scheduler_address,
            streams,
            tmp_path,
            lambda rs: len(rs) == len(names) and all(r.health.published for r in rs),
        )
    )
    prefixes = set(cluster.scheduler.task_prefixes)
    server = streams[0].source.server.split("://", 1)[1]
    shown = key_split(task_key("tick", server, 7, "ab12c3"))
    assert shown == f"tick({server})"
    assert shown in prefixes, (shown, sorted(prefixes))
    assert not any(p.startswith(("extract", "transform")) for p in prefixes), prefixes
    # Names with hyphens (a stream's, a host's) survive key_split whole, and stay distinct.
    assert len({key_split(task_key("tick", n, 1, "a1")) for n in names}) == len(names)


def test_health_totals_continue_across_restarts(cluster, ftp_server, ftp_root, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="headrace.etl")
    path = ftp_root / "totals.log"
    path.write_bytes(b"2026-11-23T09:00:00Z 0.1\nbad\n2026-11-23T09:00:01Z 0.2\n")

    def run_until(lines: int):
        stream = Stream("totals", ftp_server.url("totals.log"), transform=None)
        runners, _ = asyncio.run(
            run_loop(
                cluster.scheduler_address,
                [stream],
                tmp_path,
                until=lambda rs: rs[0].health.lines == lines,
            )
        )
        return runners["totals"].health

    first = run_until(3)
    with open(path, "ab") as f:
        f.write(b"worse\n2026-11-23T09:00:02Z 0.3\n")
    second = run_until(5)
    assert (first.lines, first.malformed, first.rows) == (3, 1, 2)
    assert (second.lines, second.malformed, second.rows) == (5, 2, 3)  # all-time
    assert second.since_start()["lines"] == 2 and second.since_start()["malformed"] == 1
    assert "1 malformed lines in this tick (2 all-time)" in caplog.text
    assert "stream totals: stopped at seq 2; ticks" in caplog.text  # the report at stop
    assert "lines 5 (2 since start)" in caplog.text
