"""Many streams, some of which cannot be read: the others publish at every tick, and each
failing stream says why, backs off and recovers on its own once fixed."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time

import pytest
from distributed import Client, LocalCluster
from streamparts import Exploding, log_lines

from headrace.cluster.demo.ftpserver import FTPServer
from headrace.etl import contract
from headrace.etl.loop.ticks import run_streams
from headrace.etl.store.state import StateStore
from headrace.etl.streams import Stream

GOOD = 40
INTERVAL = 0.3


@pytest.mark.timeout(180)
def test_failing_streams_fail_alone_say_why_back_off_and_recover(
    cluster_options, ftp_server, ftp_root, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="headrace")
    good = [f"g{i:02d}" for i in range(GOOD)]
    for name in good:
        (ftp_root / f"{name}.log").write_bytes(log_lines(2))
    (ftp_root / "dir.log").mkdir()  # not a file
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.log").write_bytes(log_lines(3))
    refusing = FTPServer(other, user="bob", password="right").start()
    wrong = refusing.url("a.log").replace(":right@", ":wrong@")  # refused, until the fix

    def stream(name: str, url: str, **kw) -> Stream:
        return Stream(name, url, interval=INTERVAL, **{"transform": None, **kw})

    streams = [stream(n, ftp_server.url(f"{n}.log")) for n in good] + [
        stream("missing", ftp_server.url("missing.log")),
        stream("notafile", ftp_server.url("dir.log")),
        stream("login", wrong),
        stream("parser", ftp_server.url("g00.log"), parser=Exploding()),
    ]
    fixed = ["missing", "notafile", "login"]

    async def until(check, what: str, runners: list, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if len(runners) == len(streams) and check({r.name: r for r in runners}):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"not within {seconds} s: {what}")

    async def main():
        opts = {**cluster_options, "n_workers": 2, "threads_per_worker": 1}
        async with (
            LocalCluster(**opts, asynchronous=True) as cluster,
            Client(cluster, asynchronous=True) as client,
        ):
            store, stop, runners = StateStore(tmp_path / "state"), asyncio.Event(), []
            task = asyncio.create_task(run_streams(client, streams, store, 100, stop, runners))
            await until(
                lambda by: (
                    all(by[n].health.published == 1 for n in good)
                    and all(by[n].health.failures >= 2 for n in [*fixed, "parser"])
                ),
                "every good stream published, every bad one failed twice",
                runners,
            )
            for name in good:
                with open(ftp_root / f"{name}.log", "ab") as f:
                    f.write(log_lines(1, start=2))
            await until(lambda by: all(by[n].health.published == 2 for n in good), "on", runners)
            await until(lambda by: all(by[n].health.ticks >= 20 for n in good), "ticks", runners)
            by = {r.name: r for r in runners}
            failed = {n: (by[n].health.failures, by[n].health.error) for n in [*fixed, "parser"]}
            ticks = min(by[n].health.ticks for n in good)
            # Fixed: the file comes, the folder becomes a file, the server takes the login.
            (ftp_root / "missing.log").write_bytes(log_lines(4))
            shutil.rmtree(ftp_root / "dir.log")
            (ftp_root / "dir.log").write_bytes(log_lines(5))
            refusing.stop()
            refusing.password = "wrong"
            refusing.start()
            await until(
                lambda by: all(
                    by[n].health.published == 1 and not by[n].health.failures for n in fixed
                ),
                "the fixed streams recovered",
                runners,
            )
            stop.set()
            await task
            store.close()
            read = await contract.read_many(client, {n: (0, 5) for n in [*good, *fixed]})
            return {r.name: r for r in runners}, failed, ticks, read

    try:
        runners, failed, ticks, read = asyncio.run(main())
    finally:
        refusing.stop()
    for name in good:
        assert [len(f) for _, f in read[name]] == [2, 1], name  # every line once, in order
        assert runners[name].health.failures == 0
    assert [len(f) for _, f in read["missing"]] == [4]
    assert [len(f) for _, f in read["notafile"]] == [5]
    assert [len(f) for _, f in read["login"]] == [3]
    # Each says why, naming what failed; none ticked at every interval meanwhile.
    assert "missing.log" in failed["missing"][1] and "550" in failed["missing"][1]
    assert "dir.log" in failed["notafile"][1]
    assert "login as 'bob' failed" in failed["login"][1] and "wrong" not in failed["login"][1]
    assert "this parser fails on every line" in failed["parser"][1]
    assert all(n < ticks / 2 for n, _ in failed.values()), (failed, ticks)  # backed off
    assert runners["parser"].health.published == 0 and runners["parser"].health.failures
    # One ERROR line per failing stream (its first failure), one INFO line per recovery.
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    for name in [*fixed, "parser"]:
        assert len([e for e in errors if f"stream {name}:" in e]) == 1, (name, errors)
    recovered = [r.getMessage() for r in caplog.records if "recovered after" in r.getMessage()]
    assert sorted(m.split(":")[0] for m in recovered) == [f"stream {n}" for n in sorted(fixed)]
