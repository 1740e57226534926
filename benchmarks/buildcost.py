"""What building one dashboard session costs, in this process: ``python -m benchmarks.buildcost``.

``python -m benchmarks.buildcost [--builds N] [--streams K] [--without NAME[,NAME]]``

Builds the dashboard page (``headrace.app.pages.dashboard``, with K streams that have
rows, so every live view is a copy of a rendered plot) in a new Bokeh document N times,
as ``panel serve`` does for a session, and prints the median and quartiles of a build's
wall time. No server, no cluster and no viewers: the figure is the page's own code,
Panel's render and Bokeh's bookkeeping, steadier than a served benchmark on a shared
machine. ``--without`` switches off the named internals of
:mod:`headrace.app.live.internals` (``quick_references``, ``lean_serialisation``, ...)
in every other build, so that with and without are measured side by side, in turn.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pandas as pd


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.buildcost")
    p.add_argument("--builds", type=int, default=30, help="builds measured (each way)")
    p.add_argument("--streams", type=int, default=4, help="streams on the page")
    p.add_argument("--without", default="", help="internals to switch off, comma-separated")
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
    for k in range(args.streams):
        frame = pd.DataFrame(
            {"time": start + pd.to_timedelta(rows * 25, unit="ms"), "value": np.sin(rows / 9)}
        )
        subscriber.ingest(f"stream-{k}", 1, frame)
    internals.install()

    def build() -> tuple[float, int]:
        doc = Document()
        began = time.perf_counter()
        with set_curdoc(doc):
            prepare(doc)
            page = dashboard.build(parts)
            with doc.models.freeze():  # as template.serve does
                page.server_doc(doc, title=dashboard.TITLE)
        took = time.perf_counter() - began
        models = len(doc.models)
        # The session closes: what Bokeh's document lifecycle handler does (the views and
        # the board let go), including going on past a callback that fails.
        from bokeh.application.handlers.document_lifecycle import _on_session_destroyed

        _on_session_destroyed(SimpleNamespace(_document=doc, id=f"bench-{id(doc)}"))
        doc.clear()
        return took, models

    without = [n for n in args.without.split(",") if n]
    ways = {"with": [], "without": []} if without else {"with": []}
    models = 0
    for _ in range(3):  # warm: the plots rendered, the first document validated
        build()
    for i in range(args.builds * len(ways)):
        way = list(ways)[i % len(ways)]
        gc.collect()
        if way == "without":
            with _without(without):
                took, models = build()
        else:
            took, models = build()
        ways[way].append(took * 1000)
    print(f"dashboard, {args.streams} streams, {models} models, {args.builds} builds each:")
    for way, times in ways.items():
        q1, median, q3 = statistics.quantiles(times, n=4)
        label = "as served" if way == "with" else f"without {', '.join(without)}"
        print(f"  {label}: median {median:.1f} ms (quartiles {q1:.1f}-{q3:.1f})")


if __name__ == "__main__":
    main()
