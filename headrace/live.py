"""Live views: your own HoloViews plots of headrace streams, in your own Panel app.

Write what a plot shows as a function of a stream's rows (a :class:`pandas.DataFrame`
with ``time`` and the stream's columns) that returns HoloViews elements, overlays or
layouts; :func:`view` makes it a Panel component that updates live::

    import holoviews as hv
    import panel as pn

    from headrace import live

    def alpha(rows):
        spikes = rows[rows["value"] > 0.3]
        return hv.Curve(rows, "time", "value") * hv.Scatter(spikes, "time", "value")

    pn.Column(live.view(alpha, rows="alpha")).servable()

and ``headrace serve my_dashboard.py`` serves it. The function runs once per Panel
process per tick on the new rows (never once per viewer), the plot is rendered once per
process, and each viewer's copy is fed the rows in one message encoded for all of them.
A page whose Python behaviour is its live views opens at the cost of a copy when served
with :func:`page` instead of ``.servable()``::

    live.page(lambda: pn.Column(live.view(alpha, rows="alpha")))

See ``docs/views.md``.
"""

from headrace.app.views.declare import Rows, View, rows, view
from headrace.app.views.page import page
from headrace.app.views.tree import ViewError

__all__ = ["Rows", "View", "ViewError", "page", "rows", "view"]
