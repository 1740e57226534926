"""A live view in one session: a copy of the process's rendering, fed by the fan-out.

Building one costs a session a copy of the models HoloViews rendered once for the
process (:class:`headrace.app.live.internals.Copies`) and a sink per fed glyph; the
rows come with every other session's, encoded once per tick. Above the plot a line
names the view's streams and says how fresh they are (from the process's status
board), and an alert shows the view's error while it has one.

The line, the alert and the plot are Bokeh models in one Bokeh column, one Panel
component in all: each Panel component costs a session's build 1.5-3 ms (made, then
rendered), five per view did a fifth of a dashboard's.
"""

from __future__ import annotations

import html
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import panel as pn

from headrace.app import registry
from headrace.app.live.internals import Copies
from headrace.app.pages.board import Board, Follower, Status
from headrace.app.pages.template import Text, alert, column, div, prepare
from headrace.app.views import freshness
from headrace.app.views.engine import Engine, View, engine
from headrace.app.views.lookback import LookBack, Window
from headrace.app.views.past import Past

if TYPE_CHECKING:
    from bokeh.document import Document
    from bokeh.models import GlyphRenderer, Model

    from headrace.app.live.gates import Holding, Sink

LIVE, STALE = "#2e7d32", "#b26a00"
LOADING = 30.0  # seconds a page may take to load before its view counts as unwatched

# The renderings each document has shown: a second copy in one document needs new ids.
_shown: weakref.WeakKeyDictionary[Document, set[tuple[int, int]]] = weakref.WeakKeyDictionary()
_pasts: weakref.WeakKeyDictionary[Engine, Past] = weakref.WeakKeyDictionary()  # per process


class Lines(Follower):
    """The freshness lines of every live view of one page, changed in one callback.

    A page with several views would otherwise take a callback and a message per view
    each time a stream's freshness changes: with hundreds of viewers, that is most of
    a process's work.
    """

    def __init__(self, doc: Document) -> None:
        self.follow(doc)
        self.views: weakref.WeakSet[LiveView] = weakref.WeakSet()

    def _apply(self, status: Status) -> None:
        for view in list(self.views):
            view.show_status(status)

    def close(self, board: Board) -> None:
        self.closed = True
        board.remove(self)


_lines: weakref.WeakKeyDictionary[Document, Lines] = weakref.WeakKeyDictionary()


def close_views(doc: Document) -> None:
    """Close every live view made in ``doc`` (a copy that failed: the page is built anew)."""
    for view in views_of(doc):
        view.close()


def views_of(doc: Document) -> list[LiveView]:
    """The live views made in ``doc`` and not closed."""
    lines = _lines.get(doc)
    return list(lines.views) if lines is not None else []


@dataclass(frozen=True)
class Shown:
    """What a view showed in a built page, for a copy of the page (:meth:`LiveView.record`)."""

    box: str  # the id of the view's column
    version: int  # of the engine's rendering it showed a copy of (-1: none)
    copies: tuple[tuple[str, str], ...]  # (rendering's model id, the page's model id)
    # (stream, source id, columns, what its browser holds) of each fed glyph
    sinks: tuple[tuple[str, str, tuple[str, ...], Holding], ...]


