"""The operator page: ``/ops`` beside the dashboard (``headrace serve`` serves both).

Per stream its state, freshness, throughput, malformed lines and last error; the
malformed lines with file and line; viewers per Panel process; what the cluster runs,
with links into the Dask dashboard. It refreshes itself every 2 s from the process's
:class:`headrace.app.pages.opsboard.OpsBoard`, which gathers once for every open operator page.
"""

from __future__ import annotations

import os

import panel as pn

from headrace.app import registry
from headrace.app.pages.board import Follower
from headrace.app.pages.opsboard import OpsView
from headrace.app.pages.template import Text, badge, page, serve
from headrace.app.settings import configure_logging

TITLE = "headrace · operations"


class OpsPage(Follower):
    """One operator session: panes the board's view is copied into when it changes."""

    def __init__(self, parts: registry.Registry | None = None) -> None:
        parts = parts or registry.get()
        self.board = parts.ops
        self.follow(pn.state.curdoc)

        def pane() -> pn.pane.HTML:
            return pn.pane.HTML("", sizing_mode="stretch_width")

        self.state = Text(badge("unknown", "CONNECTING"), margin=(12, 10))
        self.headline = pn.pane.HTML("", sizing_mode="stretch_width")
        self.streams, self.malformed, self.viewers, self.cluster = (pane() for _ in range(4))
        self.links = pn.pane.HTML("", sizing_mode="stretch_width")
        sidebar = [
            pn.pane.Markdown(
                "### Links\n[Live dashboard](./dashboard) · [Prometheus metrics](./metrics)"
            ),
            self.links,
            pn.pane.Markdown(
                f"Refreshes every {self.board.period_ms / 1000:g} s. Served by Panel process "
                f"{os.getpid()}. `headrace status` prints the same per stream."
            ),
        ]
        main = [
            self.headline,
            pn.Card(self.streams, title="Streams", sizing_mode="stretch_width"),
            pn.Card(self.malformed, title="Newest malformed lines", sizing_mode="stretch_width"),
            pn.Card(self.viewers, title="Viewers per Panel process", sizing_mode="stretch_width"),
            pn.Card(self.cluster, title="Cluster", sizing_mode="stretch_width"),
        ]
        self.template = page(TITLE, main, sidebar, self.state)
        self._apply(self.board.latest)  # what the board has now, in the first document
        pn.state.onload(lambda: self.board.add(self))
        pn.state.on_session_destroyed(lambda _ctx: self.board.remove(self))

    def _apply(self, view: OpsView) -> None:
        self.state.html = badge(view.state, view.state.upper())
        self.headline.object = f"<h4>{badge(view.state, view.headline)}</h4>"
        self.streams.object = view.streams
        self.malformed.object = view.malformed
        self.viewers.object = view.viewers
        self.cluster.object = view.cluster
        if view.dashboard:
            self.links.object = f'<a href="{view.dashboard}" target="_blank">Dask dashboard</a>'


if __name__.startswith("bokeh_app"):  # run by `panel serve`, once per session
    configure_logging()
    serve(OpsPage().template, TITLE)
