"""The dashboard's plot of a stream, declared with the live-view API like any user's plot.

One line per stream, or one per key with a legend when the stream's rows carry a key
(colours fixed per key), and a marker on every row above the spike threshold
(``HEADRACE_SPIKES``). The x-axis follows the newest data until the viewer pans or
zooms; a double-click, or the reset tool, follows again.
"""

from __future__ import annotations

from typing import Any

from headrace.app.views.declare import Rows, View
from headrace.etl.contract.frames import KEY, TIME, VALUE

TOOLS = ["xpan", "xwheel_zoom", "box_zoom", "reset", "save", "hover"]
COLOR, SPIKE = "#1f77b4", "#c62828"
OPTIONS: dict[str, Any] = dict(
    responsive=True,
    height=260,
    default_tools=[],
    tools=TOOLS,
    active_tools=["xpan", "xwheel_zoom"],
    xlabel="",
    ylabel="value",
    show_grid=True,
    toolbar="right",
)


def lines(rows: Any) -> Any:
    """``value`` over ``time``: one line, or one per key."""
    import holoviews as hv

    if KEY in rows.columns:
        # What Dataset(...).to(hv.Curve).overlay("key") makes, at a third of the cost.
        curves = {
            key: hv.Curve(part, TIME, VALUE, label=str(key)).opts(line_width=1.2)
            for key, part in rows.groupby(KEY, sort=True)
        }
        return hv.NdOverlay(curves, kdims=[KEY]).opts(legend_position="top_left", **OPTIONS)
    return hv.Curve(rows, TIME, VALUE).opts(line_width=1.2, color=COLOR, **OPTIONS)


def stream_view(stream: str, threshold: float | None = None) -> View:
    """The dashboard's view of ``stream`` (spike markers above ``threshold``, if given)."""

    def plot(rows: Any) -> Any:
        import holoviews as hv

        drawn = lines(rows)
        if threshold is None:
            return drawn
        above = rows[rows[VALUE] > threshold]
        spikes = hv.Scatter(above, TIME, VALUE, label=f"> {threshold:g}").opts(
            color=SPIKE, size=8, marker="triangle", **OPTIONS
        )
        return (drawn * spikes).opts(legend_position="top_left")

    return View(plot, {"rows": Rows(stream)}, name=f"dashboard/{stream}/spikes>{threshold}")
