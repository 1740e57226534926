"""Live plots declared in HoloViews, rendered to Bokeh once, then fed by ``cds.stream``.

HoloViews' own streaming (``Buffer`` + ``DynamicMap``) re-renders on every update and
costs ~10 ms of server CPU per plot per update; here HoloViews only declares the plot
(element, options, axes, hover) and :func:`live_plot` returns the rendered figure with
its glyph's ``ColumnDataSource``, which the fan-out streams new rows into at the cost of
a raw Bokeh ``cds.stream`` (``benchmarks/hvcost.py`` puts numbers on that).

The x-range is a ``DataRange1d(follow="end")``: it shows the newest ``follow`` seconds
while nobody touches it. BokehJS stops auto-ranging a DataRange1d once the viewer pans
or zooms (``have_updated_interactively``) and resumes on reset, so zooming into a spike
holds still, and the reset tool or a double-click returns to following.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from bokeh.document import Document
from bokeh.io.doc import patch_curdoc
from panel.io.state import set_curdoc

from headrace.app.live.columns import empty
from headrace.app.live.internals import Copies
from headrace.app.settings import follow_seconds

if TYPE_CHECKING:
    from bokeh.models import ColumnDataSource, DataRange1d
    from bokeh.plotting import figure as Figure

    from headrace.app.live.columns import Columns

TOOLS = ["xpan", "xwheel_zoom", "box_zoom", "reset", "save", "hover"]
COLOR = "#1f77b4"


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
        color=COLOR,
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


def live_range(seconds: float) -> DataRange1d:
    """An x-range that follows the newest ``seconds`` until the viewer pans or zooms."""
    from bokeh.models import DataRange1d

    return DataRange1d(follow="end", follow_interval=seconds * 1000.0, range_padding=0)


def follow_newest(figure: Figure, seconds: float) -> None:
    """Let the x-range follow the newest ``seconds`` until the viewer pans or zooms."""
    from bokeh.events import DoubleTap
    from bokeh.models import CustomJS, DataRange1d

    figure.x_range = live_range(seconds)
    figure.y_range = DataRange1d(range_padding=0.08)
    # A double-click does what the reset tool does: back to following the newest data.
    figure.js_on_event(DoubleTap, CustomJS(args={"plot": figure}, code="plot.reset.emit()"))


def render_live(stream: str, columns: Columns, follow: float | None = None) -> LivePlot:
    """Render a new plot of ``stream`` whose source has ``columns``' schema."""
    figure, source = render(curve(columns, stream))
    figure.toolbar.logo = None
    follow_newest(figure, follow or follow_seconds())
    return LivePlot(stream, figure, source)


_prototypes: dict[tuple, LivePlot] = {}
_prototypes_lock = threading.Lock()


def live_plot(
    stream: str, columns: Columns, follow: float | None = None, fresh: bool = False
) -> LivePlot:
    """A plot of ``stream`` whose source has ``columns``' schema (fill it via the fan-out).

    A copy of the one rendered for this process (same model ids in every session, see
    :mod:`headrace.app.live.internals`), unless ``fresh``: a document that showed the stream
    before needs new ids, its browser may still hold the old models.
    """
    if fresh:
        return render_live(stream, columns, follow)
    key = (stream, tuple((c, a.dtype.str) for c, a in columns.items()), follow)
    with _prototypes_lock:
        prototype = _prototypes.get(key)
        if prototype is None:
            # Rendered into a document of its own: none of a session's change events.
            scratch = Document()
            with patch_curdoc(scratch), set_curdoc(scratch):
                prototype = render_live(stream, empty(list(columns)), follow)
            scratch.clear()
            _prototypes[key] = prototype
    copies = Copies()
    return LivePlot(stream, copies(prototype.figure), copies(prototype.source))


def history_line(figure: Figure) -> ColumnDataSource:
    """A second line, for rows read back from history; returns its source."""
    from bokeh.models import ColumnDataSource

    source = ColumnDataSource({"time": np.array([], float), "value": np.array([], float)})
    figure.line("time", "value", source=source, color=COLOR, line_width=1.0)
    return source
