"""The viewer's dashboard, served at ``/dashboard`` (``headrace serve``).

Per session it builds a stream picker and one live view per picked stream
(:func:`headrace.app.views.plots.stream_view`, written with the same API as a user's
app: :mod:`headrace.live`), each with its freshness line. Everything it shows comes from
the process's subscriber and fan-out, so a session costs a copy of each plot when it
opens and its share of one encoded message per update: no cluster access, no
computation of its own.

The scheduler and the window come from the environment (:mod:`headrace.app.settings`), which
``headrace serve`` sets.
"""

from __future__ import annotations

import os

import pandas as pd
import panel as pn

from headrace.app import registry
from headrace.app.pages.board import Follower, Status
from headrace.app.pages.template import Text, alert, badge, column, dark, div, page, serve
from headrace.app.settings import configure_logging, spike_threshold
from headrace.app.views import freshness
from headrace.app.views.component import LiveView
from headrace.app.views.plots import stream_view

TITLE = "headrace"
ABOUT = (
    "Live streams, computed once on the Dask cluster and streamed to every viewer. Drag or "
    "wheel a plot to look back, double-click it (or reset) to follow the newest data. "
    '<a href="./ops" style="color:{link}">Operator page</a>'
)
WINDOWS = {
    "live": None,
    "1 h": pd.Timedelta(hours=1),
    "24 h": pd.Timedelta(days=1),
    "7 d": pd.Timedelta(days=7),
    "custom": None,
}


