"""What making one dashboard session costs, in this process: ``python -m benchmarks.buildcost``.

``python -m benchmarks.buildcost [--builds N] [--streams K] [--without NAME[,NAME]]
[--before DIR --rounds R] [--doc FILE]``

Builds the dashboard page (``headrace.app.pages.dashboard``, with K streams that have
rows, so every live view is a copy of a rendered plot) in a new Bokeh document N times,
as ``panel serve`` does for a process's first session of a page, and copies it N
times, as every later session is made (:mod:`headrace.app.live.copied`), in turn, and
prints the median and quartiles of each one's wall time. No server, no cluster and no
viewers: the figure is the page's own code, Panel's render and Bokeh's bookkeeping,
steadier than a served benchmark on a shared machine. ``--without`` switches off the
named internals of :mod:`headrace.app.live.internals` (``quick_references``,
``lean_serialisation``, ...) in a third way, a build, so that with and without are
measured side by side, in turn.
``--before DIR`` measures another checkout of headrace (the code before a change) in a
process of its own, in turn with this one, ``--rounds`` times each, and reports the
medians of both side by side; ``--doc`` writes the table as a results page.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.buildcost")
    p.add_argument("--builds", type=int, default=30, help="builds measured (each way)")
    p.add_argument("--streams", type=int, default=4, help="streams on the page")
    p.add_argument("--without", default="", help="internals to switch off, comma-separated")
    p.add_argument("--before", default=None, metavar="DIR", help="another checkout, in turn")
    p.add_argument("--rounds", type=int, default=3, help="runs of each side with --before")
    p.add_argument("--doc", default=None, help="markdown file for the table (overwritten)")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


@contextmanager
def _without(names: list[str]) -> Iterator[None]:
    """The named internals put back to the libraries' own functions meanwhile."""
    import bokeh.model.util as util
    from bokeh.core.has_props import HasProps
    from bokeh.core.serialization import Serializer

    places = {
        "quick_references": (util, "visit_immediate_value_references"),
        "lean_serialisation": (HasProps, "query_properties_with_values"),
        "lazy_references": (Serializer, "__init__"),
    }
    unknown = [n for n in names if n not in places]
    if unknown:
        raise SystemExit(f"--without: unknown {', '.join(unknown)} (known: {', '.join(places)})")
    patched = [(owner, attr, getattr(owner, attr)) for owner, attr in map(places.get, names)]
    for owner, attr, ours in patched:
        setattr(owner, attr, ours.original)
    try:
        yield
    finally:
        for owner, attr, ours in patched:
            setattr(owner, attr, ours)


def main(argv: list[str] | None = None) -> None:
    args = _args(sys.argv[1:] if argv is None else argv)
    if args.before:
        return _in_turn(args, argv)
    ways = measure(args.builds, args.streams, [n for n in args.without.split(",") if n])
    if args.json:
        print(json.dumps(ways))
        return
    print(f"dashboard, {args.streams} streams, {ways['models']} models, {args.builds} opens each:")
    for way, times in ways["ms"].items():
        q1, median, q3 = statistics.quantiles(times, n=4)
        print(f"  {way}: median {median:.1f} ms (quartiles {q1:.1f}-{q3:.1f})")


