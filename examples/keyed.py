"""A keyed stream drawn one line per key, with a histogram of its last minute beside it.

The demo's ``pumps`` stream carries three series in one file (a key per line).
Serve it with ``headrace serve examples/keyed.py`` and open http://localhost:5006/keyed.
"""

import holoviews as hv
import numpy as np
import panel as pn

from headrace import live

STREAM = "pumps"
BINS = np.linspace(0.0, 1.0, 41)


def per_key(rows, recent):
    """``rows``: each tick's new rows (appended); ``recent``: the last minute (replaced)."""
    lines = hv.NdOverlay(
        {key: hv.Curve(part, "time", "value") for key, part in rows.groupby("key")},
        kdims="key",
    ).opts(responsive=True, height=360, legend_position="top_left", show_grid=True)
    counts = hv.NdOverlay(
        {
            key: hv.Histogram(np.histogram(part["value"], BINS), kdims="value")
            for key, part in recent.groupby("key")
        },
        kdims="key",
    ).opts(hv.opts.Histogram(alpha=0.5, responsive=True, height=360, xlabel="value (last 60 s)"))
    return lines + counts


def layout():
    view = live.view(per_key, rows=STREAM, recent=live.rows(STREAM).last("60s"))
    return pn.template.BootstrapTemplate(title=f"{STREAM}: per key", main=[view])


live.page(layout)  # built once per Panel process, copied for each viewer
