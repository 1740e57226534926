"""The whole system, each part a real process: FTP server with a live log, `dask scheduler`,
`dask worker`, `headrace etl`, `headrace serve --num-procs 3`, and Bokeh sessions.

Viewers do not add FTP transfers; sessions keep receiving every row, in order and once,
through a SIGKILL of the loop and a crash of the scheduler.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections import Counter

import numpy as np
import pytest
import yaml
from distributed import Client
from faultstack import Stack, gaps_ms, periods_ms
from helpers import RecordedSession, free_port, headrace_serve, wait_for

from headrace.cluster.demo.logwriter import LogWriter
from headrace.etl import contract

STREAM = "e2e"
INTERVAL = 0.2
PROCS = 3
GAP_BEFORE_CRASH = 1.0  # seconds: a tick, a publish and a fetch, on a busy machine
GIVE_UP_FAST = {"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}

pytestmark = pytest.mark.fault


def frames_published(address: str) -> bool:
    with Client(address, timeout=5) as client:
        head = contract.FrameStream(STREAM, client).head()
    return head is not None and head.seq > 3


@pytest.mark.timeout(240)
def test_viewers_add_no_transfers_and_survive_loop_and_scheduler_restarts(
    ftp_server, ftp_root, tmp_path
):
    path = ftp_root / f"{STREAM}.log"
    logs = tmp_path / "logs"
    logs.mkdir()
    config = tmp_path / "etl.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(tmp_path / "state"),
                "streams": {STREAM: {"source": ftp_server.url(path.name), "interval": INTERVAL}},
            }
        )
    )
    # The loop's client gives up on an away scheduler after 2 s (default 30 s), so that the
    # crash below also covers the loop connecting afresh.
    stack = Stack(logs, config, free_port(), GIVE_UP_FAST)
    sessions: list[RecordedSession] = []
    writer = LogWriter([path], rate=100, keep=True).start()
    try:
        for name in ("scheduler", "worker", "etl"):
            stack.start(name)
        with headrace_serve(stack.address, PROCS, logs / "panel.log") as (panel, port):
            url = f"http://127.0.0.1:{port}/dashboard"

            def open_session() -> RecordedSession:
                assert panel.poll() is None, stack.tail()
                session = RecordedSession(url, STREAM)
                session.start()
                assert session.pulled.wait(60), "no document within 60 s"
                assert session.error is None, f"{session.error}\n{stack.tail()}"
                sessions.append(session)
                return session

            def received() -> int:
                return sum(len(s.batches) for s in sessions)

            def transfers_per_second(seconds: float = 4.0) -> float:
                before, t0 = ftp_server.transfers, time.monotonic()
                time.sleep(seconds)
                return (ftp_server.transfers - before) / (time.monotonic() - t0)

            def waiting(predicate, timeout: float, what: str) -> None:
                try:
                    wait_for(predicate, timeout, what, step=0.1)
                except AssertionError as exc:
                    raise AssertionError(f"{exc}\n{stack.tail()}") from None

            def rows_flow(after: int, what: str, timeout: float = 60) -> None:
                waiting(lambda: received() >= after + len(sessions), timeout, what)

            def subscribed() -> set[str]:
                assert panel.poll() is None, stack.tail()
                log = (logs / "panel.log").read_text()
                return set(re.findall(r"subscribed to \S+ on \S+ \(pid (\d+)\)", log))

            waiting(lambda: len(subscribed()) == PROCS, 90, "a subscriber in every process")
            waiting(lambda: frames_published(stack.address), 60, "the loop's first frames")
            open_session()
            rows_flow(0, "rows in the first session")
            with_one = transfers_per_second()

            # At least 6 sessions, over every process if the kernel lets us: it gives each
            # connection to whichever process accepts first, and an idle pair can win for
            # a long while.
            def spread() -> bool:
                return len({s.pid for s in sessions}) == PROCS

            while len(sessions) < 6 or (not spread() and len(sessions) < 40):
                open_session()
            print(f"sessions per process: {Counter(s.pid for s in sessions)}")
            with_six = transfers_per_second()
            print(f"FTP transfers/s: {with_one:.2f} with 1 session, {with_six:.2f} with 6+")
            assert with_six <= 1.25 * with_one + 0.5, (with_one, with_six)
            assert with_one <= 1.1 / INTERVAL, with_one  # at most one transfer per tick

            # The loop dies without a word and comes back: nothing lost, nothing repeated.
            stack.kill("etl")
            time.sleep(1.5)  # dead for a while: lines keep arriving meanwhile
            stack.start("etl")
            rows_flow(received(), "rows after the loop's restart")

            # The scheduler crashes and comes back on its port (workers are restarted with
            # it, as a supervisor would). Frames on the lost scheduler that nobody had
            # fetched yet may be lost: at most the outage.
            stack.kill("scheduler")
            stack.kill("worker")
            crashed = time.time()
            time.sleep(4.0)  # the outage, longer than the loop's 2 s connect timeout
            stack.start("scheduler")
            stack.start("worker")
            restarted = time.time()
            count = received()
            rows_flow(count, "rows after the scheduler's restart", timeout=90)
            outage_ms = (time.time() - crashed) * 1000

            def newest_ms(s: RecordedSession) -> float:
                return max((b[-1] for b in s.batches[-3:] if len(b)), default=0.0)

            waiting(
                lambda: all(newest_ms(s) > restarted * 1000 for s in sessions),
                30,
                "rows written after the restart in every session",
            )
    finally:
        for session in sessions:
            session.stop()
        writer.stop()
        stack.stop_all()

    tail = stack.tail()
    periods = periods_ms(writer.lines(path))
    assert len({s.pid for s in sessions}) >= 2, "sessions all in one process"
    for session in sessions:
        what = f"session in pid {session.pid}"
        rows = np.round(session.rows()).astype("int64")
        gaps = gaps_ms(rows, periods, what)
        assert len(gaps) <= 1, f"{what}: rows missing in {gaps}\n{tail}"
        for start, end in gaps:
            assert end - start <= outage_ms, f"{what}: gap of {end - start} ms\n{tail}"
            # The gap is the outage's: it may begin a little before the crash, with a
            # frame published just before it and lost with the scheduler before this
            # process fetched it (its rows up to a tick and a fetch older than the crash).
            before = crashed - GAP_BEFORE_CRASH
            assert end / 1000 > before, f"{what}: gap before the scheduler crashed\n{tail}"
        assert rows[-1] > crashed * 1000, f"{what}: nothing after the scheduler's restart"
        print(f"{what}: {len(rows)} rows, skipped {gaps} (outage {outage_ms:.0f} ms)")
    with contextlib.suppress(FileNotFoundError):
        etl_log = (logs / "etl.log").read_text(errors="replace")
        # distributed itself may log a CommClosedError's traceback while its scheduler
        # dies; headrace's own loggers must not.
        traces = tracebacks_from(etl_log, "headrace")
        assert not traces, "\n\n".join(traces) + f"\n{tail}"


def tracebacks_from(log: str, prefix: str) -> list[str]:
    """Each traceback that follows a log line of a logger named ``prefix...``: that line
    and the traceback (so that a failure shows what was raised, not only where)."""
    found, last, current = [], "", None
    for line in log.splitlines():
        if re.match(r"\d{4}-\d\d-\d\d ", line):
            last, current = line, None
        elif line.startswith("Traceback") and re.search(rf" {prefix}[.\w]*: ", last):
            current = [last, line]
            found.append(current)
        elif current is not None:
            current.append(line)
    return ["\n".join(lines) for lines in found]
