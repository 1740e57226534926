"""A view's HoloViews object rendered once per process: its glyphs and the data of each.

HoloViews renders the object (plots, axes, tools, legends, the user's options); this
module finds each element's glyph and its ``ColumnDataSource``, and asks HoloViews' own
plot for the source's columns from any later element at the same place
(``ElementPlot.get_data``), which is what HoloViews would put in the source itself. An
element's place is its path in the object (overlay and layout labels, ``NdOverlay``
keys), the same in every call of the view's function.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from headrace.app.live.columns import Columns, to_wire
from headrace.app.views.hvinternals import leaf_data, leaf_option, plot_leaves

if TYPE_CHECKING:
    from bokeh.models import ColumnDataSource, Model

Path = tuple

# Glyphs a row of data draws on its own: new rows are streamed (appended). Others
# (a Patch outlines all rows at once) are drawn again from the whole window.
STREAMED_GLYPHS = {"Line", "Scatter", "Circle", "Segment", "Step", "VBar", "HBar", "Rect"}
# Elements whose glyph rows draw alone, in any order (markers): a revised row that now
# draws one where there was none (a spike after all) adds it, out of x order.
UNORDERED = {"Scatter", "Points", "Spikes", "Segments", "Labels", "Rectangles"}
# Elements that summarise many rows into one glyph row: they take a window of rows.
SUMMARIES = {
    "Histogram",
    "Bars",
    "Distribution",
    "Bivariate",
    "BoxWhisker",
    "Violin",
    "HeatMap",
    "HexTiles",
    "Image",
    "QuadMesh",
    "Table",
    "ItemTable",
}
PALETTE = [  # Category10, as HoloViews cycles it; picked per key by a stable hash
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]


class ViewError(ValueError):
    """A view that cannot be drawn live, with a message naming the view and what to do."""


@dataclass(frozen=True)
class Element:
    path: Path
    element: Any  # holoviews.Element
    key: object = None  # its NdOverlay key, if any


def elements(obj: Any, name: str, path: Path = (), key: object = None) -> Iterator[Element]:
    """Every element of ``obj`` (overlays, layouts, NdOverlays walked) with its path."""
    import holoviews as hv

    if isinstance(obj, hv.DynamicMap | hv.HoloMap):
        raise ViewError(
            f"view {name}: returned a {type(obj).__name__}; return elements, overlays or "
            "layouts: headrace calls the view's function itself on every tick"
        )
    if isinstance(obj, hv.Element):
        yield Element(path, obj, key)
        return
    if not isinstance(obj, hv.core.dimension.Dimensioned) or not hasattr(obj, "data"):
        raise ViewError(
            f"view {name}: returned {type(obj).__name__}, not a HoloViews object "
            "(an element such as hv.Curve, or an overlay or layout of them)"
        )
    keyed = isinstance(obj, hv.NdOverlay | hv.NdLayout)
    for k, item in obj.data.items():
        yield from elements(item, name, (*path, k), k if keyed else key)


@dataclass
class Glyph:
    """One element's glyph in the process's rendering, and how to make its source's data."""

    path: Path
    kind: str  # its element's type: "Curve", "Spikes"...
    plot: Any  # holoviews' ElementPlot
    source: ColumnDataSource
    columns: list[str]
    streamed: bool  # new rows can be appended; otherwise drawn again whole
    x: str  # the column new rows are ordered by (a lookback cuts by it)
    key: object = None
    renderer: Any = None  # the GlyphRenderer and the figure it is in
    figure: Any = None

    def data(self, element: Any) -> Columns:
        """The source's columns for ``element``, as Bokeh sends them (wire form)."""
        data = leaf_data(self.plot, element)
        columns = {}
        for name in self.columns:
            if name not in data:
                raise ViewError(f"{self.kind} at {label(self.path)}: no column {name!r}")
            columns[name] = np.asarray(data[name])
        return to_wire(columns)


@dataclass
class Rendering:
    """A view's HoloViews object rendered to Bokeh once: the root model and its glyphs."""

    root: Model
    glyphs: dict[Path, Glyph] = field(default_factory=dict)


def refuse_summary(name: str, kind: str, streams: list[str]) -> None:
    """Refuse an element of type ``kind`` drawn from appended rows if it summarises them."""
    if kind in SUMMARIES:
        raise ViewError(
            f"view {name}: hv.{kind} summarises many rows and cannot be streamed row by row; "
            "give it a window of rows as input instead, e.g. "
            f"live.rows({streams[0]!r}).last('60s')"
        )


def backend() -> None:
    """HoloViews' Bokeh backend, as ``hv.extension("bokeh")`` selects it (options need it)."""
    global _selected
    if not _selected:
        import holoviews as hv
        import holoviews.plotting.bokeh

        hv.Store.set_current_backend("bokeh")  # also builds hv.opts.Curve and the like
        _selected = True


