"""The viewer's dashboard, served at ``/dashboard`` (``headrace serve``).

Per session it builds a stream picker, one live plot per picked stream and a freshness
line per stream. Everything it shows comes from the process's subscriber and fan-out,
so a session costs a HoloViews render when it opens and a ``cds.stream`` per update:
no cluster access, no computation of its own.

The scheduler and the window come from the environment (:mod:`headrace.app.settings`), which
``headrace serve`` sets.
"""

from __future__ import annotations

import os

import pandas as pd
import panel as pn
from bokeh.document import Document

from headrace.app import registry
from headrace.app.live.columns import empty
from headrace.app.live.fanout import Fanout, Sink
from headrace.app.pages.board import Follower, Status
from headrace.app.pages.template import badge, page, serve
from headrace.app.settings import configure_logging
from headrace.app.views import freshness
from headrace.app.views.history import HistoryCache
from headrace.app.views.lookback import LookBack
from headrace.app.views.plots import live_plot
from headrace.etl.contract.frames import TIME, VALUE

TITLE = "headrace"
PLOTTED = (TIME, VALUE)
WINDOWS = {
    "live": None,
    "1 h": pd.Timedelta(hours=1),
    "24 h": pd.Timedelta(days=1),
    "7 d": pd.Timedelta(days=7),
    "custom": None,
}


class StreamView:
    """One stream in one session: its plot, its sink in the fan-out and its freshness line."""

    def __init__(
        self,
        stream: str,
        fanout: Fanout,
        doc: Document,
        held: bool = False,
        history: HistoryCache | None = None,
        fresh: bool = False,
    ) -> None:
        self.stream = stream
        self.fanout = fanout
        subscriber = fanout.subscriber
        # What the plot draws, and no more: every column costs each viewer a buffer per update.
        columns = [c for c in subscriber.columns(stream) if c in PLOTTED]
        # A copy of the process's plot (cheap); register() fills its source with the window.
        self.plot = live_plot(stream, empty(columns), fresh=fresh)
        self.sink: Sink = fanout.register(stream, doc, self.plot.source, held=held, columns=columns)
        self.past = (
            LookBack(stream, self.plot.figure, history, doc)
            if history is not None and history.available
            else None
        )
        self.status = pn.pane.HTML(
            self._html(subscriber.freshness(stream)), margin=(0, 10), sizing_mode="stretch_width"
        )
        self.panel = pn.Column(
            self.status,
            pn.pane.Bokeh(self.plot.figure, sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )

    def _html(self, text: str) -> str:
        color = "#2e7d32" if freshness.is_live(text) else "#b26a00"
        return f'<b>{self.stream}</b> &nbsp;<span style="color:{color}">{text}</span>'

    def show(self, text: str) -> None:
        html = self._html(text)
        if html != self.status.object:  # unchanged text would still cost a message
            self.status.object = html

    def close(self) -> None:
        self.fanout.unregister(self.sink)


class Dashboard(Follower):
    """One session's dashboard: a stream picker, a plot and a freshness line per stream.

    Build it while the session's document is current. Rows come from the process's
    fan-out; the stream list and status lines from the process's :class:`Board`.
    """

    def __init__(self, parts: registry.Registry | None = None) -> None:
        parts = parts or registry.get()
        self.fanout, self.board, self.history = parts.fanout, parts.board, parts.history
        doc = pn.state.curdoc
        self.follow(doc)
        self.fanout.open_session(doc, on_skip=self._skipped)
        self.views: dict[str, StreamView] = {}
        self.shown_before: set[str] = set()  # streams whose plot models this document had
        self.skipped = 0
        self.live = False  # the browser has loaded the document
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
        self.plots = pn.Column(sizing_mode="stretch_width")
        self.line = pn.pane.HTML(status.line, sizing_mode="stretch_width", margin=(0, 10))
        self.notice = pn.pane.Alert("", alert_type="warning", visible=False, margin=(0, 10))
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
        self.state = pn.pane.HTML(self._badge(status), margin=(12, 10))
        self._sync()  # streams known now go into the document the browser first receives
        # Changes made after the browser connected but before it reported the document
        # ready are dropped by Panel: status updates start once it has loaded.
        pn.state.onload(self._loaded)
        pn.state.on_session_destroyed(self._destroyed)
        about = pn.pane.Markdown(
            "Live streams, computed once on the Dask cluster and streamed to every viewer. "
            "Drag or wheel a plot to look back, double-click it (or reset) to follow the "
            "newest data. [Operator page](./ops)",
            sizing_mode="stretch_width",
        )
        self.main = pn.Column(
            self.notice, self.plots, sizing_mode="stretch_width", tags=[f"pid:{os.getpid()}"]
        )
        self.layout = page(TITLE, [self.main], [self.controls, self.line, about], self.state)

    def _loaded(self) -> None:
        self.live = True
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
        if status.line != self.line.object:
            self.line.object = status.line
        state = self._badge(status)
        if state != self.state.object:
            self.state.object = state
        texts = dict(status.freshness)
        for stream, view in self.views.items():
            view.show(texts.get(stream, "waiting for data"))

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
        self.notice.object = (
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
        doc = self._doc()
        added = []
        for stream in selected:
            if stream not in self.views and doc is not None:
                # In a live document Panel may send the new plot a tick later, and its rows
                # must not reach the browser before their source does.
                fresh = stream in self.shown_before
                view = StreamView(stream, self.fanout, doc, self.live, self.history, fresh)
                self.views[stream] = view
                self.shown_before.add(stream)
                if view.past is not None and self.window is not None:
                    view.past.show(self.window)
                added.append(view)
        self.plots.objects = [self.views[s].panel for s in selected if s in self.views]
        if self.live and doc is not None:
            for view in added:
                doc.add_next_tick_callback(view.sink.release)

    def _windowed(self, _event: object) -> None:
        """The viewer picked a window: every plot looks at it (or follows live again)."""
        span = WINDOWS[self.span.value]
        if self.span.value == "custom" and self.range is None:
            self.range = pn.widgets.DatetimeRangePicker(label="From - to (UTC)")
            self.range.param.watch(self._windowed, "value")
            self.controls.append(self.range)
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
            if view.past is not None:
                view.past.show(self.window)

    def _destroyed(self, _context: object) -> None:
        # The fan-out drops the sinks itself; this lets go of the board and the views.
        self.board.remove(self)
        self.views.clear()


def build(parts: registry.Registry | None = None) -> pn.template.BaseTemplate:
    """One session's dashboard page (default: on this process's registry).

    Call while the session's document is current.
    """
    return Dashboard(parts).layout


if __name__.startswith("bokeh_app"):  # run by `panel serve`, once per session
    configure_logging()
    serve(build(), TITLE)