class LiveView(Follower):
    """One view in the current session; ``.panel`` is what goes into a layout.

    ``copied``: this view's record in a built page and the copies of that page's models
    (:mod:`headrace.app.live.copied`): the view takes over its copy of the page's column,
    plot and sources, and is fed the rows since the page was built.
    """

    def __init__(
        self,
        view: View,
        parts: registry.Registry | None = None,
        copied: tuple[Shown, Copies] | None = None,
    ) -> None:
        parts = parts or registry.get()
        self.view = view
        self.fanout, self.board, self.cache = parts.fanout, parts.board, parts.history
        self.engine: Engine = engine(view, self.fanout)
        doc = pn.state.curdoc
        self.follow(doc)
        prepare(doc)
        self.fanout.open_session(doc)  # rows wait until the browser has the document
        self.sinks: list[Sink] = []
        self.built = time.monotonic()
        self.version = 0
        self.root: Model | None = None  # this session's copy of the rendering
        self._copies: Copies | None = None
        self.lookback: LookBack | None = None
        self.window: Window | None = None  # None: live
        self._past: dict[tuple, GlyphRenderer] = {}  # history drawn under each live glyph
        if copied is None:
            self.title = Text(self._title(self.board.status()), sizing_mode="stretch_width")
            self.alert = alert("danger")
            # Line, alert, then the plot (or what it waits for).
            self.box = column(self.title.div, self.alert, sizing_mode="stretch_width")
        else:
            self._take(doc, *copied)
        self._panel: pn.pane.Bokeh | None = None
        self.engine.watch(self)
        self._show()
        lines = _lines.get(doc)
        if lines is None:  # the page's first view: the board tells the page, once
            lines = _lines[doc] = Lines(doc)
            board = self.board
            pn.state.onload(lambda: board.add(lines))
            pn.state.on_session_destroyed(lambda _context: lines.close(board))
        lines.views.add(self)
        self._lines = lines
        pn.state.on_session_destroyed(lambda _context: self.close())

    @property
    def panel(self) -> pn.pane.Bokeh:
        """The view as one Panel component (made when first asked for: a page that lays
        its views out in Bokeh needs only :attr:`box`)."""
        if self._panel is None:
            self._panel = pn.pane.Bokeh(self.box, sizing_mode="stretch_width", margin=0)
        return self._panel

    def __panel__(self) -> pn.viewable.Viewable:
        return self.panel

    def record(self) -> Shown:
        """What a copy of this view needs: its column, and what it shows and is fed."""
        copies = self._copies.done if self._copies is not None else {}
        return Shown(
            self.box.id,
            self.version if self.root is not None else -1,
            tuple((rid, model.id) for rid, model in copies.items()),
            tuple((s.stream, s.model, tuple(s.columns), s.holding()) for s in self.sinks),
        )

    def _take(self, doc: Document, shown: Shown, copies: Copies) -> None:
        """Take over the copy of a built view: its column, plot and sources."""
        box = self.box = copies.done[shown.box]
        self.title = Text(div=box.children[0])
        self.alert = box.children[1]
        engine = self.engine
        with engine.lock:  # no tick between the check and the sinks
            if shown.version < 0 or engine.version != shown.version:
                return  # _show copies the rendering now, as in a built view
            taken = Copies()
            taken.done = {rid: copies.done[mid] for rid, mid in shown.copies}
            _shown.setdefault(doc, set()).add((id(engine), engine.version))
            self.sinks = [
                self.fanout.register(
                    stream, doc, copies.done[source], columns=list(columns), holding=holding
                )
                for stream, source, columns, holding in shown.sinks
            ]
            self.version = engine.version
        self.root, self._copies = box.children[2], taken
        self.lookback = self._look_back(doc, self.root) if self.history else None

    @property
    def active(self) -> bool:
        """A browser has this page, or is loading it: not the page Panel keeps per process
        to answer GETs with (``--reuse-sessions``), which no browser ever loads."""
        doc = self._doc()
        if doc is None:
            return False
        return time.monotonic() - self.built < LOADING or self.fanout.session_ready(doc)

    # -- what a page does with it -----------------------------------------------------------

    def models(self, kind: type) -> list[Model]:
        """This session's models of ``kind`` (a ``Span`` to move, a figure to restyle)."""
        return list(self.root.select({"type": kind})) if self.root is not None else []

    def set_follow(self, seconds: float) -> None:
        """Have this session's time axes show the newest ``seconds`` (a widget of its own)."""
        from bokeh.models import DataRange1d

        for model in self.models(DataRange1d):
            if model.follow == "end":
                model.follow_interval = seconds * 1000.0

    @property
    def history(self) -> bool:
        """Whether this view can look back (a history database is configured)."""
        return self.cache.available and self.view.history

    def look_back(self, window: Window | None) -> None:
        """Show ``window`` (UTC start, end) of history, read once per process (None: live).

        Zooming in reads finer detail; spikes are kept (every bucket's min and max).
        Call from the session's callbacks (a widget's).
        """
        self.window = window
        if self.lookback is not None:
            self.lookback.show(window)

    # -- what the engine and the board tell -------------------------------------------------

    def changed(self) -> None:
        self.later(self._show)

    def show_status(self, status: Status) -> None:
        self.title.html = self._title(status)

    def _title(self, status: Status) -> str:
        texts = dict(status.freshness)
        parts = []
        for stream in self.view.streams:
            text = texts.get(stream, "waiting for data")
            colour = LIVE if freshness.is_live(text) else STALE
            parts.append(
                f"<b>{html.escape(stream)}</b> &nbsp;"
                f'<span style="color:{colour}">{html.escape(text)}</span>'
            )
        title = f"<b>{html.escape(self.view.title)}</b> · " if self.view.title else ""
        return title + " &nbsp;·&nbsp; ".join(parts)

    # -- the plot -----------------------------------------------------------------------------

    def _show(self) -> None:
        """Show the engine's rendering, its error, or what it waits for."""
        engine = self.engine
        error = engine.error
        self.alert.visible = error is not None
        if error is not None:
            self.alert.text = html.escape(error)  # Bokeh sends a change only if it is one
        shown = self.box.children[2:]
        if engine.rendering is None:
            if not shown:
                waiting = ", ".join(engine.waiting_for) or ", ".join(self.view.streams)
                text = f"<i>waiting for the first rows of {html.escape(waiting)}…</i>"
                self.box.children = [*self.box.children, div(text, margin=(0, 10))]
            return
        if engine.version == self.version:
            return
        # Themed light or dark as it joins the document (the document's Bokeh theme, which
        # Panel sets from the page's design).
        self.box.children = [self.title.div, self.alert, self._copy()]

    def _copy(self) -> Model:
        """A copy of the engine's rendering with a sink for each fed glyph."""
        doc = self._doc()
        assert doc is not None
        for sink in self.sinks:
            self.fanout.unregister(sink)
        engine = self.engine
        held = self.fanout.session_ready(doc)  # the browser has the document: rows must wait
        shown = _shown.setdefault(doc, set())
        with engine.lock:  # no tick between the copy and the sinks
            rendering = engine.rendering
            assert rendering is not None
            identity = (id(engine), engine.version)
            copies = Copies(renew=identity in shown)
            shown.add(identity)
            root = copies(rendering.root)
            self.sinks = [
                self.fanout.register(
                    engine.feed(path),
                    doc,
                    copies.done[rendering.glyphs[path].source.id],
                    held=held,
                    columns=rendering.glyphs[path].columns,
                )
                for path in engine.kinds
            ]
            self.version = engine.version
        self.root, self._copies, self._past = root, copies, {}
        self.lookback = self._look_back(doc, root) if self.history else None
        if self.window is not None and self.lookback is not None:
            self.lookback.show(self.window)
        if held:
            for sink in self.sinks:
                doc.add_next_tick_callback(sink.release)
        return root

    def _look_back(self, doc: Document, root: Model) -> LookBack | None:
        from bokeh.models import DatetimeAxis
        from bokeh.plotting import figure as Figure

        figures = [
            f
            for f in root.select({"type": Figure})
            if any(isinstance(a, DatetimeAxis) for a in f.below + f.above)
        ]
        if not figures:
            return None
        past = _pasts.get(self.engine)
        if past is None:
            past = _pasts[self.engine] = Past(self.engine, self.cache)
        return LookBack(figures, doc, past.read, self._draw_past)

    def _draw_past(self, frames: dict | None) -> None:
        if frames is None:
            for renderer in self._past.values():
                renderer.data_source.data = {c: a[:0] for c, a in renderer.data_source.data.items()}
            return
        try:
            data = _pasts[self.engine].data(frames)
        except Exception as exc:  # the live view goes on; its past stays empty
            self.engine.report(exc, "history")
            return
        for path, columns in data.items():
            renderer = self._past.get(path) or self._past_renderer(path)
            if renderer is not None:
                renderer.data_source.data = dict(columns)

    def _past_renderer(self, path: tuple) -> GlyphRenderer | None:
        """A renderer under the live glyph at ``path``, drawn alike, for its history."""
        from bokeh.models import ColumnDataSource
        from bokeh.models import GlyphRenderer as Renderer

        rendering, copies = self.engine.rendering, self._copies
        glyph = rendering.glyphs.get(path) if rendering is not None else None
        if glyph is None or copies is None or glyph.renderer is None:
            return None
        live, figure = copies.done.get(glyph.renderer.id), copies.done.get(glyph.figure.id)
        if live is None or figure is None:
            return None
        renderer = Renderer(
            data_source=ColumnDataSource({c: [] for c in glyph.columns}),
            glyph=live.glyph.clone(),
            name="history",
        )
        figure.renderers = [renderer, *figure.renderers]
        self._past[path] = renderer
        return renderer

    def close(self) -> None:
        """Stop feeding this session's copy (it leaves the page)."""
        for sink in self.sinks:
            self.fanout.unregister(sink)
        self.sinks = []
        self.closed = True  # no more changes to its document
        self._lines.views.discard(self)
        self.engine.unwatch(self)
