"""The frame of every page headrace serves: a Panel template with the system's state.

One place for the look: the header carries a state badge (colour and words) and a link
to the other theme (light or dark, ``?theme=dark``), controls go in the sidebar.
Panel's Bootstrap template, not Fast or Material: those designs load their fonts from
Google, which a site without internet access cannot reach; every file of this one comes
from the Panel server.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

import panel as pn
from bokeh.models import Column, CustomJS, Div, LayoutDOM, Row, Spacer

from headrace.app.live import internals
from headrace.app.live.internals import made

if TYPE_CHECKING:
    from bokeh.document import Document

L = TypeVar("L", Column, Row)

ACCENT = "#1565c0"
# Colours that read on the blue header and on light and dark backgrounds alike.
COLOURS = {
    "ok": "#2e7d32",
    "stale": "#b26a00",
    "failing": "#c62828",
    "unknown": "#607d8b",
}


def badge(state: str, text: str) -> str:
    """A state shown by colour and in words (``state``: a key of :data:`COLOURS`)."""
    colour = COLOURS.get(state, COLOURS["unknown"])
    return (
        f'<span class="hr-badge" style="background:{colour};color:#fff;padding:2px 10px;'
        f'border-radius:10px;font-weight:600">{html.escape(text)}</span>'
    )


def div(text: str, **props: object) -> Div:
    """A Bokeh Div (made as a copy: :func:`~headrace.app.live.internals.made`)."""
    return made(Div, text=text, **props)


_div = div  # for Text, whose ``div`` argument hides it


def column(*children: LayoutDOM, **props: object) -> Column:
    """A Bokeh column of ``children`` (made as a copy)."""
    return _laid_out(Column, children, props)


def row(*children: LayoutDOM, **props: object) -> Row:
    """A Bokeh row of ``children`` (made as a copy)."""
    return _laid_out(Row, children, props)


def _laid_out(kind: type[L], children: Sequence[LayoutDOM], props: dict[str, object]) -> L:
    model = made(kind, **props)
    model.children = list(children)
    return model


class Text:
    """A line of HTML on a page whose change costs one property change.

    Panel's HTML pane sends all its properties on every change, its stylesheets among
    them, and Bokeh then walks the session's whole model graph again (a status line
    changing for hundreds of viewers was most of a process's CPU). A Bokeh ``Div`` whose
    ``text`` alone changes is one small event. Make and change it in the session.
    """

    def __init__(
        self,
        html: str = "",
        margin: tuple[int, int] = (0, 10),
        div: Div | None = None,
        **kwargs: object,
    ) -> None:
        # ``div``: one made already (a copy of a built page's), whose text this changes.
        self.div = div if div is not None else _div(html, margin=margin, **kwargs)
        self._kwargs = kwargs
        self._panel: pn.pane.Bokeh | None = None

    @property
    def panel(self) -> pn.pane.Bokeh:
        """The line as a Panel component (made when first asked for: a line inside
        another Bokeh layout needs only :attr:`div`)."""
        if self._panel is None:
            self._panel = pn.pane.Bokeh(self.div, margin=0, **self._kwargs)
        return self._panel

    @property
    def html(self) -> str:
        return self.div.text

    @html.setter
    def html(self, html: str) -> None:
        if html != self.div.text:  # the same text would still cost every viewer a message
            self.div.text = html

    def __panel__(self) -> pn.pane.Bokeh:
        return self.panel


# Bootstrap's alerts, as Panel's Alert pane shows them: (text, background, border).
ALERTS = {
    "danger": ("#58151c", "#f8d7da", "#f1aeb5"),
    "warning": ("#664d03", "#fff3cd", "#ffe69c"),
}


def alert(kind: str) -> Div:
    """A hidden alert box (``kind``: a key of :data:`ALERTS`) whose ``text`` and
    ``visible`` a page sets: a Bokeh Div, to go in a Bokeh layout."""
    text, background, border = ALERTS[kind]
    styles = {
        "color": text,
        "background-color": background,
        "border": f"1px solid {border}",
        "border-radius": "6px",
        "padding": "8px 12px",
    }
    return div("", visible=False, margin=(0, 10), sizing_mode="stretch_width", styles=styles)


def dark() -> bool:
    """Whether this session asked for the dark theme (``?theme=dark``)."""
    args = pn.state.session_args or {}
    return [v.decode() for v in args.get("theme", [])][-1:] == ["dark"]


def theme_link() -> str:
    """A link to this page in the other theme (HTML)."""
    other, label = ("default", "☀ light theme") if dark() else ("dark", "☾ dark theme")
    return f'<a href="?theme={other}" style="color:#fff">{label}</a>'


def serve(template: pn.template.BaseTemplate | pn.viewable.Viewable, title: str | None) -> None:
    """Make ``template`` (or any Panel component) this session's page.

    In one freeze of the document's model graph: a template adds each of its parts as a
    root of its own, and Bokeh walks the whole graph again after each root otherwise
    (a seventh of a session's CPU).
    """
    doc = pn.state.curdoc
    prepare(doc)
    with doc.models.freeze():
        template.server_doc(doc, title=title)  # as servable() does for a served document


builds = 0  # documents this process built a headrace page in (ours or a user's)


def prepare(doc: Document) -> None:
    """What every page headrace serves needs, ours or a user's (once per document)."""
    global builds
    if doc.template_variables.get("headrace"):
        return
    doc.template_variables["headrace"] = True
    builds += 1
    # What makes every page cheaper (serialisation, GETs, validation), and the note a
    # refused page shows.
    internals.install(head=f"<script>{REFUSED}</script>")
    # Panel points its stylesheets at this server only once it renders the HTML page; with
    # --num-procs the websocket (and so the session's document) may be another process's,
    # whose document would then point them at cdn.holoviz.org.
    doc.template_variables.setdefault("dist_url", local_dist())
    doc.js_on_event("connection_lost", CustomJS(code=RELOAD_WHEN_BACK))


# The page's websocket is gone (its Panel process died, the server restarted, a network
# cut): say so, wait until the server answers, and load the page again, which opens a new
# session on whichever process takes it. Not Bokeh's own reconnection (Panel's
# ``config.reconnect``): in Bokeh 3.9 it pulls the document again without its binary
# buffers and fails on every plot (bokeh/bokeh#15347). The server is asked for a static
# file, which costs no session; the jitter spreads a crowd of pages reloading at once.
RELOAD_WHEN_BACK = """
if (window.headraceReloading) { return }
window.headraceReloading = true
const note = document.createElement("div")
note.textContent = "DISCONNECTED: the connection to the server was lost; reconnecting…"
note.setAttribute("role", "status")
note.style.cssText = "position:fixed;top:0;left:0;right:0;z-index:10000;padding:8px 16px;" +
  "background:FAILING;color:#fff;font:600 14px sans-serif;text-align:center"
document.body.appendChild(note)
const script = document.querySelector("script[src*='static/js/bokeh']")
const probe = script ? script.src : window.location.href
const retry = () => fetch(probe, {method: "HEAD", cache: "no-store"})
  .then((r) => r.ok ? window.location.reload() : setTimeout(retry, 1000))
  .catch(() => setTimeout(retry, 1000))
setTimeout(retry, 300 + Math.random() * 700)
""".replace("FAILING", COLOURS["failing"])


# A page whose session its Panel process refused (too many opens waiting: the websocket
# closed with 1013 and the reason before any document came) says so and loads again a
# few seconds later, spread out so that a refused crowd does not come back at once. It
# runs before BokehJS opens its websocket: in the page's <head>, put there as it is served.
REFUSED = """
(() => {
  const Native = window.WebSocket
  window.WebSocket = class extends Native {
    constructor(url, protocols) {
      super(url, protocols)
      this.addEventListener("close", (event) => {
        if (event.code !== 1013) { return }
        const note = document.createElement("div")
        note.setAttribute("role", "status")
        note.textContent = "BUSY: " + (event.reason || "this server is busy") +
          "; the page loads again in a few seconds"
        note.style.cssText = "position:fixed;top:0;left:0;right:0;z-index:10000;" +
          "padding:8px 16px;background:STALE;color:#fff;font:600 14px sans-serif;" +
          "text-align:center"
        document.body.appendChild(note)
        setTimeout(() => window.location.reload(), 5000 + Math.random() * 5000)
      })
    }
  }
})()
""".replace("STALE", COLOURS["stale"])


def local_dist() -> str:
    """Where this server serves Panel's files, relative to the page (as Panel computes it)."""
    from panel.io.resources import LOCAL_DIST

    return f"{pn.state.rel_path}/{LOCAL_DIST}" if pn.state.rel_path else LOCAL_DIST


def page(
    title: str, main: Sequence[object], sidebar: Sequence[object], state: Text
) -> pn.template.BaseTemplate:
    """A served page: ``state`` in the header (with the other theme's link), ``sidebar``
    and ``main`` as they are.

    The header is one Bokeh row in one Panel component: every Panel component costs each
    session's build 1.5-3 ms, and every part of a template (each of ``sidebar`` and
    ``main``) as much again as a root of its own, so a page gives it few.
    """
    link = div(theme_link(), margin=(14, 10))
    spacer = made(Spacer, sizing_mode="stretch_width")
    header = row(state.div, spacer, link, sizing_mode="stretch_width")
    return pn.template.BootstrapTemplate(
        title=title,
        header=[pn.pane.Bokeh(header, sizing_mode="stretch_width", margin=0)],
        sidebar=list(sidebar),
        main=list(main),
        header_background=ACCENT,
        sidebar_width=300,
        theme="dark" if dark() else "default",
    )
