"""A live view in one session: a copy of the process's rendering, fed by the fan-out.

Building one costs a session a copy of the models HoloViews rendered once for the
process (:class:`headrace.app.live.internals.Copies`) and a sink per fed glyph; the
rows come with every other session's, encoded once per tick. Above the plot a line
names the view's streams and says how fresh they are (from the process's status
board), and an alert shows the view's error while it has one.
"""

from __future__ import annotations

import html
import weakref
from typing import TYPE_CHECKING

import panel as pn

from headrace.app import registry
from headrace.app.live.internals import Copies
from headrace.app.pages.board import Follower, Status
from headrace.app.pages.template import prepare
from headrace.app.views import freshness
from headrace.app.views.engine import Engine, View, engine

if TYPE_CHECKING:
    from bokeh.document import Document
    from bokeh.models import Model

    from headrace.app.live.fanout import Sink

LIVE, STALE = "#2e7d32", "#b26a00"

# The renderings each document has shown: a second copy in one document needs new ids.
_shown: weakref.WeakKeyDictionary[Document, set[tuple[int, int]]] = weakref.WeakKeyDictionary()


class LiveView(Follower):
    """One view in the current session; ``.panel`` is what goes into a layout."""

    def __init__(self, view: View, parts: registry.Registry | None = None) -> None:
        parts = parts or registry.get()
        self.view = view
        self.fanout, self.board, self.history = parts.fanout, parts.board, parts.history
        self.engine: Engine = engine(view, self.fanout)
        doc = pn.state.curdoc
        self.follow(doc)
        prepare(doc)
        self.fanout.open_session(doc)  # rows wait until the browser has the document
        self.sinks: list[Sink] = []
        self.version = 0
        self.root: Model | None = None  # this session's copy of the rendering
        self.title = pn.pane.HTML(
            self._title(self.board.status()), margin=(0, 10), sizing_mode="stretch_width"
        )
        self.alert = pn.pane.Alert("", alert_type="danger", visible=False, margin=(0, 10))
        self.body = pn.Column(sizing_mode="stretch_width")
        self.panel = pn.Column(self.title, self.alert, self.body, sizing_mode="stretch_width")
        self._show()
        self.engine.watch(self)
        pn.state.onload(lambda: self.board.add(self))

    # -- what the engine and the board tell -------------------------------------------------

    def changed(self) -> None:
        self.later(self._show)

    def _apply(self, status: Status) -> None:
        text = self._title(status)
        if text != self.title.object:  # unchanged text would still cost a message
            self.title.object = text

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
        if error is not None and self.alert.object != error:
            self.alert.object = error
        if engine.rendering is None:
            if not self.body.objects:
                waiting = ", ".join(engine.waiting_for) or ", ".join(self.view.streams)
                self.body.objects = [
                    pn.pane.Markdown(f"*waiting for the first rows of {waiting}…*", margin=(0, 10))
                ]
            return
        if engine.version == self.version:
            return
        root = self._copy()
        self.body.objects = [pn.pane.Bokeh(root, sizing_mode="stretch_width")]

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
        self.root = root
        if held:
            for sink in self.sinks:
                doc.add_next_tick_callback(sink.release)
        return root

    def close(self) -> None:
        """Stop feeding this session's copy (it leaves the page)."""
        for sink in self.sinks:
            self.fanout.unregister(sink)
        self.sinks = []
        self.board.remove(self)
