"""What operators read, against real processes: the loop's and the Panel processes'
Prometheus figures, ``headrace status`` and the dead-letter store, across a SIGKILL.

An FTP server with a log that gets a malformed line every 40 lines, `headrace etl` (killed
and restarted in the middle), `headrace serve --num-procs 3` with Bokeh sessions open.
The totals the figures, the status command and the store report must equal what was
written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml
from distributed import Client, LocalCluster
from helpers import (
    RecordedSession,
    headrace_etl,
    headrace_serve,
    published_seq,
    wait_for,
    wait_http,
)
from ports import free_port
from prometheus_client.parser import text_string_to_metric_families

from headrace.cluster.demo.logwriter import LogWriter
from headrace.etl import contract

BAD_EVERY = 40


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of a /metrics page, by Prometheus. parser."""
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def by_label(figures: dict, name: str, label: str) -> dict[str, float]:
    return {dict(k[1])[label]: v for k, v in figures.items() if k[0] == name}


def status(*args: str) -> tuple[int, dict | str]:
    cmd = [sys.executable, "-m", "headrace.cluster.cli", "status", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    out = done.stdout.strip()
    return done.returncode, json.loads(out) if "--json" in args else out


@pytest.mark.fault
@pytest.mark.timeout(240)
def test_metrics_status_and_dead_letters_count_every_line_once_across_a_sigkill(
    ftp_server, ftp_root, tmp_path, cluster_options
):
    path = ftp_root / "good.log"
    writer = LogWriter([path], rate=200, malformed_every=BAD_EVERY)
    config = tmp_path / "etl.yaml"
    state = tmp_path / "state"
    streams = {
        "good": {"source": ftp_server.url("good.log"), "interval": 0.1},
        "broken": {"source": ftp_server.url("missing.log"), "interval": 0.1},
    }
    config.write_text(
        yaml.safe_dump({"state_dir": str(state), "ring": 100_000, "streams": streams})
    )
    metrics_port = free_port()
    loop_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    with (
        open(tmp_path / "etl.log", "wb") as log,
        LocalCluster(**cluster_options) as cluster,
        Client(cluster) as client,
        headrace_serve(cluster.scheduler_address, 3, tmp_path / "panel.log") as (panel, port),
    ):
        address = cluster.scheduler_address

        wait_http(port, "/metrics", 60, panel)  # a GET of /dashboard would open a session
        url = f"http://127.0.0.1:{port}/dashboard"
        sessions = [RecordedSession(url, "good") for _ in range(4)]
        writer.start()
        loops = [headrace_etl(config, address, log, metrics_port=metrics_port)]
        try:
            wait_for(
                lambda: published_seq(client, "good") >= 10, 60, "10 frames from the first run"
            )
            for s in sessions:
                s.start()
            for s in sessions:
                assert s.pulled.wait(30) and s.error is None, s.error
            wait_for(lambda: status("--scheduler", address, "--stream", "good")[0] == 0, 30, "ok")
            os.killpg(loops[0].pid, signal.SIGKILL)
            loops[0].wait()
            killed_at = published_seq(client, "good")
            time.sleep(1.0)  # lines, good and bad, keep arriving while the loop is dead
            loops.append(headrace_etl(config, address, log, metrics_port=metrics_port))
            wait_for(
                lambda: published_seq(client, "good") >= killed_at + 10,
                60,
                "10 frames from the second run",
            )
            writer.stop()

            def caught_up() -> bool:
                lines = by_label(scrape(loop_metrics), "headrace_lines_total", "stream")
                return lines.get("good") == writer.written[path]

            wait_for(caught_up, 30, "the loop to read every line written")

            def reported() -> bool:  # the health report after that, on the scheduler
                _, doc = status("--scheduler", address, "--stream", "good", "--json")
                return [(g["lines"], g["seq"]) for g in doc["streams"]] == [
                    (writer.written[path], published_seq(client, "good"))
                ]

            wait_for(reported, 30, "a health report of every line")
            loop = scrape(loop_metrics)
            code, good = status("--scheduler", address, "--stream", "good", "--json")
            broken_code, broken = status("--scheduler", address, "--stream", "broken")
            letters_code, letters = status(
                "--malformed", "good", "--state-dir", str(state), "--limit", "10000", "--json"
            )
            published = published_seq(client, "good")
            wait_for(
                lambda: (
                    set(
                        by_label(
                            scrape(f"http://127.0.0.1:{port}/metrics"),
                            "headrace_frames_fetched_total",
                            "process",
                        ).values()
                    )
                    == {published}
                ),
                20,
                "every Panel process to have fetched every frame",
            )
            panel_figures = scrape(f"http://127.0.0.1:{port}/metrics")
            loops[-1].send_signal(signal.SIGTERM)
            assert loops[-1].wait(30) == 0
            # Stopped: the stream turns stale once nothing is reported.
            wait_for(
                lambda: (
                    status("--scheduler", address, "--stream", "good", "--stale-after", "3")[0] == 1
                ),
                20,
                "headrace status to say stale",
            )
        finally:
            writer.stop()
            for proc in loops:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
            for s in sessions:
                s.stop()
        frames = contract.FrameStream("good", client).read(after=0)

    written, bad = writer.written[path], writer.malformed[path]
    assert len(bad) == written // BAD_EVERY and len(bad) > 10
    rows = sum(len(f) for _, f in frames)
    # The loop's figures: all-time totals, each line once across the SIGKILL.
    value = {k[0]: v for k, v in loop.items() if dict(k[1]).get("stream") == "good"}
    assert value["headrace_lines_total"] == written
    assert value["headrace_malformed_lines_total"] == len(bad)
    assert value["headrace_rows_total"] == rows
    assert value["headrace_last_published_seq"] == published == len(frames)
    assert value["headrace_consecutive_failures"] == 0
    assert value["headrace_ticks_total"] >= value["headrace_source_transfers_total"] > 0
    assert value["headrace_read_bytes_total"] == path.stat().st_size
    assert value["headrace_publish_lag_seconds_count"] > 0
    broken_figures = {k[0]: v for k, v in loop.items() if dict(k[1]).get("stream") == "broken"}
    assert broken_figures["headrace_consecutive_failures"] > 0
    # `headrace status` says the same, and names the failing stream's error.
    assert code == 0, good
    [g] = good["streams"]
    assert (g["state"], g["seq"], g["malformed"]) == ("ok", published, len(bad))
    assert (g["lines"], g["rows"]) == (written, rows)
    assert broken_code == 2 and "FAILING" in broken and "missing.log" in broken, broken
    # The dead letters: every malformed line once, with its line number.
    assert letters_code == 0
    assert sorted(d["line"] for d in letters["lines"]) == bad
    assert {d["text"] for d in letters["lines"]} == {f"not a log line {n}" for n in bad}
    assert all(
        d["source"].endswith("good.log") and "s3cret" not in d["source"] for d in letters["lines"]
    )
    # Every Panel process, each labelled, in one scrape: the sessions open and what they got.
    open_sessions = by_label(panel_figures, "headrace_viewer_sessions", "process")
    assert len(open_sessions) == 3 and sum(open_sessions.values()) == len(sessions)
    messages = by_label(panel_figures, "headrace_viewer_messages_total", "process")
    sent = by_label(panel_figures, "headrace_viewer_sent_bytes_total", "process")
    for process, n in open_sessions.items():
        if n:
            assert messages[process] > 0 and sent[process] > 0, process
    lag = by_label(panel_figures, "headrace_viewer_lag_seconds_count", "process")
    assert sum(lag.values()) > 0
    assert all(len(s.rows()) > 0 for s in sessions)


@pytest.mark.slow  # connection attempts that time out
@pytest.mark.timeout(60)
def test_status_says_when_the_scheduler_cannot_be_reached():
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    code, text = status("--scheduler", address)
    assert code == 3 and "cannot reach the Dask scheduler at " + address in text, text
    code, doc = status("--scheduler", address, "--json")
    assert code == 3 and doc["streams"] == [] and doc["error"], doc
