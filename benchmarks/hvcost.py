"""HoloViews cost: server CPU per update per session, three ways of streaming 5 rows.

(a) headrace's plot (declared in HoloViews, rendered once, then ``cds.stream`` into the
rendered source), (b) a raw Bokeh ``figure().line`` + ``cds.stream``, (c) HoloViews'
own streaming, ``hv.streams.Buffer`` + ``DynamicMap``. Each sits in a Bokeh Document
whose change listener builds the PATCH-DOC message as a server session does, so the
serialisation is in the cost. ``app.plots.measure_update_cost`` does the measuring
(thread CPU time, updates alternating between the three, median per run, median of
runs); it is the app's own helper, so the benchmark and the app agree on what is timed.
"""

from __future__ import annotations

from .common import log


def run(updates: int = 300, rows: int = 5, repeats: int = 5) -> dict:
    try:
        from app.plots import measure_update_cost
    except ImportError as exc:
        return dict(error=f"app.plots.measure_update_cost unavailable: {exc}")
    log(f"hv: {repeats} x {updates} updates of {rows} rows")
    r = measure_update_cost(updates=updates, rows=rows, repeats=repeats, buffer=True)
    out = dict(
        updates=updates,
        rows=rows,
        repeats=repeats,
        headrace_ms=r["holoviews"],
        raw_ms=r["raw"],
        buffer_ms=r.get("buffer"),
        runs=r.get("runs"),
        bytes_per_update=r.get("bytes"),
    )
    out["headrace_vs_raw"] = out["headrace_ms"] / out["raw_ms"]
    if out["buffer_ms"] is not None:
        out["buffer_vs_raw"] = out["buffer_ms"] / out["raw_ms"]
        out["buffer_vs_headrace"] = out["buffer_ms"] / out["headrace_ms"]
    log(
        f"hv: headrace {out['headrace_ms']:.3f} ms, raw {out['raw_ms']:.3f} ms, "
        f"Buffer+DynamicMap {out['buffer_ms']} ms per update"
    )
    return out
