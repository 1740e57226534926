"""What one session open costs a Panel process: ``python -m benchmarks.sessioncost [N]``.

Starts the headrace stack with one Panel process, opens N raw Bokeh-protocol viewers
one after another (each until its first live row, then 0.3 s more) and prints the
median time to the first live row and the Panel process's CPU per open (psutil; it
includes feeding the viewers already open meanwhile, and the view's ticks), and the
same less the process's CPU rate of the :data:`QUIET` seconds before the open times
the open's duration (the open's own), the time its loop spent building the
session (``headrace_session_build_seconds_total``), the time Python's garbage collector
held the process per open (``headrace_gc_seconds_total``: what freezing built sessions,
``HEADRACE_FREEZE``, saves), then the steady CPU with N open.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil

from . import data, stacks
from .builds import total
from .viewer import Viewer, open_viewer

QUIET = 0.5  # seconds before each open over which the process's CPU rate is taken


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def _seconds(url: str) -> tuple[float, float]:
    """The Panel processes' seconds building sessions and in the garbage collector, as
    their /metrics say."""
    metrics = urllib.request.urlopen(url.rsplit("/", 1)[0] + "/metrics", timeout=10).read()
    text = metrics.decode()
    return total(text, "headrace_session_build_seconds"), total(text, "headrace_gc_seconds")


async def _opens(url: str, pid: int, n: int) -> dict:
    proc = psutil.Process(pid)
    firsts, cpus, margins, viewers = [], [], [], []
    await asyncio.sleep(1.5)  # the figures of the start reach /metrics (once a second)
    before = await asyncio.to_thread(_seconds, url)
    for _ in range(n):
        # The process's CPU rate just before (feeding the viewers open, the view's ticks):
        # what the open costs beyond it is its own.
        q0, s0 = _cpu(proc), time.perf_counter()
        await asyncio.sleep(QUIET)
        rate = (_cpu(proc) - q0) / (time.perf_counter() - s0)
        c0, t0, s0 = _cpu(proc), time.time(), time.perf_counter()
        viewer: Viewer = await open_viewer(url)
        first = await viewer.first_row(t0)
        if first is None:
            raise RuntimeError("a viewer got no live row within 30 s")
        firsts.append(first)
        await asyncio.sleep(0.3)
        cpus.append(_cpu(proc) - c0)
        margins.append(cpus[-1] - rate * (time.perf_counter() - s0))
        viewers.append(viewer)
    await asyncio.sleep(1.5)
    build, gc = (b - a for a, b in zip(before, await asyncio.to_thread(_seconds, url), strict=True))
    c0 = _cpu(proc)
    await asyncio.sleep(5)
    steady = (_cpu(proc) - c0) / 5
    for viewer in viewers:
        viewer.close()
    return dict(
        first_row_ms=float(np.median(firsts) * 1000),
        cpu_per_open_ms=float(np.median(cpus) * 1000),
        own_cpu_per_open_ms=float(np.median(margins) * 1000),
        build_per_open_ms=build / n * 1000,
        gc_per_open_ms=gc / n * 1000,
        steady_cpu_ms_per_s=steady * 1000,
    )


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    n = int(args[0]) if args else 20
    work = Path(tempfile.mkdtemp(prefix="headrace-sessioncost-"))
    with data.feed(work / "ftp") as feed:
        stack = stacks.start_headrace(feed, 1, work)
        try:
            result = asyncio.run(_opens(stack.url, stack.panel_pids()[0], n))
        finally:
            stack.stop()
    print(
        f"{n} opens: first live row median {result['first_row_ms']:.0f} ms; Panel CPU per "
        f"open {result['cpu_per_open_ms']:.0f} ms ({result['own_cpu_per_open_ms']:.0f} ms beyond "
        f"its rate of the {QUIET:g} s before: the open's own), of it building the session "
        f"{result['build_per_open_ms']:.0f} ms and in the garbage collector "
        f"{result['gc_per_open_ms']:.0f} ms; steady with {n} open "
        f"{result['steady_cpu_ms_per_s']:.0f} ms/s"
    )


if __name__ == "__main__":
    main()
