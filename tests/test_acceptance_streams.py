"""Issue 23's acceptance run: 200 streams on vsftpd, 40 lines a second each (some
malformed, one file rotated mid-run), and a SIGKILL of the loop halfway: every line of
every stream once, each stream's sequence numbers consecutive, every stream ticking."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml
from distributed import Client, LocalCluster
from faultreport import record
from helpers import headrace_etl, kill_groups, published_seq, wait_for

from headrace.cluster.demo.logwriter import format_line
from headrace.etl import contract
from headrace.etl.store.state import StateStore

STREAMS = 200
INTERVAL = 0.2
RATE = 40  # lines a second per stream
ROTATED = "s007"


class Writer(threading.Thread):
    """Appends ``RATE`` lines a second to each file, in one write a file every 0.2 s.

    A line's value is its number in the stream (good lines only); every 25th line of
    every tenth stream is malformed. ``rotate()`` renames one file to ``<name>.1``
    between two writes and goes on in a new file, as logrotate does.
    """

    def __init__(self, root: Path) -> None:
        super().__init__(daemon=True)
        self.root, self.stop = root, threading.Event()
        self.good: dict[str, list[float]] = {f"s{i:03d}": [] for i in range(STREAMS)}
        self.malformed = dict.fromkeys(self.good, 0)
        self.lines = dict.fromkeys(self.good, 0)
        self.rotate_now, self.rotated = threading.Event(), threading.Event()

    def run(self) -> None:
        per_write = int(RATE * 0.2)
        while not self.stop.is_set():
            began = time.time()
            if self.rotate_now.is_set() and not self.rotated.is_set():
                path = self.root / f"{ROTATED}.log"
                path.rename(self.root / f"{ROTATED}.log.1")
                self.rotated.set()
            for i, name in enumerate(self.good):
                out = []
                for _ in range(per_write):
                    self.lines[name] += 1
                    if i % 10 == 0 and self.lines[name] % 25 == 0:
                        out.append(b"this line is not a measurement\n")
                        self.malformed[name] += 1
                    else:
                        value = float(len(self.good[name]) + 1)
                        self.good[name].append(value)
                        out.append(format_line(time.time(), value))
                with open(self.root / f"{name}.log", "ab") as f:
                    f.write(b"".join(out))
            self.stop.wait(max(0.0, 0.2 - (time.time() - began)))


@pytest.mark.fault
@pytest.mark.timeout(420)
def test_200_streams_on_vsftpd_every_line_once_across_a_sigkill(
    ftp_root, tmp_path, cluster_options
):
    from vsftpd import vsftpd  # imports distributed (see conftest.py)

    writer = Writer(ftp_root)
    for name in writer.good:
        (ftp_root / f"{name}.log").touch()
    first = second = None
    with (
        vsftpd(ftp_root, tmp_path, passive_ports=32) as server,  # a port per session
        open(tmp_path / "etl.log", "wb") as log,
        LocalCluster(**{**cluster_options, "processes": True, "n_workers": 2}) as cluster,
        Client(cluster) as client,
    ):
        config = _config(tmp_path, server, list(writer.good))
        writer.start()
        try:
            first = headrace_etl(config, cluster.scheduler_address, log)
            names = list(writer.good)
            wait_for(
                lambda: all(published_seq(client, n) >= 5 for n in names[::20]), 120, "first frames"
            )
            writer.rotate_now.set()
            writer.rotated.wait(10)
            time.sleep(4.0)
            os.killpg(first.pid, signal.SIGKILL)  # halfway: tasks in flight, commits pending
            first.wait()
            killed = {n: published_seq(client, n) for n in names}
            time.sleep(1.0)  # lines keep coming while no loop runs
            second = headrace_etl(config, cluster.scheduler_address, log)
            wait_for(
                lambda: all(published_seq(client, n) > killed[n] for n in names), 120, "restart"
            )
            restarted = {n: published_seq(client, n) for n in names}
            steady = time.monotonic()
            time.sleep(8.0)
            ticks = {n: published_seq(client, n) - restarted[n] for n in names}
            seconds = time.monotonic() - steady
            writer.stop.set()
            writer.join(10)
            store = StateStore(tmp_path / "state")

            def consumed(name: str) -> bool:
                return store.load(name).cursor.offset == (ftp_root / f"{name}.log").stat().st_size

            wait_for(lambda: all(consumed(n) for n in names), 60, "every file read to its end")
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
        finally:
            writer.stop.set()
            kill_groups(first, second)
        frames = {n: contract.FrameStream(n, client).read(after=0) for n in names}

    lost = duplicated = 0
    for name in names:
        seqs = [s for s, _ in frames[name]]
        assert seqs == list(range(1, len(seqs) + 1)), name  # consecutive, none twice
        values = [v for _, f in frames[name] for v in f["value"].tolist()]
        written = writer.good[name]
        lost += len(set(written) - set(values))
        duplicated += len(values) - len(set(values))
        assert values == written, name  # every good line once, in order
        state = store.load(name)
        assert state.totals["malformed"] == writer.malformed[name], name
        assert state.totals["lines"] == writer.lines[name], name
    # Every stream ticked at its interval after the restart: at 40 lines a second each
    # tick has rows, so a frame a tick (half of them at least, on a busy machine).
    slowest = min(ticks.values())
    record(
        "many streams, the loop dies",
        f"{STREAMS} streams on vsftpd every {INTERVAL} s at {RATE} lines/s each (every 25th "
        "line of every tenth stream malformed, one file rotated), SIGKILL of `headrace etl` "
        "halfway, then a restart",
        written=sum(len(v) for v in writer.good.values()),
        published=sum(len(f) for fs in frames.values() for _, f in fs),
        open=0,
        lost=lost,
        duplicated=duplicated,
        slowest_stream_ticks_per_s=round(slowest / seconds, 1),
    )
    assert slowest >= 0.5 * seconds / INTERVAL, sorted(ticks.items(), key=lambda t: t[1])[:10]
    # The rotation was seen (its old file's last lines, read from its copy, are among the
    # values checked above).
    said = (tmp_path / "etl.log").read_text()
    assert f"stream {ROTATED}: " in said and "rotated, reading again from byte 0" in said


def _config(tmp_path: Path, server, names: list[str]) -> Path:
    """The loop's configuration: a raw stream (no window) per file, every ``INTERVAL``."""
    streams = {
        name: {"source": server.url(f"{name}.log"), "interval": INTERVAL, "transform": "none"}
        for name in names
    }
    config = tmp_path / "etl.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(tmp_path / "state"),
                "ring": 100_000,
                "sink": "none",
                "streams": streams,
            }
        )
    )
    return config
