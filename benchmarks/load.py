"""Viewer load: headrace and the per-session peer, the same viewers, FTP server and files.

A *stack* is the set of server processes under test, grouped by role for the process
statistics. For each N of the sweep, the load generator (a child process, so that its
CPU does not share a GIL with the FTP server or the sampler) connects N viewers, waits
``settle`` seconds, measures ``duration`` seconds and waits ``grace`` more for late rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from . import common
from .analysis import analyze
from .common import HOST, ProcStats, by_role, log
from .data import STREAMS, Feed

# Beyond these the system is overloaded for good: larger N would only take time
# (and starve the machine), so the sweep stops there.
GIVE_UP_P95 = 3.0
GIVE_UP_RATIO = 0.5
CAPACITY_P95 = 1.0
CAPACITY_RATIO = 0.99


@dataclass
class Stack:
    name: str
    url: str
    port: int
    procs: dict[str, list[subprocess.Popen]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    scheduler: str | None = None  # headrace: where to listen to the loop's frame events

    def roles(self) -> dict[str, list[int]]:
        return {role: [p.pid for p in ps] for role, ps in self.procs.items()}

    def check_alive(self) -> None:
        for role, ps in self.procs.items():
            for p in ps:
                if p.poll() is not None:
                    raise RuntimeError(f"{self.name}: {role} process exited ({p.returncode})")

    def stop(self) -> None:
        # Viewers' servers first, then the loop, then the cluster it talks to.
        for role in ("panel", "loop", "workers", "scheduler"):
            for p in self.procs.get(role, []):
                common.stop(p)

    def panel_pids(self) -> list[int]:
        """The processes that accept viewers: forked children if any, else the parent."""
        pids = []
        for p in self.procs.get("panel", []):
            procs = common.tree(p)
            listening = [q.pid for q in procs if _listens(q, self.port)]
            pids += listening or [p.pid]
        return pids


def _listens(proc: psutil.Process, port: int) -> bool:
    try:
        return any(
            c.status == psutil.CONN_LISTEN and c.laddr.port == port
            for c in proc.net_connections("tcp")
        )
    except psutil.Error:
        return False


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
) -> dict:
    """One N: connect, measure, disconnect; returns the figures of the phase."""
    stack.check_alive()
    rows_path = work / f"rows-{stack.name}-{n}.npz"
    lg = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.loadgen",
            "--url",
            stack.url,
            "--viewers",
            str(n),
            "--settle",
            str(settle),
            "--duration",
            str(duration),
            "--grace",
            str(grace),
            "--out",
            str(rows_path),
        ],
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
            elif kind == "window_start":
                stats = ProcStats(
                    {**stack.roles(), "loadgen": [lg.pid]}, solo={"ftp": [os.getpid()]}
                ).__enter__()
                ftp0 = (feed.server.transfers, time.monotonic())
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
    """The loop's frame events (``etl.contract``), to split latency at the publish instant."""

    def __init__(self, address: str) -> None:
        from distributed import Client

        from etl import contract

        self.events: list[dict] = []
        self.client = Client(address, timeout=30)
        # The handler runs on the client's loop: only record.
        contract.subscribe(self.client, lambda e: self.events.append(e.to_message()))

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


# -- the stacks ---------------------------------------------------------------------------------


def _panel_session_flags() -> list[str]:
    # Closed sessions are dropped after 1 s instead of 15-32 s, so that one phase's viewers
    # do not weigh on the next.
    return ["--check-unused-sessions", "1000", "--unused-session-lifetime", "1000"]