class Dashboard(Follower):
    """One session's dashboard: a stream picker, a plot and a freshness line per stream.

    Build it while the session's document is current. Rows come from the process's
    fan-out; the stream list and status lines from the process's :class:`Board`.
    """

    def __init__(self, parts: registry.Registry | None = None) -> None:
        self.parts = parts = parts or registry.get()
        self.fanout, self.board, self.history = parts.fanout, parts.board, parts.history
        doc = pn.state.curdoc
        self.follow(doc)
        self.fanout.open_session(doc, on_skip=self._skipped)
        self.threshold = spike_threshold()
        self.views: dict[str, LiveView] = {}
        self.skipped = 0
        status = self.board.status()
        self.picker = pn.widgets.MultiChoice(
            label="Streams",
            options=list(status.streams),
            value=list(status.streams),
            placeholder="pick streams",
            sizing_mode="stretch_width",
        )
        # Until the viewer picks, newly published streams are shown as they appear.
        self.follow_all, self._updating = True, False
        self.line = Text(status.line, sizing_mode="stretch_width")
        self.notice = alert("warning")
        # The notice, then a view per picked stream (each one Panel component).
        self.main = pn.Column(
            pn.pane.Bokeh(self.notice, sizing_mode="stretch_width", margin=0),
            sizing_mode="stretch_width",
            tags=[f"pid:{os.getpid()}"],
        )
        self.picker.param.watch(self._picked, "value")
        self.span = pn.widgets.RadioButtonGroup(
            label="Window",
            options=list(WINDOWS),
            value="live",
            disabled=not self.history.available,
            description=None if self.history.available else "no history database configured",
        )
        self.range: pn.widgets.DatetimeRangePicker | None = None  # made when first picked
        self.span.param.watch(self._windowed, "value")
        self.window: tuple[pd.Timestamp, pd.Timestamp] | None = None
        self.controls = pn.Column(self.picker, self.span, sizing_mode="stretch_width")
        self.state = Text(self._badge(status), margin=(12, 10))
        self._sync()  # streams known now go into the document the browser first receives
        # Changes made after the browser connected but before it reported the document
        # ready are dropped by Panel: status updates start once it has loaded.
        pn.state.onload(self._loaded)
        pn.state.on_session_destroyed(self._destroyed)
        link = "#8ab4f8" if dark() else "#0d6efd"  # Bootstrap's link colours, by theme
        about = div(ABOUT.format(link=link), margin=(10, 10), sizing_mode="stretch_width")
        # One part of the sidebar: each part of a template costs a session's build a root.
        texts = column(self.line.div, about, sizing_mode="stretch_width")
        self.controls.append(pn.pane.Bokeh(texts, sizing_mode="stretch_width", margin=0))
        self.layout = page(TITLE, [self.main], [self.controls], self.state)

    def _loaded(self) -> None:
        self.board.add(self)

    def _apply(self, status: Status) -> None:
        known = list(status.streams)
        if known != list(self.picker.options):
            self._updating = True
            try:
                self.picker.options = known
                if self.follow_all:
                    self.picker.value = known
            finally:
                self._updating = False
        self.line.html = status.line
        self.state.html = self._badge(status)

    @staticmethod
    def _badge(status: Status) -> str:
        """LIVE when every stream is, STALE when one is not, else how far it got."""
        if not status.streams:
            return badge("unknown", "CONNECTING" if "connecting" in status.line else "NO STREAMS")
        stale = [s for s, text in status.freshness if not freshness.is_live(text)]
        if stale:
            return badge("stale", f"STALE: {', '.join(stale)}")
        return badge("ok", "LIVE")

    def _skipped(self, rows: int) -> None:
        """From the fan-out: this page read too slowly and ``rows`` rows never reached it."""
        self.skipped += rows
        doc = self._doc()
        if doc is not None:
            doc.add_next_tick_callback(self._show_skipped)

    def _show_skipped(self) -> None:
        self.notice.text = (
            f"This page fell behind (a slow connection?) and skipped {self.skipped:,} rows "
            "to show the newest. Reload to start again from the full window."
        )
        self.notice.visible = True

    def _picked(self, _event: object) -> None:
        if not self._updating:
            self.follow_all = set(self.picker.value) >= set(self.picker.options)
        self._sync()

    def _sync(self) -> None:
        selected = list(self.picker.value)
        for gone in [s for s in self.views if s not in selected]:
            self.views.pop(gone).close()
        for stream in selected:
            if stream not in self.views:
                view = LiveView(stream_view(stream, self.threshold), self.parts)
                self.views[stream] = view
                if self.window is not None:
                    view.look_back(self.window)
        notice = self.main.objects[0]
        self.main.objects = [notice, *(self.views[s].panel for s in selected if s in self.views)]

    def _windowed(self, _event: object) -> None:
        """The viewer picked a window: every plot looks at it (or follows live again)."""
        span = WINDOWS[self.span.value]
        if self.span.value == "custom" and self.range is None:
            self.range = pn.widgets.DatetimeRangePicker(
                label="From - to (UTC)", sizing_mode="stretch_width"
            )
            self.range.param.watch(self._windowed, "value")
            self.controls.insert(2, self.range)  # under the window buttons
        if self.range is not None:
            self.range.visible = self.span.value == "custom"
        if self.span.value == "live":
            self.window = None
        elif span is not None:
            now = pd.Timestamp.now(tz="UTC")
            self.window = (now - span, now)
        elif self.range is not None and self.range.value:
            start, end = (pd.Timestamp(t).tz_localize("UTC") for t in self.range.value)
            self.window = (start, end)
        else:
            return  # custom, but no range picked yet
        for view in self.views.values():
            view.look_back(self.window)

    def _destroyed(self, _context: object) -> None:
        # The fan-out drops the sinks itself; this lets go of the board and the views.
        self.board.remove(self)
        for view in self.views.values():
            view.close()
        self.views.clear()


def build(parts: registry.Registry | None = None) -> pn.template.BaseTemplate:
    """One session's dashboard page (default: on this process's registry).

    Call while the session's document is current.
    """
    return Dashboard(parts).layout


if __name__.startswith("bokeh_app"):  # run by `panel serve`, once per session
    configure_logging()
    serve(build(), TITLE)
