"""Live plots declared in HoloViews, rendered to Bokeh once, then fed by ``cds.stream``.

HoloViews' own streaming (``Buffer`` + ``DynamicMap``) re-renders on every update and
costs ~10 ms of server CPU per plot per update; here HoloViews only declares the plot
(element, options, axes, hover) and :func:`live_plot` returns the rendered figure with
its glyph's ``ColumnDataSource``, which the fan-out streams new rows into at the cost of
a raw Bokeh ``cds.stream``. :func:`measure_update_cost` puts numbers on that.

The x-range is a ``DataRange1d(follow="end")``: it shows the newest ``follow`` seconds
while nobody touches it. BokehJS stops auto-ranging a DataRange1d once the viewer pans
or zooms (``have_updated_interactively``) and resumes on reset, so zooming into a spike
holds still, and the reset tool or a double-click returns to following.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from bokeh.document import Document
    from bokeh.models import ColumnDataSource
    from bokeh.plotting import figure as Figure

    from app.subscriber import Columns

FOLLOW_ENV = "HEADRACE_FOLLOW"
DEFAULT_FOLLOW = 60.0  # seconds of the newest data shown while following
TOOLS = ["xpan", "xwheel_zoom", "box_zoom", "reset", "save", "hover"]


def follow_seconds() -> float:
    try:
        value = float(os.environ.get(FOLLOW_ENV, DEFAULT_FOLLOW))
    except ValueError:
        return DEFAULT_FOLLOW
    return value if value > 0 else DEFAULT_FOLLOW


@dataclass
class LivePlot:
    """A rendered plot and the source its rows are streamed into."""

    stream: str
    figure: Figure
    source: ColumnDataSource


def curve(columns: Columns, stream: str, height: int = 260) -> Any:
    """The HoloViews declaration: ``value`` over ``time``, other columns in the hover."""
    import holoviews as hv
    import holoviews.plotting.bokeh  # registers the bokeh backend's options

    frame = pd.DataFrame(columns)
    extra = [c for c in frame.columns if c not in ("time", "value")]
    return hv.Curve(frame, "time", ["value", *extra], label=stream).opts(
        title=stream,
        responsive=True,
        height=height,
        line_width=1.2,
        color="#1f77b4",
        default_tools=[],
        tools=TOOLS,
        active_tools=["xpan", "xwheel_zoom"],
        xlabel="",
        ylabel="value",
        show_grid=True,
        toolbar="right",
    )


def render(element: Any) -> tuple[Figure, ColumnDataSource]:
    """Render a single-glyph HoloViews element to Bokeh; return the figure and glyph source."""
    import holoviews as hv
    from bokeh.models import GlyphRenderer

    figure = hv.render(element, backend="bokeh")
    renderers = figure.select(type=GlyphRenderer)
    if len(renderers) != 1:
        raise ValueError(f"expected one glyph, {element} rendered {len(renderers)}")
    return figure, renderers[0].data_source


def follow_newest(figure: Figure, seconds: float) -> None:
    """Let the x-range follow the newest ``seconds`` until the viewer pans or zooms."""
    from bokeh.events import DoubleTap
    from bokeh.models import CustomJS, DataRange1d

    figure.x_range = DataRange1d(follow="end", follow_interval=seconds * 1000.0, range_padding=0)
    figure.y_range = DataRange1d(range_padding=0.08)
    # A double-click does what the reset tool does: back to following the newest data.
    figure.js_on_event(DoubleTap, CustomJS(args={"plot": figure}, code="plot.reset.emit()"))


def live_plot(stream: str, columns: Columns, follow: float | None = None) -> LivePlot:
    """A plot of ``stream`` whose source has ``columns``' schema (fill it via the fan-out)."""
    figure, source = render(curve(columns, stream))
    figure.toolbar.logo = None
    follow_newest(figure, follow or follow_seconds())
    return LivePlot(stream, figure, source)


# -- what one update costs ---------------------------------------------------------------------


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
    """Server CPU per update: this module's HoloViews plot vs a raw ``figure.line``.

    Both get the same batches of ``rows`` new rows (25 ms apart, one update = one
    ``cds.stream`` plus building the PATCH-DOC message a server would send), alternating
    so both see the same machine state. Times are this thread's CPU time. Returns the
    median in milliseconds per update over ``repeats`` runs, the per-run medians, bytes
    sent per update, and with ``buffer=True`` the same for a HoloViews ``Buffer`` +
    ``DynamicMap`` plot (measured apart: it is 50x dearer and would skew the others).
    """
    from bokeh.document import Document
    from bokeh.plotting import figure

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
