"""A stream's live line, a threshold, and a marker on every row above it.

Serve it with ``headrace serve examples/spikes.py`` (the demo's streams are named
alpha, beta, gamma and pumps) and open http://localhost:5006/spikes.
"""

import holoviews as hv
import panel as pn

from headrace import live

STREAM, THRESHOLD = "alpha", 0.3


def spikes(rows):
    """Called once per Panel process per tick, with the rows that just arrived."""
    above = rows[rows["value"] > THRESHOLD]
    return (
        hv.Curve(rows, "time", "value", label="value").opts(color="#1f77b4")
        * hv.HLine(THRESHOLD).opts(color="#c62828", line_dash="dashed", line_width=1)
        * hv.Scatter(above, "time", "value", label="spike").opts(
            color="#c62828", size=9, marker="triangle"
        )
    ).opts(responsive=True, height=360, show_grid=True, legend_position="top_left")


# Built once per Panel process and copied for each viewer (its only behaviour is the view).
live.page(
    lambda: pn.template.BootstrapTemplate(
        title=f"{STREAM}: spikes above {THRESHOLD}",
        main=[live.view(spikes, rows=STREAM)],
    )
)
