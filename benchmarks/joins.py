"""Viewers who join: the first live row on an idle server, and a crowd joining while others watch.

Both run on the headrace stack with the load generator's ``--join``
(:func:`benchmarks.loadgen.join`): ``idle`` has one watcher and joiners one second
apart; ``storm`` has ``watchers`` watching while ``joiners`` open the page within
``joiners`` x 20 ms, once the server's sessions built ahead stopped growing (a crowd
comes to a server that had a quiet while, not to one still opening its watchers'
pages; how many were ready is reported). Reported: the joiners' time from ``GET`` to
their first live row, and the watchers' latency over the whole window (row's period
close -> arrival).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import log
from .data import Feed
from .load import run_phase
from .stacks import Stack


def _steps(marks: dict[str, list]) -> dict[str, list[float | None]]:
    """Median and p95 seconds from a joiner's GET to each step of its open."""
    steps = {}
    for name, times in marks.items():
        done = [t for t in times if t is not None]
        steps[name] = (
            [float(np.median(done)), float(np.percentile(done, 95))] if done else [None, None]
        )
    return steps


def _first_rows(phase: dict) -> dict:
    times = [t for t in phase.pop("join_first_row_s", []) if t is not None]
    joined = len(times)
    return dict(
        steps=_steps(phase.pop("join_phases", {})),
        joined=joined,
        join_failed=phase.pop("join_failed", None),
        first_row_p50=float(np.median(times)) if times else None,
        first_row_p95=float(np.percentile(times, 95)) if times else None,
        first_row_max=max(times) if times else None,
    )


def run(stack: Stack, feed: Feed, work: Path, quick: bool = False) -> dict:
    idle_n = 5 if quick else 10
    idle = run_phase(stack, feed, 1, work, 2.0, idle_n + 3.0, 2.0, join=idle_n, join_spacing=1.0)
    idle.update(_first_rows(idle))
    log(f"joins: idle first live row p50/p95 {idle['first_row_p50']}/{idle['first_row_p95']} s")
    watchers, joiners = (20, 20) if quick else (100, 100)
    storm = run_phase(
        stack,
        feed,
        watchers,
        work,
        3.0,
        15.0 if quick else 60.0,
        3.0,
        join=joiners,
        join_spacing=0.02,
        prepared=True,
    )
    storm.update(_first_rows(storm))
    log(
        f"joins: {joiners} joining within {joiners * 0.02:.1f} s while {watchers} watch: "
        f"watchers p95 {storm['latency_p95']}, joiners' first row p95 {storm['first_row_p95']}"
    )
    return dict(idle=idle, storm=storm, watchers=watchers, joiners=joiners)
