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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import panel as pn

from headrace.app import registry
from headrace.app.live.internals import Copies
from headrace.app.pages.board import Follower, Status
from headrace.app.pages.template import Text, alert, badge, column, dark, div, page, serve
from headrace.app.settings import configure_logging, spike_threshold
from headrace.app.views import freshness
from headrace.app.views.component import LiveView, Shown, close_views
from headrace.app.views.plots import stream_view

if TYPE_CHECKING:
    from bokeh.document import Document

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


@dataclass(frozen=True)
class Record:
    """A built dashboard's models (ids) and views: what a copy of it needs."""

    parts: tuple[tuple[str, str], ...]  # (role, model id): picker, span, range, main, ...
    views: tuple[tuple[str, Shown], ...]  # (stream, what its view showed)
    streams: tuple[str, ...]  # the picker's options: streams known when it was built


class Dashboard(Follower):
    """One session's dashboard: a stream picker, a plot and a freshness line per stream.

    Its behaviour is on the page's Bokeh models (widgets' ``on_change``, layouts'
    ``children``), so that it serves a page it built (``Dashboard(parts)``, then
    :meth:`rendered` once Panel rendered :attr:`layout`) and a copy of one alike
    (``copied``: :mod:`headrace.app.live.copied`). Make it while the session's document
    is current. Rows come from the process's fan-out; the stream list and status lines
    from the process's :class:`Board`.
    """

    def __init__(
        self, parts: registry.Registry | None = None, copied: tuple[Copies, Record] | None = None
    ) -> None:
        self.parts = parts = parts or registry.get()
        self.fanout, self.board, self.history = parts.fanout, parts.board, parts.history
        doc = pn.state.curdoc
        self.follow(doc)
        self.fanout.open_session(doc, on_skip=self._skipped)
        self.threshold = spike_threshold()
        self.views: dict[str, LiveView] = {}
        self.skipped = 0
        self.window: tuple[pd.Timestamp, pd.Timestamp] | None = None
        # Until the viewer picks, newly published streams are shown as they appear.
        self.follow_all, self._updating = True, False
        self.layout: pn.template.BaseTemplate | None = None  # a built page's, to render
        if copied is None:
            self._lay_out()
        else:
            copies, record = copied
            models = {role: copies.done[mid] for role, mid in record.parts}
            self._take(models)
            for stream, shown in record.views:
                view = LiveView(stream_view(stream, self.threshold), parts, (shown, copies))
                self.views[stream] = view
            self._wire(models)
        # Changes made after the browser connected but before it reported the document
        # ready are dropped by Panel: status updates start once it has loaded.
        pn.state.onload(self._loaded)
        pn.state.on_session_destroyed(self._destroyed)

    def _lay_out(self) -> None:
        """The page, built: Bokeh parts made here, Panel's template and widgets around."""
        status = self.board.status()
        line = Text(status.line, sizing_mode="stretch_width", tags=["hr:line"])
        state = Text(self._badge(status), margin=(12, 10), tags=["hr:state"])
        notice = alert("warning")
        notice.tags = ["hr:notice"]
        main = column(notice, sizing_mode="stretch_width", tags=[f"pid:{os.getpid()}", "hr:main"])
        self._take({"line": line.div, "state": state.div, "notice": notice, "main": main})
        self._sync(list(status.streams))  # known streams go into the first document
        picker = pn.widgets.MultiChoice(
            label="Streams",
            options=list(status.streams),
            value=list(status.streams),
            placeholder="pick streams",
            sizing_mode="stretch_width",
            tags=["hr:picker"],
        )
        span = pn.widgets.RadioButtonGroup(
            label="Window",
            options=list(WINDOWS),
            value="live",
            disabled=not self.history.available,
            description=None if self.history.available else "no history database configured",
            tags=["hr:span"],
        )
        # Under the window buttons, shown when "custom" is picked.
        range_ = pn.widgets.DatetimeRangePicker(
            label="From - to (UTC)", sizing_mode="stretch_width", visible=False, tags=["hr:range"]
        )
        link = "#8ab4f8" if dark() else "#0d6efd"  # Bootstrap's link colours, by theme
        about = div(ABOUT.format(link=link), margin=(10, 10), sizing_mode="stretch_width")
        # One part of the sidebar: each part of a template costs a session's build a root.
        texts = column(line.div, about, sizing_mode="stretch_width")
        controls = pn.Column(
            picker,
            span,
            range_,
            pn.pane.Bokeh(texts, sizing_mode="stretch_width", margin=0),
            sizing_mode="stretch_width",
        )
        main_pane = pn.pane.Bokeh(main, sizing_mode="stretch_width", margin=0)
        self.layout = page(TITLE, [main_pane], [controls], state)

    def rendered(self, doc: Document) -> None:
        """Panel rendered :attr:`layout` into ``doc``: take its widgets' models."""
        self._wire({t[3:]: m for m in doc.models for t in m.tags if str(t).startswith("hr:")})

    def record(self) -> Record:
        """What a copy of this page needs (:mod:`headrace.app.live.copied`)."""
        models = {
            "main": self.main,
            "notice": self.notice,
            "line": self.line.div,
            "state": self.state.div,
            "picker": self.picker,
            "span": self.span,
            "range": self.range,
        }
        return Record(
            tuple((role, model.id) for role, model in models.items()),
            tuple((stream, view.record()) for stream, view in self.views.items()),
            tuple(self.picker.options),
        )

    def _take(self, models: dict[str, Any]) -> None:
        self.main, self.notice = models["main"], models["notice"]
        self.line = Text(div=models["line"])
        self.state = Text(div=models["state"])

    def _wire(self, models: dict[str, Any]) -> None:
        self.picker, self.span, self.range = models["picker"], models["span"], models["range"]
        self.picker.on_change("value", self._picked)
        self.span.on_change("active", self._windowed)
        self.range.on_change("value", self._windowed)

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
            # Not left to the picker's on_change: inside Panel's unlocked() (a callback of
            # the session's) a change's Python callbacks are dropped with its held events.
            self._sync(list(self.picker.value))
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

    def _picked(self, _attr: str, _old: object, new: list[str]) -> None:
        if self._updating:
            return  # _apply's own change, which it syncs
        self.follow_all = set(new) >= set(self.picker.options)
        self._sync(list(new))

    def _sync(self, selected: list[str]) -> None:
        for gone in [s for s in self.views if s not in selected]:
            self.views.pop(gone).close()
        for stream in selected:
            if stream not in self.views:
                view = LiveView(stream_view(stream, self.threshold), self.parts)
                self.views[stream] = view
                if self.window is not None:
                    view.look_back(self.window)
        boxes = [self.views[s].box for s in selected if s in self.views]
        self.main.children = [self.notice, *boxes]

    def _windowed(self, _attr: str, _old: object, _new: object) -> None:
        """The viewer picked a window: every plot looks at it (or follows live again)."""
        label = list(WINDOWS)[self.span.active]
        span = WINDOWS[label]
        self.range.visible = label == "custom"
        if label == "live":
            self.window = None
        elif span is not None:
            now = pd.Timestamp.now(tz="UTC")
            self.window = (now - span, now)
        elif self.range.value:
            start, end = (
                pd.Timestamp(t).tz_localize("UTC") for t in self.range.value.split(" to ")
            )
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


