"""The history writer never outlives its loop, and two writers never drain one backlog."""

from __future__ import annotations

import time

import psutil
import pytest
import sqlalchemy as sa
import yaml
from distributed import Client, LocalCluster
from faultreport import record
from helpers import headrace_etl, published_seq, wait_for

from headrace.cluster.demo.logwriter import LogWriter
from headrace.cluster.writer import LOCK
from headrace.etl.contract import history
from headrace.etl.store.state import StateStore


def writers(lock) -> list[int]:
    """Processes that have the state directory's writer lock file open."""
    found = []
    for p in psutil.process_iter():
        try:
            if any(f.path == str(lock) for f in p.open_files()):
                found.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


@pytest.mark.fault
@pytest.mark.timeout(240)
def test_five_sigkills_of_the_loop_leave_one_writer_and_no_integrity_error(
    ftp_server, ftp_root, tmp_path, cluster_options
):
    path = ftp_root / "w.log"
    writer = LogWriter([path], rate=1000, keep=True)
    sink_url = f"sqlite:///{tmp_path}/history.sqlite"
    state = tmp_path / "state"
    config = tmp_path / "etl.yaml"
    url = ftp_server.url("w.log").replace(":s3cret-PW", "")
    config.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(state),
                "ring": 100_000,
                "sink": {"url": sink_url},
                "streams": {"w": {"source": url, "password_env": "FTP_PW", "interval": 0.1}},
            }
        )
    )
    env = {"FTP_PW": "s3cret-PW"}
    lock, log_path = state / LOCK, tmp_path / "etl.log"
    counts = []
    with (
        open(log_path, "wb") as log,
        LocalCluster(**cluster_options) as cluster,
        Client(cluster) as client,
    ):
        writer.start()
        loop = None
        try:
            for _ in range(5):
                before = published_seq(client, "w")
                loop = headrace_etl(config, cluster.scheduler_address, log, env)
                wait_for(
                    lambda b=before: published_seq(client, "w") >= b + 5 and writers(lock),
                    60,
                    "frames, a writer",
                )
                time.sleep(2.5)  # the backlog has frames for the writer at the kill
                counts.append(len(writers(lock)))
                loop.kill()  # the loop alone, as a supervisor that kills one pid does
                loop.wait()
                wait_for(lambda: not writers(lock), 5, "the orphaned writer to stop")
            loop = headrace_etl(config, cluster.scheduler_address, log, env)
            writer.stop()
            store = StateStore(state)
            wait_for(
                lambda: store.load("w").cursor.offset == path.stat().st_size, 60, "the whole file"
            )
            wait_for(lambda: store.backlog()[0] == 0, 60, "the history backlog to be written")
            seqs = store.load("w").next_seq - 1
            store.close()
            loop.terminate()
            assert loop.wait(30) == 0
        finally:
            writer.stop()
            if loop is not None and loop.poll() is None:
                loop.kill()
    assert counts == [1] * 5
    text = log_path.read_text()
    assert "IntegrityError" not in text
    assert text.count("the writer stops") == 5
    engine = sa.create_engine(sink_url)
    with engine.connect() as conn:
        kept = conn.execute(sa.select(sa.func.count()).select_from(history.frames)).scalar()
    engine.dispose()
    assert kept == seqs  # every frame once
    record(
        "the loop is SIGKILLed alone",
        "SIGKILL of the `headrace etl` process only (not its group), 5 times, at 1,000 "
        "lines/s with history; a restart after each",
        lost=0,
        duplicated=0,
        history_writers_running_each_time=counts,
        integrity_errors=text.count("IntegrityError"),
    )
