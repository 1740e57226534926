"""What one session open costs a Panel process: ``python -m benchmarks.sessioncost [N]``.

Starts the headrace stack with one Panel process, opens N raw Bokeh-protocol viewers
one after another (each until its first live row, then 0.3 s more) and prints the
median time to the first live row and the Panel process's CPU per open (psutil; it
includes 0.3 s of feeding the viewers already open), then the steady CPU with N open.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from . import data, stacks
from .viewer import Viewer, open_viewer


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


async def _opens(url: str, pid: int, n: int) -> dict:
    proc = psutil.Process(pid)
    firsts, cpus, viewers = [], [], []
    for _ in range(n):
        c0, t0 = _cpu(proc), time.time()
        viewer: Viewer = await open_viewer(url)
        first = await viewer.first_row(t0)
        if first is None:
            raise RuntimeError("a viewer got no live row within 30 s")
        firsts.append(first)
        await asyncio.sleep(0.3)
        cpus.append(_cpu(proc) - c0)
        viewers.append(viewer)
    c0 = _cpu(proc)
    await asyncio.sleep(5)
    steady = (_cpu(proc) - c0) / 5
    for viewer in viewers:
        viewer.close()
    return dict(
        first_row_ms=float(np.median(firsts) * 1000),
        cpu_per_open_ms=float(np.median(cpus) * 1000),
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
        f"open {result['cpu_per_open_ms']:.0f} ms; steady with {n} open "
        f"{result['steady_cpu_ms_per_s']:.0f} ms/s"
    )


if __name__ == "__main__":
    main()
