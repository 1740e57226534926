"""Live views: a session's server CPU per tick, the view's calls per tick, an open's cost.

One process runs a real Panel server (threaded) with three apps and raw Bokeh-protocol
viewers (:mod:`benchmarks.viewer`, on this thread's loop) connect to them:

- ``view``: a user's app, a 3-glyph overlay (line, spike markers, rolling mean) declared
  with ``headrace.live.view`` (:func:`overlay`): its function is called once per tick
  for the process, and the fan-out sends every session one message encoded once;
- ``raw``: the same three series computed once per tick for the process (numpy/pandas in
  a subscriber listener, datetimes converted to Bokeh's float ms once too) and streamed
  by every session with ``cds.stream(batch, rollover)`` into its own three sources, in
  its own document's next-tick callback: Bokeh's normal per-session path;
- ``dashboard``: headrace's own page (``dashboard.build(parts)``: built once, then
  copies), for the open cost.

Each app reads a subscriber of its own (nothing connects it; rows go in through
``Subscriber.ingest`` on the server's loop), so a phase's CPU holds only its own app's
work. Every subscriber starts with a full window (600 s of rows 25 ms apart).

**Per tick**: for each repeat, ``view`` and ``raw`` in turn (who goes first alternates),
N viewers open, warm up, then T ticks of 8 rows (25 ms apart) are published every
``interval`` s; the server thread's CPU time (``time.thread_time`` read on its loop; it
does all session work) from before the first tick until every viewer has the last
tick's rows, divided by T and N, is the figure; medians of the repeats are reported.
It includes the process's part (ingest, the view's call or the raw series, encoding)
shared by the N sessions. The view's function calls during the T ticks are counted.
Between phases it waits out Panel's ``gc.collect()`` (5 s after a session goes).

**Open**: one viewer at a time (the previous one closed and its session gone), the server
thread's CPU from before the page's ``GET`` until the viewer's first live row; one tick
is published once the session's document is ready, so the figure includes that tick's
processing (the same for both apps). One unmeasured open per app first; medians.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from .common import HOST, free_port, log, wait_port

STREAM, THRESHOLD = "s", 0.5
ROWS, STEP_NS = 8, 25_000_000  # rows per tick, 25 ms apart
WINDOW_S = 600.0
WARMUP = 5  # ticks before measuring


def overlay(rows: pd.DataFrame) -> Any:
    """The user's view: the values, markers on those above the threshold, a rolling mean."""
    import holoviews as hv

    above = rows[rows["value"] > THRESHOLD]
    mean = rows.assign(value=rows["value"].rolling(4, min_periods=1).mean())
    return (
        hv.Curve(rows, "time", "value")
        * hv.Scatter(above, "time", "value")
        * hv.Curve(mean, "time", "value")
    )


