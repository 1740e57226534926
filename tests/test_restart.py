"""SIGKILL of `headrace etl` and a restart: every line published exactly once over both runs."""

from __future__ import annotations

import os
import signal
import time

import pandas as pd
import pytest
import yaml
from distributed import Client, LocalCluster
from helpers import headrace_etl, wait_for

from cluster.logwriter import LogWriter
from etl import contract
from etl.state import StateStore


@pytest.mark.timeout(180)
def test_sigkill_and_restart_loses_and_repeats_nothing(
    ftp_server, ftp_root, tmp_path, cluster_options
):
    path = ftp_root / "kill.log"
    writer = LogWriter([path], rate=500, keep=True)
    url = ftp_server.url("kill.log").replace(":s3cret-PW", "")  # password comes from the env
    config = tmp_path / "etl.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(tmp_path / "state"),
                "ring": 100_000,
                "streams": {"killme": {"source": url, "password_env": "FTP_PW", "interval": 0.1}},
            }
        )
    )
    # Worker processes, as in production: the extract connection pool lives in them.
    with (
        open(tmp_path / "etl.log", "wb") as log,
        LocalCluster(**{**cluster_options, "processes": True}) as cluster,
        Client(cluster) as client,
    ):

        def head() -> int:
            h = contract.FrameStream("killme", client).head()
            return h.seq if h else 0

        writer.start()
        second = None
        first = headrace_etl(config, cluster.scheduler_address, log, {"FTP_PW": "s3cret-PW"})
        try:
            wait_for(lambda: head() >= 10, 60, "10 frames from the first run")
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
            killed_at = head()
            time.sleep(1.0)  # lines keep arriving while the loop is dead
            second = headrace_etl(config, cluster.scheduler_address, log, {"FTP_PW": "s3cret-PW"})
            wait_for(lambda: head() >= killed_at + 10, 60, "10 frames from the second run")
            writer.stop()
            store = StateStore(tmp_path / "state")
            wait_for(
                lambda: store.load("killme").cursor.offset == path.stat().st_size,
                30,
                "the loop to consume the whole file",
            )
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
        finally:
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
            writer.stop()
        frames = contract.FrameStream("killme", client).read(after=0)

    seqs = [s for s, _ in frames]
    assert seqs == list(range(1, len(seqs) + 1))
    rows = pd.concat([f for _, f in frames], ignore_index=True)
    assert rows["time"].is_monotonic_increasing and rows["time"].is_unique
    state = store.load("killme")
    assert state.next_seq == len(seqs) + 1 and state.pending_until is None
    written = writer.lines(path)
    assert rows["count"].sum() + len(state.carry.rows) == len(written)
    assert (tmp_path / "etl.log").read_bytes().count(b"s3cret-PW") == 0