_selected = False


def label(path: Path) -> str:
    return "/".join(".".join(map(str, p)) if isinstance(p, tuple) else str(p) for p in path) or "/"


def render(obj: Any, name: str) -> Rendering:
    """Render ``obj`` with HoloViews' Bokeh backend; map each element to its glyph."""
    import holoviews as hv
    from bokeh.document import Document
    from bokeh.io.doc import patch_curdoc

    backend()
    found = list(elements(obj, name))
    # A document of its own: curdoc() may be a server session's, whose lock is not held here.
    # HoloViews takes `doc` only in server mode; otherwise it themes curdoc(), so patch that.
    doc = Document()
    with patch_curdoc(doc):
        plot = hv.renderer("bokeh").get_plot(obj, doc=doc)
    by_id = {id(e.element): e for e in found}
    rendering = Rendering(plot.state)
    for leaf, handles in plot_leaves(plot):
        element = by_id.get(id(handles["element"]))
        source = handles.get("source")
        if element is None or source is None or not source.data:
            continue  # an overlay's own plot, or an annotation without data (HLine)
        kind = type(element.element).__name__
        columns = list(source.data)
        x = next((c for c in columns if np.asarray(source.data[c]).dtype.kind == "M"), columns[0])
        rendering.glyphs[element.path] = Glyph(
            element.path,
            kind,
            leaf,
            source,
            columns,
            type(handles.get("glyph")).__name__ in STREAMED_GLYPHS,
            x,
            element.key,
            handles.get("glyph_renderer"),
            handles.get("plot"),
        )
        if element.key is not None:
            color_by_key(leaf, handles, element.key)
    return rendering


def color_by_key(leaf: Any, handles: dict[str, Any], key: object) -> None:
    """One colour per key, the same in every process and after restarts.

    HoloViews cycles colours in the order of the keys it sees, which changes as keys
    appear; a hash of the key does not. Colours the user set are kept.
    """
    import holoviews as hv

    if not isinstance(leaf_option(leaf, "color"), hv.Cycle):
        return
    colour = PALETTE[zlib.crc32(str(key).encode()) % len(PALETTE)]
    for name in ("glyph", "selection_glyph", "nonselection_glyph", "hover_glyph", "muted_glyph"):
        glyph = handles.get(name)
        for prop in ("line_color", "fill_color"):
            if glyph is not None and isinstance(getattr(glyph, prop, None), str):
                setattr(glyph, prop, colour)


def follow(root: Model, seconds: float) -> None:
    """Ranges that follow the data in the browser: time axes show the newest ``seconds``.

    HoloViews fixes each range to the data it rendered from; live data leaves that. A
    range shared by several plots (linked axes) stays shared.
    """
    from bokeh.events import DoubleTap
    from bokeh.models import CustomJS, DataRange1d, DatetimeAxis, Toolbar
    from bokeh.plotting import figure as Figure

    made: dict[str, DataRange1d] = {}

    def live(old: Any, time: bool) -> DataRange1d:
        new = made.get(old.id)
        if new is None:
            new = made[old.id] = (
                DataRange1d(follow="end", follow_interval=seconds * 1000.0, range_padding=0)
                if time
                else DataRange1d(range_padding=0.08)
            )
        return new

    for toolbar in root.select({"type": Toolbar}):  # a layout's own toolbar too
        toolbar.logo = None
    for fig in root.select({"type": Figure}):
        time = any(isinstance(a, DatetimeAxis) for a in fig.below + fig.above)
        fig.x_range = live(fig.x_range, time)
        fig.y_range = live(fig.y_range, False)
        if time:  # a double-click does what reset does: back to following the newest rows
            fig.js_on_event(DoubleTap, CustomJS(args={"plot": fig}, code="plot.reset.emit()"))


def tag(root: Model, name: str, streams: list[str]) -> None:
    """Name the view and its streams in each plot's tags: how pages and tests find them."""
    from bokeh.models import Plot

    tags = [f"headrace.view:{name}", *(f"headrace.stream:{s}" for s in streams)]
    for plot in root.select({"type": Plot}):
        plot.tags = [*plot.tags, *tags]


def lighter(root: Model) -> None:
    """Fewer models per plot: every session copies, serialises and loads each of them.

    HoloViews gives each glyph three more (selected, not selected, muted) that BokehJS
    makes alike by itself when they are left as ``"auto"``.
    """
    from bokeh.models import GlyphRenderer

    for renderer in root.select({"type": GlyphRenderer}):
        renderer.selection_glyph = "auto"
        renderer.nonselection_glyph = "auto"
        renderer.muted_glyph = "auto"