def _in_turn(args: argparse.Namespace, argv: list[str] | None) -> None:
    """This checkout and ``--before``'s, each in a process of its own, in turn."""
    from . import common

    sides = {
        f"this checkout ({_commit(str(common.ROOT))})": str(common.ROOT),
        f"before ({_commit(args.before)})": args.before,
    }
    medians: dict[tuple[str, str], list[float]] = {}  # (side, way) -> each run's median
    models: dict[str, int] = {}
    for round_ in range(args.rounds):
        for side, root in sides.items():
            # This file run as a script, so that headrace is the side's (PYTHONPATH), even
            # for a checkout older than this benchmark.
            command = [sys.executable, str(Path(__file__).resolve()), "--json"]
            command += ["--builds", str(args.builds), "--streams", str(args.streams)]
            env = {**os.environ, "PYTHONPATH": str(Path(root).resolve())}
            done = subprocess.run(
                command, cwd=root, env=env, capture_output=True, text=True, check=True
            )
            ways = json.loads(done.stdout.strip().splitlines()[-1])
            for way, times in ways["ms"].items():
                medians.setdefault((side, way), []).append(statistics.median(times))
                common.log(
                    f"buildcost: round {round_ + 1}, {side}, {way}: {medians[side, way][-1]:.1f} ms"
                )
            models[side] = ways["models"]
    rows = [
        f"| {side} | {way} | {models[side]} | {statistics.median(m):.1f} | "
        f"{', '.join(f'{x:.1f}' for x in m)} |"
        for (side, way), m in medians.items()
    ]
    table = "\n".join(
        [
            f"A dashboard session's page, {args.streams} streams with rows, in process: built "
            "(the page's code, Panel's render) as a process's first open of it, and copied "
            "(headrace.app.live.copied) as every later open; medians of "
            f"{args.builds} opens a run, {args.rounds} runs of each side in turn.",
            "",
            "| code | session | models | ms (median of runs) | each run's median |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    if args.doc:
        common.write_doc(Path(args.doc), "Session builds", "buildcost", [("", table)], str, argv)


def _commit(root: str) -> str:
    """The checkout's commit, or its path when it is not a git checkout."""
    done = subprocess.run(
        ["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() if done.returncode == 0 else root


def measure(builds: int, streams: int, without: list[str]) -> dict:
    """``builds`` builds of the dashboard (and as many without the internals named), in
    turn: their times in ms, by way, and the page's model count."""
    from bokeh.document import Document
    from panel.io.state import set_curdoc

    from headrace.app import registry
    from headrace.app.live import internals
    from headrace.app.live.subscriber import Subscriber
    from headrace.app.pages import dashboard
    from headrace.app.pages.template import prepare

    subscriber = Subscriber("tcp://127.0.0.1:1", window=600)  # fed here, never connected
    parts = registry.reset(subscriber)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    rows = np.arange(400)
    for k in range(streams):
        frame = pd.DataFrame(
            {"time": start + pd.to_timedelta(rows * 25, unit="ms"), "value": np.sin(rows / 9)}
        )
        subscriber.ingest(f"stream-{k}", 1, frame)
    internals.install()

    copier = getattr(parts, "copier", None)  # None: a checkout from before copies
    if copier is not None:
        copier.max_age = float("inf")  # every copy of one page: what is measured is a copy

    def opened(way: str) -> tuple[float, int]:
        doc = Document()
        began = time.perf_counter()
        with set_curdoc(doc):
            if copier is None:
                prepare(doc)
                page = dashboard.build(parts)
                with doc.models.freeze():  # as template.serve does
                    page.server_doc(doc, title=dashboard.TITLE)
            elif way == "copied":
                copier.open(dashboard.Page(parts))
            else:
                dashboard.Page(parts).build()
        took = time.perf_counter() - began
        models = len(doc.models)
        # The session closes: what Bokeh's document lifecycle handler does (the views and
        # the board let go), including going on past a callback that fails.
        from bokeh.application.handlers.document_lifecycle import _on_session_destroyed

        _on_session_destroyed(SimpleNamespace(_document=doc, id=f"bench-{id(doc)}"))
        doc.clear()
        return took, models

    label = f"built, without {', '.join(without)}"
    ways: dict[str, list[float]] = {"built": []}
    ways |= {"copied": []} if copier is not None else {}
    ways |= {label: []} if without else {}
    models = 0
    for _ in range(3):  # warm: the plots rendered, the first document validated, a snapshot
        opened("copied")
    for i in range(builds * len(ways)):
        way = list(ways)[i % len(ways)]
        gc.collect()
        if way.startswith("built, without"):
            with _without(without):
                took, models = opened(way)
        else:
            took, models = opened(way)
        ways[way].append(took * 1000)
    return {"ms": ways, "models": models}


if __name__ == "__main__":
    main()
