"""SIGKILL of `headrace etl` and a restart: every line published, and kept, exactly once."""

from __future__ import annotations

import os
import signal
import time

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
from distributed import Client, LocalCluster
from helpers import headrace_etl, kill_groups, published_seq, wait_for

from headrace.cluster.demo.logwriter import LogWriter
from headrace.etl import contract
from headrace.etl.contract import history
from headrace.etl.store.state import StateStore


@pytest.mark.fault
@pytest.mark.timeout(180)
@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_sigkill_and_restart_loses_and_repeats_nothing(
    ftp_server, ftp_root, tmp_path, cluster_options, database, request
):
    path = ftp_root / "kill.log"
    writer = LogWriter([path], rate=500, keep=True)
    url = ftp_server.url("kill.log").replace(":s3cret-PW", "")  # password comes from the env
    if database == "postgresql":
        sink_url = request.getfixturevalue("postgres").create_database(f"restart{os.getpid()}")
    else:
        sink_url = f"sqlite:///{tmp_path}/history.sqlite"
    config = tmp_path / "etl.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(tmp_path / "state"),
                "ring": 100_000,
                "sink": {"url": sink_url},
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
        writer.start()
        second = None
        first = headrace_etl(config, cluster.scheduler_address, log, {"FTP_PW": "s3cret-PW"})
        try:
            wait_for(
                lambda: published_seq(client, "killme") >= 10, 60, "10 frames from the first run"
            )
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
            killed_at = published_seq(client, "killme")
            time.sleep(1.0)  # lines keep arriving while the loop is dead
            second = headrace_etl(config, cluster.scheduler_address, log, {"FTP_PW": "s3cret-PW"})
            wait_for(
                lambda: published_seq(client, "killme") >= killed_at + 10,
                60,
                "10 frames from the second run",
            )
            writer.stop()
            store = StateStore(tmp_path / "state")
            wait_for(
                lambda: store.load("killme").cursor.offset == path.stat().st_size,
                30,
                "the loop to consume the whole file",
            )
            wait_for(lambda: store.backlog()[0] == 0, 30, "the history backlog to be written")
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
        finally:
            kill_groups(first, second)
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
    # The health record's all-time totals count every line once across the SIGKILL.
    assert state.totals["lines"] == len(written) and state.totals["rows"] == len(rows)
    # The database has every published row once: a SIGKILL between publish and commit,
    # replayed after the restart, is not written twice.
    engine = sa.create_engine(sink_url)
    with engine.connect() as conn:
        kept = pd.read_sql(sa.select(history.rows).where(history.rows.c.stream == "killme"), conn)
        kept_frames = conn.execute(sa.select(sa.func.count()).select_from(history.frames)).scalar()
    engine.dispose()
    assert kept_frames == len(seqs)
    assert kept["count"].sum() == rows["count"].sum()
    assert kept["time"].is_unique and len(kept) == len(rows)
    assert (tmp_path / "etl.log").read_bytes().count(b"s3cret-PW") == 0
