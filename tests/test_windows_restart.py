"""A window with a grace period, out-of-order lines and a SIGKILL of the loop: the frames
equal pandas over the rows within the grace, the late lines are exactly the dead letters
with reason "late", and the history database holds the frames once. Emitting early, the
frames with their revisions applied equal the same, and so does the database."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
from distributed import Client, LocalCluster
from faultreport import record
from helpers import headrace_etl, kill_groups, published_seq, wait_for

from headrace.etl import contract
from headrace.etl.contract import history
from headrace.etl.store.deadletter import DeadLetterStore
from headrace.etl.store.state import StateStore
from headrace.etl.windows.early import latest

START = pd.Timestamp("2026-12-04T09:00:00Z").value
MS = 1_000_000
SIZE, GRACE = 100 * MS, 200 * MS


class Disorderly(threading.Thread):
    """Appends ~1,000 lines a second: most on time, some up to 150 ms behind, some 1 s."""

    def __init__(self, path) -> None:
        super().__init__(daemon=True)
        self.path, self.stop, self.lines = path, threading.Event(), []
        self.rng = np.random.default_rng(5)

    def run(self) -> None:
        i = 0
        with open(self.path, "a") as f:
            while not self.stop.is_set():
                batch = []
                for _ in range(20):
                    t = START + i * MS
                    r = self.rng.random()
                    t -= (
                        int(self.rng.integers(0, 150 * MS))
                        if r < 0.08
                        else (1000 * MS if r < 0.1 else 0)
                    )
                    key = "ab"[i % 2]
                    batch.append((t, key, round(float(self.rng.normal()), 6)))
                    i += 1
                f.write("".join(f"{_iso(t)} {k} {v}\n" for t, k, v in batch))
                f.flush()
                self.lines += batch
                time.sleep(0.02)


def _iso(ns: int) -> str:
    return pd.Timestamp(ns, tz="UTC").strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.mark.fault
@pytest.mark.timeout(180)
@pytest.mark.parametrize("emit", ["final", "early"])
def test_windows_exactly_once_across_a_sigkill(
    ftp_server, ftp_root, tmp_path, cluster_options, emit
):
    path = ftp_root / "w.log"
    path.write_text("")
    sink_url = f"sqlite:///{tmp_path}/history.sqlite"
    state = tmp_path / "state"
    config = tmp_path / "etl.yaml"
    stream = {
        "source": ftp_server.url("w.log").replace(":s3cret-PW", ""),
        "password_env": "FTP_PW",
        "interval": 0.1,
        "parser": {"pattern": r"^(?P<time>\S+) (?P<key>\S+) (?P<value>\S+)$"},
        "transform": {
            "window": "tumbling",
            "size": "100ms",
            "agg": ["max", "count"],
            "grace": "200ms",
            "idle_close": 1,
            "emit": emit,
        },
    }
    config.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(state),
                "ring": 100_000,
                "sink": {"url": sink_url},
                "streams": {"w": stream},
            }
        )
    )
    env = {"FTP_PW": "s3cret-PW"}
    writer = Disorderly(path)
    with (
        open(tmp_path / "etl.log", "wb") as log,
        LocalCluster(**cluster_options) as cluster,
        Client(cluster) as client,
    ):
        writer.start()
        first = headrace_etl(config, cluster.scheduler_address, log, env)
        second = None
        try:
            wait_for(lambda: published_seq(client, "w") >= 20, 60, "20 frames from the first run")
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
            time.sleep(1.0)  # lines keep coming while the loop is dead
            second = headrace_etl(config, cluster.scheduler_address, log, env)
            restarted_at = published_seq(client, "w")
            wait_for(
                lambda: published_seq(client, "w") >= restarted_at + 20,
                60,
                "20 frames from the second run",
            )
            writer.stop.set()
            writer.join()
            store = StateStore(state)

            def closed_for_idleness() -> bool:
                frames = contract.FrameStream("w", client).read(
                    after=max(published_seq(client, "w") - 1, 0)
                )
                idle = bool(frames) and (frames[-1][1]["count"] == 0).any()
                return idle and store.load("w").cursor.offset == path.stat().st_size

            wait_for(closed_for_idleness, 60, "the whole file and the idle gap")
            wait_for(lambda: store.backlog()[0] == 0, 60, "the history backlog to be written")
            store.close()
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
        finally:
            writer.stop.set()
            kill_groups(first, second)
        frames = contract.FrameStream("w", client).read(after=0)

    assert [s for s, _ in frames] == list(range(1, len(frames) + 1))
    published = pd.concat([f for _, f in frames], ignore_index=True)
    got = latest([f for _, f in frames])  # revisions applied (none when emitting final)
    assert ("revision" in published) == (emit == "early")
    revisions = int((published["revision"] > 0).sum()) if emit == "early" else 0
    assert revisions > 0 or emit == "final"
    if emit == "early":  # each revision once across the SIGKILL: 0, 1, 2... per window
        numbers = published.groupby(["time", "key"])["revision"].agg(list)
        assert all(n == list(range(len(n))) for n in numbers), numbers[numbers.map(len) > 1]
    # The oracle: the file's lines in order; a line is late once its window had closed.
    lines = pd.DataFrame(writer.lines, columns=["t", "key", "value"])
    t = lines["t"].to_numpy()
    mark = np.maximum.accumulate(np.r_[np.iinfo(np.int64).min, t[:-1]])
    ok = mark < t - t % SIZE + SIZE + GRACE
    kept = lines[ok]
    want = (
        kept.groupby([kept["t"] - kept["t"] % SIZE, "key"])["value"]
        .agg(["max", "size"])
        .reset_index()
        .sort_values(["t", "key"], ignore_index=True)
    )
    rows = got[got["count"] > 0].reset_index(drop=True)
    assert rows["time"].array.asi8.tolist() == want["t"].tolist()
    assert rows["key"].tolist() == want["key"].tolist()
    assert rows["value"].tolist() == want["max"].tolist()
    assert rows["value_count"].tolist() == want["size"].tolist()
    dead = DeadLetterStore(state)
    late = sorted(x.line for x in dead.recent("w", limit=100_000) if x.reason.startswith("late"))
    dead.close()
    assert late == (np.flatnonzero(~ok) + 1).tolist()  # line numbers, 1-based
    engine = sa.create_engine(sink_url)
    with engine.connect() as conn:
        query = sa.select(history.rows).where(history.rows.c.stream == "w")
        stored = pd.read_sql(query.order_by(history.rows.c.time, history.rows.c.key), conn)
    engine.dispose()
    assert len(stored) == len(got) and stored["count"].sum() == got["count"].sum()
    assert stored["key"].tolist() == got["key"].tolist()
    np.testing.assert_array_equal(stored["value"], got["value"])  # revisions replaced rows
    early = ", emitting early (each open window's changes as revisions)" if emit == "early" else ""
    record(
        f"the loop dies mid-window{', emitting early' if early else ''}",
        "SIGKILL of `headrace etl` under ~1,000 out-of-order lines/s into 100 ms windows with "
        f"a 200 ms grace{early}, then a restart; frames and dead letters against pandas over "
        "the file",
        written=len(lines),
        published=int(ok.sum()),
        open=0,
        lost=0,
        duplicated=0,
        late_lines_kept_as_dead_letters=len(late),
        late_lines_in_the_file=int((~ok).sum()),
        **({"revisions": revisions} if emit == "early" else {}),
    )