class Page:
    """The dashboard as a page that opens as a copy (:class:`headrace.app.live.copied.Page`)."""

    name = "dashboard"

    def __init__(self, parts: registry.Registry | None = None) -> None:
        self.parts = parts

    def build(self) -> Dashboard:
        board = Dashboard(self.parts)
        doc = pn.state.curdoc
        assert board.layout is not None
        serve(board.layout, TITLE)
        board.rendered(doc)
        return board

    def fresh(self, record: Record) -> bool:
        """A copy shows the streams known now (else its views would all be made as it opens)."""
        parts = self.parts or registry.get()
        return record.streams == tuple(parts.subscriber.streams())

    def bind(self, doc: Document, copies: Copies, record: Record) -> Dashboard:
        return Dashboard(self.parts, (copies, record))

    def undo(self, doc: Document) -> None:
        close_views(doc)


def build(parts: registry.Registry | None = None) -> None:
    """Make the current session's document the dashboard (default: on this process's
    registry): a copy of the one the process built last for the same theme and user, or
    built. Returns None, so that as a Panel app function it leaves nothing else to render.
    """
    open_(parts)


def open_(parts: registry.Registry | None = None) -> Dashboard:
    """:func:`build`, returning the session's :class:`Dashboard`."""
    parts = parts or registry.get()
    return parts.copier.open(Page(parts)).controller


if __name__.startswith("bokeh_app"):  # run by `panel serve`, once per session
    configure_logging()
    build()
