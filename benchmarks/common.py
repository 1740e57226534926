"""Small helpers shared by the benchmarks: ports, child processes, process statistics."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"


def log(*parts: object) -> None:
    """Progress goes to stderr so that stdout carries only the final tables."""
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def percentiles(values: Sequence[float] | np.ndarray, qs=(50, 95, 99)) -> list[float | None]:
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        return [None for _ in qs]
    return [float(v) for v in np.percentile(a, qs)]


def start(
    args: Sequence[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start a child in its own process group (so the whole tree can be stopped at once)."""
    out = open(log_path, "ab")  # noqa: SIM115 - kept by the child; closed with the process
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    log("start", " ".join(str(a) for a in args))
    proc = subprocess.Popen(
        [str(a) for a in args],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=full_env,
        cwd=ROOT,
        start_new_session=True,
    )
    out.close()
    return proc


def dask_scheduler(
    port: int, log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """``dask scheduler`` on ``port`` (its dashboard on a free one), listening when returned."""
    proc = start(
        [
            VENV_BIN / "dask",
            "scheduler",
            "--host",
            HOST,
            "--port",
            port,
            "--dashboard-address",
            f"{HOST}:{free_port()}",
        ],
        log_path,
        env,
    )
    try:
        wait_port(port, 60, proc)
    except BaseException:
        stop(proc)
        raise
    return proc


def dask_workers(
    address: str, n: int, log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """``dask worker`` with ``n`` single-thread worker processes, no dashboards."""
    return start(
        [
            VENV_BIN / "dask",
            "worker",
            address,
            "--nworkers",
            n,
            "--nthreads",
            1,
            "--host",
            HOST,
            "--no-dashboard",
        ],
        log_path,
        env,
    )


def stop(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM the child's process group, then SIGKILL what is left of it."""
    if proc is None:
        return
    pgid = proc.pid  # start_new_session: the child leads its own group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)
    # Children (forked Panel processes, nannies' workers) may outlive their parent.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def wait_port(port: int, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listening on {HOST}:{port} after {timeout:.0f}s")


def tree(proc: subprocess.Popen | psutil.Process | int) -> list[psutil.Process]:
    """The process and all its descendants that are alive now."""
    pid = proc if isinstance(proc, int) else proc.pid
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@dataclass
class _Track:
    role: str
    proc: psutil.Process
    cpu0: float
    cpu1: float
    name: str
    rss_peak: int = 0


@dataclass
class ProcStats:
    """CPU seconds per second and peak RSS per process, sampled every ``every`` seconds.

    Roles map a name (``panel``, ``loop``...) to root processes; descendants are found
    at every sample, so forked Panel children and Dask workers count under their role.
    ``solo`` roles count their processes without descendants (this process: the FTP
    server and log writer threads, whose children are the servers under test).
    """

    roots: dict[str, list[int]]
    solo: dict[str, list[int]] = field(default_factory=dict)
    every: float = 0.5
    _tracks: dict[int, _Track] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = 0.0
    _t1: float = 0.0
    _busy0: float = 0.0
    _busy1: float = 0.0

    def __enter__(self) -> ProcStats:
        self._t0 = time.monotonic()
        self._busy0 = _busy()
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True, name="procstats")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        self._t1 = time.monotonic()
        self._busy1 = _busy()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def _sample(self) -> None:
        found = [(role, p) for role, pids in self.roots.items() for r in pids for p in tree(r)]
        for role, pids in self.solo.items():
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    found.append((role, psutil.Process(pid)))
        for role, p in found:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    cpu = t.user + t.system
                    rss = p.memory_info().rss
            except psutil.Error:
                continue
            track = self._tracks.get(p.pid)
            if track is None:
                track = self._tracks[p.pid] = _Track(role, p, cpu, cpu, _name(p))
            track.cpu1 = cpu
            track.rss_peak = max(track.rss_peak, rss)

    def machine(self) -> dict:
        """CPU seconds per second of the whole machine, and of processes not tracked here
        (other users' work on a shared machine: it competes with the servers under test)."""
        span = max(self._t1 - self._t0, 1e-9)
        busy = (self._busy1 - self._busy0) / span
        ours = sum(t.cpu1 - t.cpu0 for t in self._tracks.values()) / span
        return dict(
            busy_per_s=round(busy, 3),
            untracked_per_s=round(max(busy - ours, 0.0), 3),
            cores=psutil.cpu_count(),
        )

    def result(self) -> list[dict]:
        """One dict per process: role, pid, name, cpu_per_s, rss_peak_mb."""
        span = max(self._t1 - self._t0, 1e-9)
        out = []
        for pid, t in sorted(self._tracks.items(), key=lambda kv: (kv[1].role, kv[0])):
            out.append(
                dict(
                    role=t.role,
                    pid=pid,
                    name=t.name,
                    cpu_per_s=round((t.cpu1 - t.cpu0) / span, 3),
                    rss_peak_mb=round(t.rss_peak / 2**20, 1),
                )
            )
        return out


def _busy() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _name(p: psutil.Process) -> str:
    try:
        return " ".join(a.rsplit("/", 1)[-1] for a in p.cmdline()[1:5])[:80]
    except psutil.Error:
        return "?"


def by_role(procs: list[dict]) -> dict[str, dict]:
    """Per role: total CPU s/s, the largest per-process figure, max peak RSS, count."""
    roles: dict[str, dict] = {}
    for p in procs:
        r = roles.setdefault(p["role"], dict(n=0, cpu_per_s=0.0, cpu_max=0.0, rss_peak_mb=0.0))
        r["n"] += 1
        r["cpu_per_s"] = round(r["cpu_per_s"] + p["cpu_per_s"], 3)
        r["cpu_max"] = max(r["cpu_max"], p["cpu_per_s"])
        r["rss_peak_mb"] = max(r["rss_peak_mb"], p["rss_peak_mb"])
    return roles


@contextlib.contextmanager
def stopping(*procs: subprocess.Popen | None) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            stop(p)


def write_doc(
    path: Path,
    title: str,
    module: str,
    tables: Sequence[tuple[str, object]],
    render: Callable[[object], str],
    argv: Sequence[str] | None,
) -> None:
    """A results page: the command, when, on what machine, then each labelled table."""
    given = list(sys.argv[1:] if argv is None else argv)
    lines = [
        f"# {title}: results",
        "",
        "Generated by the benchmark; do not edit. Command: "
        f"`{shlex.join(['python', '-m', f'benchmarks.{module}', *given])}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB.",
    ]
    for label, results in tables:
        lines += ["", f"## {label}", ""] if label else [""]
        lines.append(render(results))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    log(f"report: {path}")