def series(columns: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """:func:`overlay`'s three series with numpy/pandas, times as Bokeh's float ms."""
    from bokeh.util.serialization import convert_datetime_array

    times = convert_datetime_array(columns["time"])
    values = np.asarray(columns["value"], dtype=float)
    above = values > THRESHOLD
    mean = pd.Series(values).rolling(4, min_periods=1).mean().to_numpy()
    return [
        {"time": times, "value": values},
        {"time": times[above], "value": values[above]},
        {"time": times, "value": mean},
    ]


def run(
    sessions: int = 20,
    ticks: int = 100,
    repeats: int = 3,
    opens: int = 6,
    interval: float = 0.2,
) -> dict:
    try:
        import panel as pn  # noqa: F401

        from headrace import live
        from headrace.app.pages.dashboard import Dashboard  # noqa: F401
        from headrace.app.views.component import LiveView  # noqa: F401
        from headrace.app.views.engine import engines  # noqa: F401
    except ImportError as exc:
        return dict(error=f"headrace live views unavailable: {exc}")
    log(f"hv: {repeats} x {ticks} ticks to {sessions} sessions of each app, {opens} opens")
    bench = Bench(live.view(overlay, rows=STREAM, name="hvcost/overlay"), sessions, interval)
    try:
        return asyncio.run(bench.main(ticks, repeats, opens))
    finally:
        bench.stop()


class Raw:
    """The raw app in this process: series computed once per tick, streamed per session."""

    def __init__(self, subscriber: Any) -> None:
        self.subscriber = subscriber
        self.sessions: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()
        self.computes = 0
        self.rollover = 0  # the stream's window, in rows (set when a session opens)
        subscriber.add_listener(self._on_rows)

    def page(self, doc: Any) -> Any:
        import panel as pn
        from bokeh.models import ColumnDataSource
        from bokeh.plotting import figure

        with self.subscriber.lock:
            snap = self.subscriber.snapshot(STREAM)
            self.rollover = snap.capacity
            sources = [ColumnDataSource(data) for data in series(snap.columns)]
            self.sessions[doc] = sources
        fig = figure(x_axis_type="datetime", height=260, sizing_mode="stretch_width")
        fig.line("time", "value", source=sources[0])
        fig.scatter("time", "value", source=sources[1], color="#c62828", size=6)
        fig.line("time", "value", source=sources[2], color="#2ca02c")
        return pn.pane.Bokeh(fig, sizing_mode="stretch_width")

    def _on_rows(self, stream: str, rows: dict[str, np.ndarray], first: int) -> None:
        if stream != STREAM:
            return
        batches = series(rows)  # once for the process
        self.computes += 1
        for doc, sources in list(self.sessions.items()):
            doc.add_next_tick_callback(partial(_push, sources, batches, self.rollover))


def _push(sources: list[Any], batches: list[dict[str, np.ndarray]], rollover: int) -> None:
    for cds, batch in zip(sources, batches, strict=True):
        if len(batch["time"]):
            cds.stream(batch, rollover)


class Bench:
    """The server, the three apps' subscribers and the rows fed to them."""

    def __init__(self, view: Any, n: int, interval: float) -> None:
        import panel as pn

        from headrace.app import registry
        from headrace.app.live.subscriber import Subscriber
        from headrace.app.pages import dashboard
        from headrace.app.views.component import LiveView
        from headrace.app.views.history import HistoryCache

        self.view, self.n, self.interval = view, n, interval
        self.rng = np.random.default_rng(0)
        self.newest = time.time_ns() - int(WINDOW_S * 1e9)
        self.seqs: dict[int, int] = {}

        def subscriber() -> Subscriber:
            sub = Subscriber("tcp://127.0.0.1:1", window=WINDOW_S)
            sub.ingest(STREAM, self._seq(sub), self.frame(int(WINDOW_S * 1e9 // STEP_NS)))
            return sub  # a full window of rows before anyone opens a page

        self.parts = registry.reset(subscriber(), HistoryCache(None))
        self.dash = registry.Registry.around(subscriber(), HistoryCache(None))
        # Every open builds its session while measured: none prepared ahead.
        self.parts.prepared.size = self.dash.prepared.size = 0
        self.raw = Raw(subscriber())
        self.subs = {"view": self.parts.subscriber, "raw": self.raw.subscriber}
        self.subs["dashboard"] = self.dash.subscriber
        self.fanouts = {"view": self.parts.fanout, "dashboard": self.dash.fanout}
        self.live = {"view": 0, "raw": 0, "dashboard": 0}  # sessions not destroyed yet
        self.docs: dict[str, list[weakref.ref]] = {"view": [], "raw": [], "dashboard": []}

        def session(app: str, build: Callable[[Any], Any]) -> Callable[[], Any]:
            def page() -> Any:
                doc = pn.state.curdoc
                self.live[app] += 1
                self.docs[app].append(weakref.ref(doc))
                doc.on_session_destroyed(lambda _context: self._gone(app))
                return build(doc)

            return page

        apps = {
            "view": session("view", lambda _doc: pn.Column(LiveView(view, self.parts).panel)),
            "raw": session("raw", self.raw.page),
            "dashboard": session("dashboard", lambda _doc: dashboard.build(self.dash)),
        }
        self.port = free_port()
        self.server = pn.serve(
            apps,
            port=self.port,
            address=HOST,
            show=False,
            threaded=True,
            verbose=False,
            check_unused_sessions_milliseconds=500,
            unused_session_lifetime_milliseconds=1000,
        )
        wait_port(self.port, 30)
        self.loop = self.server.asyncio_loop

    def _gone(self, app: str) -> None:
        self.live[app] -= 1

    def stop(self) -> None:
        from headrace.app import registry

        self.server.stop()
        registry.reset()

    # -- rows ---------------------------------------------------------------------------------

    def _seq(self, sub: Any) -> int:
        self.seqs[id(sub)] = self.seqs.get(id(sub), 0) + 1
        return self.seqs[id(sub)]

    def frame(self, n: int = ROWS) -> pd.DataFrame:
        """``n`` rows 25 ms apart after the last ones, the newest at the wall clock or later."""
        first = max(time.time_ns() - (n - 1) * STEP_NS, self.newest + STEP_NS)
        ns = first + STEP_NS * np.arange(n, dtype=np.int64)
        self.newest = int(ns[-1])
        return pd.DataFrame({"time": pd.to_datetime(ns, utc=True), "value": self.rng.random(n)})

    async def publish(self, app: str) -> None:
        sub = self.subs[app]
        await self.on_loop(sub.ingest, STREAM, self._seq(sub), self.frame())

    async def on_loop(self, function: Callable[..., Any], *args: Any) -> Any:
        async def call() -> Any:
            return function(*args)

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(), self.loop))

    async def cpu(self) -> float:
        """The server thread's CPU seconds so far."""
        return await self.on_loop(time.thread_time)

    def url(self, app: str) -> str:
        return f"http://{HOST}:{self.port}/{app}"

    def ready(self, app: str) -> bool:
        """Every session of ``app`` opened so far has its document loaded (fan-out gates)."""
        fanout = self.fanouts.get(app)
        docs = [d for d in (ref() for ref in self.docs[app]) if d is not None]
        return fanout is None or all(fanout.session_ready(d) for d in docs)

    def engine(self) -> Any:
        from headrace.app.views.engine import engines

        return next(e for e in engines(self.parts.fanout) if e.name == self.view.name)

    # -- the phases -----------------------------------------------------------------------------

    async def main(self, ticks: int, repeats: int, opens: int) -> dict:
        from panel.io import document

        runs: dict[str, list[dict]] = {"view": [], "raw": []}
        phases = [a for r in range(repeats) for a in (("view", "raw"), ("raw", "view"))[r % 2]]
        for i, app in enumerate(phases):
            if i:  # Panel collects garbage (0.2 s) 5 s after the last session went: not here
                await asyncio.sleep(getattr(document, "GC_DEBOUNCE", 5) + 0.5)
            runs[app].append(await self.ticks(app, ticks))
            ms = runs[app][-1]["ms"]
            log(f"hv: repeat {i // 2 + 1} {app}: {ms:.3f} ms per tick per session")
        open_ms = await self.opens(opens)
        view_ms = statistics.median(x["ms"] for x in runs["view"])
        raw_ms = statistics.median(x["ms"] for x in runs["raw"])
        calls = [x["calls"] for x in runs["view"]]
        out = dict(
            sessions=self.n,
            ticks=ticks,
            rows=ROWS,
            repeats=repeats,
            interval=self.interval,
            view_ms=view_ms,
            raw_ms=raw_ms,
            view_vs_raw=view_ms / raw_ms,
            derived_calls=calls[0] if len(set(calls)) == 1 else calls,
            raw_computes=[x["calls"] for x in runs["raw"]],
            viewer_rows={a: min(x["rows"] for x in v) for a, v in runs.items()},
            bytes_per_tick={a: statistics.median(x["bytes"] for x in v) for a, v in runs.items()},
            messages_per_tick={a: statistics.median(x["msgs"] for x in v) for a, v in runs.items()},
            encodes_per_tick=statistics.median(x["encodes"] for x in runs["view"]),
            open_ms=open_ms,
            runs={a: [round(x["ms"], 4) for x in v] for a, v in runs.items()},
            unit="server-thread ms CPU per tick per session; per open",
        )
        log(
            f"hv: view {view_ms:.3f} ms, raw {raw_ms:.3f} ms per tick per session "
            f"({out['view_vs_raw']:.2f}x); calls {out['derived_calls']} for {ticks} ticks; "
            f"open view {open_ms['view']:.0f} ms, dashboard {open_ms['dashboard']:.0f} ms"
        )
        return out

    async def ticks(self, app: str, ticks: int) -> dict:
        """Open N viewers of ``app``, warm up, publish ``ticks`` ticks: CPU and counts."""
        from .viewer import open_viewer

        self.docs[app] = []
        viewers = [await open_viewer(self.url(app)) for _ in range(self.n)]
        try:
            await until(lambda: all(v._ready_sent for v in viewers), 60, "documents pulled")
            await until(lambda: self.ready(app), 30, "documents ready")
            for _ in range(WARMUP):
                await self.publish(app)
                await asyncio.sleep(self.interval)
            await until(lambda: all(_has(v, self.newest) for v in viewers), 30, "first rows")
            marks = [(v.rows.streamed, v.rows.bytes, v.rows.messages) for v in viewers]
            engine = self.engine() if app == "view" else None
            calls0 = engine.calls.count if engine else self.raw.computes
            encodes0 = self.parts.fanout.info()["encodes"]
            cpu0 = await self.cpu()
            due = time.monotonic()
            for _ in range(ticks):
                await self.publish(app)
                due += self.interval
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            await until(lambda: all(_has(v, self.newest) for v in viewers), 60, "the last rows")
            cpu1 = await self.cpu()
            if engine is not None and engine.error:
                raise RuntimeError(engine.error)
            calls = (engine.calls.count if engine else self.raw.computes) - calls0
            got = [
                (v.rows.streamed - s, (v.rows.bytes - b) / ticks, (v.rows.messages - m) / ticks)
                for v, (s, b, m) in zip(viewers, marks, strict=True)
            ]
            return dict(
                ms=(cpu1 - cpu0) * 1000 / ticks / self.n,
                calls=calls,
                rows=min(g[0] for g in got),
                bytes=statistics.median(g[1] for g in got),
                msgs=statistics.median(g[2] for g in got),
                encodes=(self.parts.fanout.info()["encodes"] - encodes0) / ticks,
            )
        finally:
            for v in viewers:
                v.close()
            await until(lambda: self.live[app] == 0, 30, f"{app} sessions gone")

    async def opens(self, opens: int) -> dict[str, float]:
        """Median server-thread CPU ms from a page's GET to its first live row, per app."""
        costs: dict[str, list[float]] = {"view": [], "dashboard": []}
        for i in range(opens + 1):
            for app in ("view", "dashboard") if i % 2 == 0 else ("dashboard", "view"):
                ms = await self.open(app)
                if i:  # the first of each: warm-up (the dashboard's view renders then)
                    costs[app].append(ms)
        return {app: statistics.median(v) for app, v in costs.items()}

    async def open(self, app: str) -> float:
        from .viewer import open_viewer

        self.docs[app] = []
        cpu0 = await self.cpu()
        viewer = await open_viewer(self.url(app))
        try:
            await until(lambda: viewer._ready_sent and self.ready(app), 30, "document ready")
            for _ in range(5):  # one tick, unless its rows went before the sinks were ready
                await self.publish(app)
                try:
                    await until(lambda: viewer.rows.streamed > 0, 2, "first live row")
                    break
                except TimeoutError:
                    continue
            else:
                raise TimeoutError(f"{app}: no live row after 5 ticks")
            return (await self.cpu() - cpu0) * 1000
        finally:
            viewer.close()
            await until(lambda: self.live[app] == 0, 30, f"{app} session gone")


def _has(viewer: Any, newest_ns: int) -> bool:
    """Whether ``viewer`` got the row at ``newest_ns`` (on the two sources that get all rows)."""
    newest_ms = newest_ns / 1e6 - 1
    return sum(bool(c) and c[-1][-1] >= newest_ms for c in viewer.rows.times.values()) >= 2


async def until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"hv: timed out waiting for {what}")
        await asyncio.sleep(0.01)
