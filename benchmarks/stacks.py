"""The systems under test: start a stack of server processes, warm it up, stop it.

A *stack* is the set of server processes of one system, grouped by role for the process
statistics: headrace (Dask scheduler and workers, the loop, ``headrace serve``) or the
per-session peer (``panel serve benchmarks/peer_app.py``). Both are warmed up with a few
throw-away viewers before they are measured.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from . import common
from .common import HOST
from .data import STREAMS, Feed

NO_METRICS = ("--metrics-port", "0")  # benchmark stacks run side by side


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


def loadgen_argv(
    url: str,
    viewers: int,
    settle: float,
    duration: float,
    grace: float,
    out: Path,
    extra: Sequence[str] = (),
) -> list[str]:
    """The command line of the load generator process (:mod:`benchmarks.loadgen`)."""
    return [
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        "--url",
        url,
        "--viewers",
        str(viewers),
        "--settle",
        str(settle),
        "--duration",
        str(duration),
        "--grace",
        str(grace),
        "--out",
        str(out),
        *extra,
    ]


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
        loadgen_argv(stack.url, 3, 1, 1, 0, out),
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
        stack.procs["scheduler"] = [common.dask_scheduler(sched_port, work / "scheduler.log")]
        stack.procs["workers"] = [common.dask_workers(address, 2, work / "workers.log")]
        stack.procs["loop"] = [
            common.start(
                [bin_ / "headrace", "etl", "--config", config, "--scheduler", address, *NO_METRICS],
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

    from headrace.etl import contract

    deadline = time.monotonic() + timeout
    with Client(address, timeout=30) as client:
        while time.monotonic() < deadline:
            stack.check_alive()
            heads = contract.heads(client)
            if all(s in heads and heads[s].seq >= 5 for s in STREAMS):
                return
            time.sleep(0.5)
    raise TimeoutError(f"the loop published nothing for {timeout:.0f}s; see loop.log")