def start_peer(feed: Feed, num_procs: int, work: Path) -> Stack:
    port = common.free_port()
    env = {
        "HEADRACE_PEER_FTP": ",".join(feed.url(s) for s in STREAMS),
        "HEADRACE_PEER_INTERVAL": "0.2",
    }
    name = f"peer-{num_procs}p"
    proc = common.start(
        [
            common.VENV_BIN / "panel",
            "serve",
            "benchmarks/peer_app.py",
            "--address",
            HOST,
            "--port",
            port,
            "--num-procs",
            num_procs,
            "--allow-websocket-origin",
            f"{HOST}:{port}",
            *_panel_session_flags(),
        ],
        work / f"{name}.log",
        env,
    )
    stack = Stack(name, f"http://{HOST}:{port}/peer_app", port, {"panel": [proc]})
    try:
        common.wait_port(port, 90, proc)
        _warm(stack, work)
    except BaseException:
        stack.stop()
        raise
    return stack


def _warm(stack: Stack, work: Path) -> None:
    """A few throw-away viewers: the first session of each process imports and caches."""
    out = work / "warm.npz"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.loadgen",
            "--url",
            stack.url,
            "--viewers",
            "3",
            "--settle",
            "1",
            "--duration",
            "1",
            "--grace",
            "0",
            "--out",
            str(out),
        ],
        capture_output=True,
        timeout=120,
        cwd=common.ROOT,
        check=False,
    )
    out.unlink(missing_ok=True)


def start_headrace(feed: Feed, num_procs: int, work: Path, ring: int = 64) -> Stack:
    sched_port, panel_port = common.free_port(), common.free_port()
    address = f"tcp://{HOST}:{sched_port}"
    config = work / "headrace.yaml"
    lines = [f"state_dir: {work / 'state'}", f"ring: {ring}", "streams:"]
    for s in STREAMS:
        lines += [
            f"  {s}:",
            f"    source: {feed.url(s)}",
            "    interval: 0.2",
            "    transform: {resample: 25ms, agg: max}",
        ]
    config.write_text("\n".join(lines) + "\n")
    bin_ = common.VENV_BIN
    stack = Stack(
        "headrace", f"http://{HOST}:{panel_port}/dashboard", panel_port, scheduler=address
    )
    try:
        stack.procs["scheduler"] = [
            common.start(
                [
                    bin_ / "dask",
                    "scheduler",
                    "--host",
                    HOST,
                    "--port",
                    sched_port,
                    "--dashboard-address",
                    f"{HOST}:{common.free_port()}",
                ],
                work / "scheduler.log",
            )
        ]
        common.wait_port(sched_port, 60, stack.procs["scheduler"][0])
        stack.procs["workers"] = [
            common.start(
                [
                    bin_ / "dask",
                    "worker",
                    address,
                    "--nworkers",
                    "2",
                    "--nthreads",
                    "1",
                    "--host",
                    HOST,
                    "--no-dashboard",
                ],
                work / "workers.log",
            )
        ]
        stack.procs["loop"] = [
            common.start(
                [bin_ / "headrace", "etl", "--config", config, "--scheduler", address],
                work / "loop.log",
            )
        ]
        stack.procs["panel"] = [
            common.start(
                [
                    bin_ / "headrace",
                    "serve",
                    "--num-procs",
                    num_procs,
                    "--scheduler",
                    address,
                    "--port",
                    panel_port,
                ],
                work / "panel.log",
            )
        ]
        common.wait_port(panel_port, 120, stack.procs["panel"][0])
        _wait_published(address, stack)
        _warm(stack, work)
    except BaseException:
        stack.stop()
        raise
    return stack


def _wait_published(address: str, stack: Stack, timeout: float = 60.0) -> None:
    """Until every stream has a few frames published (the loop is ticking)."""
    from distributed import Client

    from etl import contract

    deadline = time.monotonic() + timeout
    with Client(address, timeout=30) as client:
        while time.monotonic() < deadline:
            stack.check_alive()
            heads = contract.heads(client)
            if all(s in heads and heads[s].seq >= 5 for s in STREAMS):
                return
            time.sleep(0.5)
    raise TimeoutError(f"the loop published nothing for {timeout:.0f}s; see loop.log")
