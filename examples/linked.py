"""Two streams on linked time axes, in a Panel template, with widgets of each viewer's own.

Panning or zooming one plot moves the other. The widgets act on this viewer's copy
only, in the browser: how much time the plots show, and a threshold line. Serve it
with ``headrace serve examples/linked.py`` and open http://localhost:5006/linked.
"""

import holoviews as hv
import panel as pn
from bokeh.models import DataRange1d, Span

from headrace import live


def both(alpha, beta):
    options = dict(responsive=True, height=280, show_grid=True)
    return (
        hv.Curve(alpha, "time", "value", label="alpha").opts(color="#1f77b4", **options)
        * hv.HLine(0.3).opts(color="#c62828", line_dash="dashed")
        + hv.Curve(beta, "time", "value", label="beta").opts(color="#2ca02c", **options)
        * hv.HLine(0.3).opts(color="#c62828", line_dash="dashed")
    ).cols(1)


def layout():
    session = live.view(both, alpha="alpha", beta="beta").session()  # this page's copy
    seconds = pn.widgets.IntSlider(name="seconds shown", start=10, end=300, step=10, value=60)
    threshold = pn.widgets.FloatSlider(
        name="threshold line", start=0.0, end=1.0, step=0.05, value=0.3
    )
    # In the browser: the server is not asked, whatever the number of viewers. (The
    # models are this page's; a view whose streams have no rows yet has none.)
    ranges = [r for r in session.models(DataRange1d) if r.follow == "end"]
    seconds.jscallback(
        value="for (const r of ranges) { r.follow_interval = cb_obj.value * 1000 }",
        args={"ranges": ranges},
    )
    threshold.jscallback(
        value="for (const s of spans) { s.location = cb_obj.value }",
        args={"spans": session.models(Span)},
    )
    return pn.template.BootstrapTemplate(
        title="alpha and beta, linked",
        sidebar=[seconds, threshold],
        main=[session],
    )


# Built once per Panel process and copied for each viewer, the widgets' callbacks with it:
# they act in the browser, on that viewer's copy of the plots.
live.page(layout)
