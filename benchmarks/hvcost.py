"""HoloViews cost: server CPU per update per session, three ways of streaming 5 rows.

(a) headrace's plot (``headrace.app.views.plots.live_plot``: declared in HoloViews, rendered
once, then ``cds.stream`` into the rendered source), (b) a raw Bokeh ``figure().line`` +
``cds.stream``, (c) HoloViews' own streaming, ``hv.streams.Buffer`` + ``DynamicMap``.
Each sits in a Bokeh Document whose change listener builds the PATCH-DOC message as a
server session does, so the serialisation is in the cost. :func:`measure_update_cost`
does the measuring (thread CPU time, updates alternating between the cheap two, median
per run, median of runs) on the app's own plot, so the benchmark times what the app serves.
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .common import log

if TYPE_CHECKING:
    from bokeh.document import Document
    from bokeh.models import ColumnDataSource

    from headrace.app.live.columns import Columns


def run(updates: int = 300, rows: int = 5, repeats: int = 5) -> dict:
    try:
        from headrace.app.views.plots import live_plot  # noqa: F401 - the plot measured
    except ImportError as exc:
        return dict(error=f"headrace.app.views.plots.live_plot unavailable: {exc}")
    log(f"hv: {repeats} x {updates} updates of {rows} rows")
    r = measure_update_cost(updates=updates, rows=rows, repeats=repeats, buffer=True)
    out = dict(
        updates=updates,
        rows=rows,
        repeats=repeats,
        headrace_ms=r["holoviews"],
        raw_ms=r["raw"],
        buffer_ms=r.get("buffer"),
        runs=r.get("runs"),
        bytes_per_update=r.get("bytes"),
    )
    out["headrace_vs_raw"] = out["headrace_ms"] / out["raw_ms"]
    if out["buffer_ms"] is not None:
        out["buffer_vs_raw"] = out["buffer_ms"] / out["raw_ms"]
        out["buffer_vs_headrace"] = out["buffer_ms"] / out["headrace_ms"]
    log(
        f"hv: headrace {out['headrace_ms']:.3f} ms, raw {out['raw_ms']:.3f} ms, "
        f"Buffer+DynamicMap {out['buffer_ms']} ms per update"
    )
    return out


def _rows(start_ns: int, n: int, step_ns: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    times = (start_ns + step_ns * np.arange(n, dtype=np.int64)).astype("datetime64[ns]")
    return {"time": times, "value": rng.standard_normal(n), "count": np.ones(n)}


def _serving(doc: Document) -> list[int]:
    """Make ``doc`` serialise every change as a Bokeh server session does; return byte counts."""
    from bokeh.protocol import Protocol

    protocol, sent = Protocol(), []

    def on_change(event: Any) -> None:
        msg = protocol.create("PATCH-DOC", [event])
        size = len(msg.header_json) + len(msg.metadata_json) + len(msg.content_json)
        sent.append(size + sum(len(b.to_bytes()) for b in msg.buffers))

    doc.on_change(on_change)
    return sent


def measure_update_cost(
    updates: int = 200,
    rows: int = 8,
    initial: int = 2400,
    repeats: int = 5,
    rollover: int = 24_000,
    buffer: bool = False,
) -> dict[str, Any]:
    """Server CPU per update: the app's HoloViews plot vs a raw ``figure.line``.

    Both get the same batches of ``rows`` new rows (25 ms apart, one update = one
    ``cds.stream`` plus building the PATCH-DOC message a server would send), alternating
    so both see the same machine state. Times are this thread's CPU time. Returns the
    median in milliseconds per update over ``repeats`` runs, the per-run medians, bytes
    sent per update, and with ``buffer=True`` the same for a HoloViews ``Buffer`` +
    ``DynamicMap`` plot (measured apart: it is 50x dearer and would skew the others).
    """
    from bokeh.document import Document
    from bokeh.plotting import figure

    from headrace.app.views.plots import live_plot

    rng = np.random.default_rng(0)
    step = 25_000_000
    runs: dict[str, list[float]] = {"holoviews": [], "raw": []}
    if buffer:
        runs["buffer"] = []
    sizes: dict[str, int] = {}
    for _ in range(repeats):
        start = time.time_ns() - (initial + updates * rows) * step
        seed = _rows(start, initial, step, rng)
        plots: dict[str, tuple[Any, list[int]]] = {}

        live = live_plot("bench", seed)
        live.source.data = {k: v.copy() for k, v in seed.items()}
        doc = Document()
        doc.add_root(live.figure)
        plots["holoviews"] = (lambda data, s=live.source: s.stream(data, rollover), _serving(doc))

        raw_source = _raw_source(seed)
        raw = figure(x_axis_type="datetime", sizing_mode="stretch_width", height=260)
        raw.line("time", "value", source=raw_source)
        doc = Document()
        doc.add_root(raw)
        plots["raw"] = (lambda data, s=raw_source: s.stream(data, rollover), _serving(doc))

        if buffer:
            plots["buffer"] = _buffer_plot(seed, rollover)

        costs: dict[str, list[float]] = {name: [] for name in plots}
        at = start + initial * step
        batches = []
        for _ in range(updates):
            batches.append(_rows(at, rows, step, rng))
            at += rows * step
        # The two cheap plots alternate (and swap who goes first) so garbage collection and
        # caches fall on both alike; the expensive Buffer plot runs apart for the same reason.
        order = ["holoviews", "raw"]
        for i, batch in enumerate(batches):
            for name in order if i % 2 else order[::-1]:
                costs[name].append(_timed(plots[name][0], batch))
        if buffer:
            costs["buffer"] = [_timed(plots["buffer"][0], batch) for batch in batches]
        for name, values in costs.items():
            runs[name].append(statistics.median(values))
            sizes[name] = sum(plots[name][1]) // updates
    result: dict[str, Any] = {name: statistics.median(v) for name, v in runs.items()}
    result.update(
        runs={k: [round(x, 4) for x in v] for k, v in runs.items()},
        bytes=sizes,
        updates=updates,
        rows=rows,
        initial=initial,
        unit="ms CPU per update",
    )
    return result


def _timed(update: Any, batch: Columns) -> float:
    data = {k: v.copy() for k, v in batch.items()}
    t0 = time.thread_time_ns()
    update(data)
    return (time.thread_time_ns() - t0) / 1e6


def _raw_source(seed: Columns) -> ColumnDataSource:
    from bokeh.models import ColumnDataSource

    return ColumnDataSource({k: v.copy() for k, v in seed.items()})


def _buffer_plot(seed: Columns, rollover: int) -> tuple[Any, list[int]]:
    """HoloViews' own streaming, for comparison: Buffer + DynamicMap, re-rendered per update."""
    import holoviews as hv
    from bokeh.document import Document
    from holoviews.streams import Buffer

    source = Buffer(pd.DataFrame(seed), length=rollover, index=False)
    dmap = hv.DynamicMap(lambda data: hv.Curve(data, "time", ["value", "count"]), streams=[source])
    plot = hv.renderer("bokeh").get_plot(dmap.opts(responsive=True, height=260))
    doc = Document()
    doc.add_root(plot.state)
    plot.document = doc
    sent = _serving(doc)
    return (lambda data: source.send(pd.DataFrame(data))), sent
