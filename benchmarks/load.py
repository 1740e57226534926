"""Viewer load: headrace and the per-session peer, the same viewers, FTP server and files.

The systems under test are started as *stacks* (:mod:`benchmarks.stacks`). For each N of
the sweep, the load generator (a child process, so that its CPU does not share a GIL with
the FTP server or the sampler) connects N viewers, waits ``settle`` seconds, measures
``duration`` seconds and waits ``grace`` more for late rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import psutil

from . import common
from .analysis import analyze
from .common import ProcStats, by_role, log
from .data import STREAMS, Feed
from .stacks import Stack, loadgen_argv, start_headrace, start_peer

__all__ = [
    "FrameEvents",
    "Stack",
    "ok",
    "run_phase",
    "sessions_per_process",
    "start_headrace",
    "start_peer",
    "sweep",
]

# Beyond these the system is overloaded for good: larger N would only take time
# (and starve the machine), so the sweep stops there.
GIVE_UP_P95 = 3.0
GIVE_UP_RATIO = 0.5
CAPACITY_P95 = 1.0
CAPACITY_RATIO = 0.99


def sessions_per_process(stack: Stack, local_ports: list[int | None]) -> dict[int, int]:
    """Which Panel process holds each viewer's websocket: {viewer index: pid}."""
    ours = {port: i for i, port in enumerate(local_ports) if port is not None}
    where: dict[int, int] = {}
    for pid in stack.panel_pids():
        try:
            conns = psutil.Process(pid).net_connections("tcp")
        except psutil.Error:
            continue
        for c in conns:
            established = c.status == psutil.CONN_ESTABLISHED and c.laddr.port == stack.port
            if established and c.raddr and c.raddr.port in ours:
                where[ours[c.raddr.port]] = pid
    return where


def run_phase(
    stack: Stack,
    feed: Feed,
    n: int,
    work: Path,
    settle: float,
    duration: float,
    grace: float,
    keep: bool = False,
    join: int = 0,
    join_spacing: float = 0.02,
    prepared: bool = False,
) -> dict:
    """One N: connect, measure, disconnect; returns the figures of the phase.

    With ``join``, that many more viewers open the page during the window, one every
    ``join_spacing`` s (see :func:`benchmarks.loadgen.join`); the latency figures are
    the N watchers', ``join_first_row_s`` the joiners' times to their first live row.
    """
    stack.check_alive()
    rows_path = work / f"rows-{stack.name}-{n}.npz"
    extra = ["--join", str(join), "--join-spacing", str(join_spacing)] if join else []
    if prepared:  # the window starts once the server had time to build sessions ahead
        extra += ["--prepared-from", stack.url.rsplit("/", 1)[0] + "/metrics"]
    lg = subprocess.Popen(
        loadgen_argv(stack.url, n, settle, duration, grace, rows_path, extra),
        stdout=subprocess.PIPE,
        stderr=open(work / "loadgen.log", "ab"),  # noqa: SIM115 - the child keeps it
        text=True,
        cwd=common.ROOT,
        start_new_session=True,
    )
    phase: dict = dict(system=stack.name, n=n)
    where: dict[int, int] = {}
    stats: ProcStats | None = None
    ftp0 = (0, 0.0)
    events = FrameEvents(stack.scheduler) if stack.scheduler else None
    try:
        assert lg.stdout is not None
        for line in lg.stdout:
            event = json.loads(line)
            kind = event["event"]
            if kind == "connected":
                phase["connect_s"] = event["seconds"]
                where = sessions_per_process(stack, event["local_ports"])
                phase["sessions_per_process"] = dict(Counter(where.values()))
                log(
                    f"{stack.name} N={n}: {event['viewers']} connected in {event['seconds']}s,"
                    f" {event['failed']} failed; per process {phase['sessions_per_process']}"
                )
            elif kind == "watching":
                phase["watching_s"] = event["seconds"]
                phase["refused_opens"] = event.get("refused", 0)
                log(
                    f"{stack.name} N={n}: every viewer had live rows after {event['seconds']}s "
                    f"({phase['refused_opens']} opens refused and tried again)"
                )
            elif kind == "prepared":
                phase["prepared_sessions"] = event["sessions"]
                log(f"{stack.name} N={n}: {event['sessions']:.0f} sessions built ahead")
            elif kind == "window_start":
                stats = ProcStats(
                    {**stack.roles(), "loadgen": [lg.pid]}, solo={"ftp": [os.getpid()]}
                ).__enter__()
                ftp0 = (feed.server.transfers, time.monotonic())
            elif kind == "joined":
                phase["join_first_row_s"] = event["first_row_s"]
                phase["join_failed"] = event["failed"]
                phase["join_phases"] = event.get("phases", {})
            elif kind == "window_end" and stats is not None:
                stats.__exit__()
                transfers, t = feed.server.transfers - ftp0[0], time.monotonic() - ftp0[1]
                phase["ftp_transfers_per_s"] = round(transfers / t, 2)
        lg.wait(60)
    finally:
        if stats is not None and stats._thread is not None and stats._thread.is_alive():
            stats.__exit__()
        common.stop(lg)
        if events is not None:
            events.close()
    if lg.returncode != 0 or not rows_path.exists():
        raise RuntimeError(f"load generator failed ({lg.returncode}); see {work / 'loadgen.log'}")
    frame_events = events.events if events is not None else None
    phase.update(analyze(rows_path, {s: feed.path(s) for s in STREAMS}, frame_events))
    if keep:
        log(f"{stack.name} N={n}: rows kept in {rows_path}")
    else:
        rows_path.unlink()
    # Completeness per server process: is one of them falling behind?
    ratios = phase.pop("viewer_ratio")
    by_pid: dict[int, list[float]] = {}
    for v, pid in where.items():
        by_pid.setdefault(pid, []).append(ratios.get(v, 0.0))
    phase["rows_ratio_per_process"] = {
        pid: round(sum(r) / len(r), 4) for pid, r in sorted(by_pid.items())
    }
    phase["rows_ratio_min_viewer"] = round(min(ratios.values(), default=0.0), 4)
    if stats is not None:
        phase["processes"] = stats.result()
        phase["roles"] = by_role(phase["processes"])
        phase["machine"] = stats.machine()
    return phase


