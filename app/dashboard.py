"""The viewer's dashboard: ``panel serve app/dashboard.py`` serves it at ``/dashboard``.

Per session it builds a stream picker, one live plot per picked stream and a freshness
line per stream. Everything it shows comes from the process's subscriber and fan-out,
so a session costs a HoloViews render when it opens and a ``cds.stream`` per update:
no cluster access, no computation of its own.

The scheduler comes from ``DASK_SCHEDULER_ADDRESS`` (``headrace serve`` sets it) or
dask's ``scheduler-address`` config, else ``tcp://127.0.0.1:8786``; the window from
``HEADRACE_WINDOW`` (seconds, default 600).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

try:
    import app  # noqa: F401
except ImportError:  # a checkout that was not pip-installed: serve it from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import panel as pn
from bokeh.document import Document

from app import freshness
from app.fanout import Fanout, Sink, get_fanout
from app.plots import live_plot
from app.subscriber import Subscriber, configure_logging, get_subscriber

TITLE = "headrace"
REFRESH_MS = 1000


class StreamView:
    """One stream in one session: its plot, its sink in the fan-out and its freshness line."""

    def __init__(self, stream: str, fanout: Fanout, doc: Document) -> None:
        self.stream = stream
        self.subscriber: Subscriber = fanout.subscriber
        self.fanout = fanout
        # Rendered empty (cheap); register() fills the source with the window atomically.
        self.plot = live_plot(stream, _empty(self.subscriber.columns(stream)))
        self.sink: Sink = fanout.register(stream, doc, self.plot.source)
        self.status = pn.pane.HTML(self._status_html(), margin=(0, 10), sizing_mode="stretch_width")
        self.panel = pn.Column(
            self.status,
            pn.pane.Bokeh(self.plot.figure, sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )

    def _status_html(self) -> str:
        text = freshness.describe(*self.subscriber.freshness(self.stream))
        color = "#2e7d32" if freshness.is_live(text) else "#b26a00"
        return f'<b>{self.stream}</b> &nbsp;<span style="color:{color}">{text}</span>'

    def refresh(self) -> None:
        html = self._status_html()
        if html != self.status.object:  # unchanged text would still cost a message
            self.status.object = html

    def close(self) -> None:
        self.fanout.unregister(self.sink)


def _empty(names: list[str]) -> dict[str, np.ndarray]:
    return {n: np.array([], dtype="datetime64[ns]" if n == "time" else "float64") for n in names}


def build(subscriber: Subscriber | None = None) -> pn.viewable.Viewable:
    """One session's dashboard. Call while the session's document is current."""
    subscriber = subscriber or get_subscriber()
    fanout = get_fanout(subscriber)
    doc = pn.state.curdoc
    fanout.open_session(doc)
    views: dict[str, StreamView] = {}
    names = subscriber.streams()
    picker = pn.widgets.MultiChoice(
        label="Streams",
        options=names,
        value=list(names),
        placeholder="pick streams",
        sizing_mode="stretch_width",
    )
    plots = pn.Column(sizing_mode="stretch_width")
    status = pn.pane.HTML(_status(subscriber, names), sizing_mode="stretch_width", margin=(0, 10))
    # Until the viewer picks, newly published streams are shown as they appear.
    follow_all = {"on": True, "updating": False}

    def sync(event=None) -> None:
        if event is not None and not follow_all["updating"]:
            follow_all["on"] = set(picker.value) >= set(picker.options)
        selected = list(picker.value)
        for gone in [s for s in views if s not in selected]:
            views.pop(gone).close()
        for stream in selected:
            if stream not in views:
                views[stream] = StreamView(stream, fanout, doc)
        plots.objects = [views[s].panel for s in selected]

    def refresh() -> None:
        known = subscriber.streams()
        if known != list(picker.options):
            follow_all["updating"] = True
            try:
                picker.options = known
                if follow_all["on"]:
                    picker.value = list(known)
            finally:
                follow_all["updating"] = False
        for view in views.values():
            view.refresh()
        text = _status(subscriber, known)
        if text != status.object:
            status.object = text

    def destroyed(_context) -> None:
        # The fan-out drops the sinks itself; this only lets go of the views.
        views.clear()

    def start() -> None:
        refresh()
        pn.state.add_periodic_callback(refresh, period=REFRESH_MS)

    picker.param.watch(sync, "value")
    sync()  # streams known now go into the document the browser first receives
    # Changes made after the browser connected but before it reported the document ready
    # are dropped by Panel, so the periodic refresh (which adds streams) starts on load.
    pn.state.onload(start)
    pn.state.on_session_destroyed(destroyed)
    header = pn.pane.Markdown(
        f"# {TITLE}\nLive streams, computed once on the Dask cluster and streamed to every "
        "viewer. Drag or wheel to look back, double-click (or reset) to follow the newest data.",
        sizing_mode="stretch_width",
    )
    return pn.Column(
        header, status, picker, plots, sizing_mode="stretch_width", tags=[f"pid:{os.getpid()}"]
    )


def _status(subscriber: Subscriber, streams: list[str]) -> str:
    if not subscriber.connected.is_set():
        return f"<i>connecting to the Dask scheduler at {subscriber.address}…</i>"
    if not streams:
        return f"<i>no streams published on {subscriber.address} yet</i>"
    return f"<small>scheduler {subscriber.address} · {len(streams)} streams</small>"


if __name__.startswith("bokeh_app"):  # run by `panel serve`, once per session
    configure_logging()
    build().servable(title=TITLE)
