"""Pages built per session opened, with 3 Panel processes: ``python -m benchmarks.builds [N]``.

Starts the headrace stack with ``--num-procs 3``, opens N raw Bokeh-protocol viewers one
after another (each until its first live row), then reads ``/metrics``: the sum over the
processes of ``headrace_session_builds_total`` (pages built) against
``headrace_session_opens_total`` (pages a viewer loaded). A page built for the GET of
one process while the websocket went to another shows as more builds than opens; each
process also builds one page per theme to answer GETs with (``--reuse-sessions``).
"""

from __future__ import annotations

import asyncio
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from . import data, stacks
from .viewer import open_viewer


def total(metrics: str, name: str) -> float:
    """The sum over processes of counter ``name`` in a Prometheus exposition."""
    return sum(float(v) for v in re.findall(rf"^{name}_total{{[^}}]*}} (\S+)$", metrics, re.M))


async def _opens(url: str, n: int) -> list[float]:
    firsts, viewers = [], []
    for _ in range(n):
        started = time.time()
        viewer = await open_viewer(url)
        first = await viewer.first_row(started)
        if first is None:
            raise RuntimeError("a viewer got no live row within 30 s")
        firsts.append(first)
        viewers.append(viewer)
        await asyncio.sleep(0.2)
    await asyncio.sleep(3)  # their ready events counted
    for viewer in viewers:
        viewer.close()
    return firsts


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    n = int(args[0]) if args else 30
    work = Path(tempfile.mkdtemp(prefix="headrace-builds-"))
    with data.feed(work / "ftp") as feed:
        stack = stacks.start_headrace(feed, 3, work)
        try:
            firsts = asyncio.run(_opens(stack.url, n))
            time.sleep(2)  # a telemetry period: the counters reach /metrics
            url = stack.url.rsplit("/", 1)[0] + "/metrics"
            metrics = urllib.request.urlopen(url, timeout=10).read().decode()
        finally:
            stack.stop()
    builds = total(metrics, "headrace_session_builds")
    opens = total(metrics, "headrace_session_opens")
    print(
        f"{n} opens with 3 Panel processes: {builds:.0f} pages built, {opens:.0f} loaded; "
        f"first live row median {np.median(firsts) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