class FrameEvents:
    """The loop's frame events (the contract's), to split latency at the publish instant."""

    def __init__(self, address: str) -> None:
        from distributed import Client

        from headrace.etl import contract

        self.events: list[dict] = []
        self.client = Client(address, timeout=30)
        # The handler runs on the client's loop: only record.
        contract.subscribe_all(self.client, lambda e: self.events.append(e.to_message()))

    def close(self) -> None:
        self.client.close()


def ok(phase: dict) -> bool:
    p95 = phase.get("latency_p95")
    return p95 is not None and p95 < CAPACITY_P95 and phase["rows_ratio"] >= CAPACITY_RATIO


def sweep(
    stack: Stack,
    feed: Feed,
    ns: list[int],
    work: Path,
    settle: float,
    duration: float,
    grace: float,
    cooldown: float,
    keep: bool = False,
) -> dict:
    phases: list[dict] = []
    stopped_at = None
    for n in ns:
        try:
            phase = run_phase(stack, feed, n, work, settle, duration, grace, keep)
        except Exception as exc:  # one broken phase is reported, not fatal to the run
            log(f"{stack.name} N={n}: failed: {exc}")
            phases.append(dict(system=stack.name, n=n, error=str(exc)[:300]))
            break
        phases.append(phase)
        log(
            f"{stack.name} N={n}: p50/p95/p99 {_ms(phase['latency_p50'])}/"
            f"{_ms(phase['latency_p95'])}/{_ms(phase['latency_p99'])} ms, rows "
            f"{phase['rows_received']}/{phase['rows_expected']}, ftp "
            f"{phase.get('ftp_transfers_per_s')}/s"
        )
        p95 = phase["latency_p95"]
        if p95 is None or p95 > GIVE_UP_P95 or phase["rows_ratio"] < GIVE_UP_RATIO:
            stopped_at = n
            break
        time.sleep(cooldown)  # let the server drop the closed sessions
    skipped = [n for n in ns if n > (stopped_at or max(ns))]
    capacity = max((p["n"] for p in phases if "error" not in p and ok(p)), default=0)
    return dict(
        system=stack.name, phases=phases, capacity=capacity, skipped=skipped, notes=stack.notes
    )


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.0f}"
