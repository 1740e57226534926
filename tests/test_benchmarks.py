"""The benchmarks' own code keeps up with the code it measures (tiny runs, no figures judged)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from benchmarks import hvcost, parser


def test_parser_benchmark_runs_every_case():
    result = parser.run(lines=5_000, repeats=1)
    for case in ("headrace", "pandas", "headrace_parse_only", "pandas_parse_only"):
        assert "error" not in result[case], result[case]
        assert result[case]["rows"] > 0
    assert result["headrace_parse_only"]["rows"] == 5_000


def test_hv_benchmark_runs_every_plot():
    result = hvcost.run(sessions=2, ticks=5, repeats=1, opens=1)
    assert "error" not in result, result
    assert result["view_ms"] > 0 and result["raw_ms"] > 0 and result["view_vs_raw"] > 0
    assert result["open_ms"]["view"] > 0 and result["open_ms"]["dashboard"] > 0
    assert result["derived_calls"] == result["ticks"] == 5  # once per tick, not per session
    assert result["viewer_rows"]["view"] > 0 and result["viewer_rows"]["raw"] > 0


@pytest.mark.slow
def test_history_benchmark_reads_every_window():
    from benchmarks import history

    result = history.run(days=1, repeats=1)
    assert set(result["windows"]) == {"1 h", "24 h", "7 d", "30 d"}
    assert all(0 < w["points"] <= 2000 for w in result["windows"].values())
    assert result["windows"]["24 h"]["max"] > 0.5  # the filled spikes come back
    assert result["write"]["frames_per_s"] > 0


def test_windows_benchmark_runs_every_kind(tmp_path):
    from benchmarks import windows

    doc = tmp_path / "windows.md"
    windows.main(["--rows", "20000", "--tick", "1000", "--runs", "1", "--doc", str(doc)])
    text = doc.read_text()
    for kind in windows.KINDS:
        assert kind in text
    assert "python -m benchmarks.windows --rows 20000" in text


def test_streams_benchmark_counts_ticks_by_sequence_number_not_window_edges():
    from benchmarks.streams import _rate

    # 200 streams ticking every 1 s, in phase, seen over a 20.5 s window: 20 or 21 frames
    # each depending on the phase, but one tick a second each whatever the edges.
    for phase in (0.0, 0.4, 0.9):
        window = [
            (f"s{i}", 100 + phase + k, 0, 7 + k)
            for i in range(200)
            for k in range(21)
            if k + phase < 20.5
        ]
        assert _rate(window) == pytest.approx(200.0)
    late = [("a", 100.0 + 2 * k, 0, k) for k in range(10)]  # a stream ticking every 2 s
    assert _rate(late) == pytest.approx(0.5)


def test_streams_benchmark_reports_each_figures_median_over_runs():
    from benchmarks.streams import median

    runs = [
        {"streams": 200, "stream_ticks_per_s": t, "cpu": {"loop": c}, "source": "vsftpd"}
        for t, c in ((900.0, 0.3), (1000.0, 0.2), (950.0, 0.25))
    ]
    got = median(runs)
    assert got == {
        "streams": 200,
        "stream_ticks_per_s": 950.0,
        "cpu": {"loop": 0.25},
        "source": "vsftpd",
        "runs": 3,
    }
    assert median(runs[:1]) is runs[0]


def test_the_latency_proxy_delays_each_way_and_keeps_the_bytes_in_order():
    """A real FTP server behind the proxy: its greeting comes half a round trip late, a
    command's reply a whole one, and many commands in one write are answered in order."""
    import socket
    import time

    from benchmarks.common import free_port
    from benchmarks.latency import Delay
    from headrace.cluster.demo.ftpserver import FTPServer

    rtt = 0.2
    server = FTPServer(Path(tempfile.mkdtemp()), port=free_port()).start()
    proxy = Delay(free_port(), ("127.0.0.1", server.port), rtt).start()
    try:
        began = time.monotonic()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            reader = s.makefile("rb")
            assert reader.readline().startswith(b"220")
            greeted = time.monotonic()
            s.sendall(b"NOOP\r\n")
            assert reader.readline().startswith(b"200")
            replied = time.monotonic()
            s.sendall(b"NOOP\r\nUSER anonymous\r\nNOOP\r\n")
            replies = [reader.readline()[:3] for _ in range(3)]
        assert greeted - began >= rtt / 2
        assert replied - greeted >= rtt
        assert replies == [b"200", b"331", b"200"]
    finally:
        proxy.stop()
        server.stop()


def test_the_build_benchmark_builds_and_copies_the_dashboard_with_and_without_an_internal():
    from benchmarks import buildcost
    from headrace.app import registry

    try:
        ways = buildcost.measure(builds=2, streams=2, without=["quick_references"])
    finally:
        registry.reset()
    assert ways["models"] > 100  # two live views' plots among them
    assert list(ways["ms"]) == ["built", "copied", "built, without quick_references"]
    assert [len(t) for t in ways["ms"].values()] == [2, 2, 2]
    assert all(t > 0 for times in ways["ms"].values() for t in times)
