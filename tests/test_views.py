"""Live views (``headrace.live``): HoloViews declarations drawn live, computed once per process.

The engine tests feed a real :class:`Subscriber` (its ``ingest``, as fetching does) and
read the fan-out's channels, which hold what every session's sources get; the served
test runs a user's app in a Panel server with raw Bokeh-protocol viewers.
"""

from __future__ import annotations

import asyncio

import holoviews as hv
import numpy as np
import pandas as pd
import pytest
from helpers import free_port, wait_http

from headrace import live
from headrace.app.live.channel import Replaced
from headrace.app.live.fanout import Fanout
from headrace.app.live.subscriber import Subscriber
from headrace.app.views.engine import APPEND, REPLACE, Engine
from headrace.app.views.engine import engine as engine_of

START = pd.Timestamp("2026-01-01", tz="UTC")


class Feed:
    """Ticks of 8 rows 25 ms apart into a subscriber's stream, values given or a ramp."""

    def __init__(self, subscriber: Subscriber, stream: str, keys: list[str] | None = None):
        self.subscriber, self.stream, self.keys = subscriber, stream, keys
        self.seq = self.sent = 0

    def tick(self, values: list[float] | None = None, n: int = 8) -> pd.DataFrame:
        values = list(values) if values is not None else [0.1] * n
        n = len(values)
        index = np.arange(self.sent, self.sent + n)
        frame = pd.DataFrame(
            {"time": START + pd.to_timedelta(index * 25, unit="ms"), "value": values}
        )
        if self.keys:
            frame["key"] = [self.keys[i % len(self.keys)] for i in index]
        self.sent += n
        self.seq += 1
        self.subscriber.ingest(self.stream, self.seq, frame)
        return frame


class Watcher:
    """Stands for a session showing the view: an engine nobody watches skips its ticks."""

    changes = 0
    active = True

    def changed(self) -> None:
        self.changes += 1


WATCHER = Watcher()


def engine(view, fanout: Fanout) -> Engine:
    e = engine_of(view, fanout)
    e.watch(WATCHER)
    return e


@pytest.fixture
def fanout() -> Fanout:
    return Fanout(Subscriber("tcp://127.0.0.1:1", window=600))


def overlay(rows):
    spikes = rows[rows["value"] > 0.5]
    return hv.Curve(rows, "time", "value") * hv.Scatter(spikes, "time", "value") * hv.HLine(0.5)


def test_appended_glyphs_stream_each_ticks_part_and_the_function_runs_once_per_tick(fanout):
    feed = Feed(fanout.subscriber, "pump")
    feed.tick([0.1, 0.9, 0.2, 0.1])
    e = engine(live.view(overlay, rows="pump"), fanout)
    assert e.error is None and len(e.channels) == 2  # the HLine is drawn once, not fed
    assert set(e.kinds.values()) == {APPEND}
    setup = e.calls.count
    for values in ([0.1, 0.2], [0.7, 0.8, 0.1], [0.3]):
        feed.tick(values)
    assert e.calls.count - setup == 3  # once per tick, for the whole process
    line, spikes = (e.channels[p] for p in sorted(e.channels, key=str))
    for c in (line, spikes):
        c.advance()
    values = {name: c.window["value"].tolist() for name, c in (("line", line), ("spikes", spikes))}
    assert values["line"] == [0.1, 0.9, 0.2, 0.1, 0.1, 0.2, 0.7, 0.8, 0.1, 0.3]
    assert values["spikes"] == [0.9, 0.7, 0.8]
    # Times as Bokeh sends them: float ms since the epoch.
    assert line.window["time"][0] == START.value / 1e6


def test_a_window_input_replaces_what_it_draws(fanout):
    feed = Feed(fanout.subscriber, "pump")
    feed.tick([0.1] * 8)

    def histogram(recent):
        return hv.Histogram(np.histogram(recent["value"], bins=[0, 0.5, 1]))

    e = engine(live.view(histogram, recent=live.rows("pump").last("0.1s")), fanout)
    assert list(e.kinds.values()) == [REPLACE]
    feed.tick([0.9] * 8)  # the newest 0.1 s: 4 rows of 0.9
    hist = next(iter(e.channels.values()))  # flushed already: no loop runs here
    assert isinstance(hist, Replaced) and hist.end == 2  # replaced once
    assert hist.window["top"].tolist() == [0, 4]


def test_each_key_gets_a_line_of_a_stable_colour_and_new_keys_are_drawn(fanout):
    feed = Feed(fanout.subscriber, "pumps", keys=["p1", "p2"])
    feed.tick()

    def per_key(rows):
        return hv.NdOverlay({k: hv.Curve(g, "time", "value") for k, g in rows.groupby("key")})

    e = engine(live.view(per_key, rows="pumps"), fanout)
    assert sorted(e.kinds) == [(("p1",),), (("p2",),)]  # paths: the NdOverlay's keys
    first = e.version
    feed.keys = ["p1", "p2", "p3"]
    feed.tick()
    assert e.version == first + 1 and len(e.kinds) == 3

    def colour(engine_: Engine, key: str) -> str:
        return engine_.rendering.glyphs[((key,),)].renderer.glyph.line_color

    # Another process (here: another fan-out) gives each key the same colour.
    other = Fanout(Subscriber("tcp://127.0.0.1:1", window=600))
    Feed(other.subscriber, "pumps", keys=["p3", "p1"]).tick()
    e2 = engine(live.view(per_key, rows="pumps"), other)
    assert colour(e2, "p1") == colour(e, "p1") and colour(e2, "p3") == colour(e, "p3")
    assert len({colour(e, k) for k in ("p1", "p2", "p3")}) == 3


def test_a_lookback_gives_context_and_only_newer_rows_are_appended(fanout):
    feed = Feed(fanout.subscriber, "pump")
    feed.tick([1.0] * 4)

    def mean(rows):
        smooth = rows.assign(value=rows["value"].rolling(4, min_periods=1).mean())
        return hv.Curve(smooth, "time", "value")

    e = engine(live.view(mean, rows=live.rows("pump", lookback="0.1s")), fanout)
    feed.tick([3.0] * 4)
    (c,) = e.channels.values()
    c.advance()
    # Each row once, and the rolling mean over the tick's edge used the rows before it.
    assert c.window["value"].tolist() == [1.0, 1.0, 1.0, 1.0, 1.5, 2.0, 2.5, 3.0]


def test_bad_views_say_which_view_stream_and_column_and_the_others_go_on(fanout, caplog):
    feed = Feed(fanout.subscriber, "pump")
    feed.tick()
    good = engine(live.view(overlay, rows="pump"), fanout)
    missing = engine(
        live.view(lambda rows: hv.Curve(rows, "time", "pressure"), rows="pump", name="p"), fanout
    )
    assert "view p" in missing.error and "'pump'" in missing.error
    assert "pressure" in missing.error and "time, value" in missing.error

    broken = {"now": False}

    def flaky(rows):
        if broken["now"]:
            raise ZeroDivisionError("on purpose")
        return hv.Curve(rows, "time", "value")

    sometimes = engine(live.view(flaky, rows="pump", name="flaky"), fanout)
    broken["now"] = True
    for _ in range(3):
        feed.tick()
    assert "ZeroDivisionError: on purpose" in sometimes.error
    assert sum("on purpose" in r.message for r in caplog.records) == 1  # logged once
    broken["now"] = False
    feed.tick()
    assert sometimes.error is None  # back with the next good tick
    (line, _spikes) = sorted(good.channels, key=str)
    good.channels[line].advance()
    assert len(good.channels[line].window["value"]) == 8 * 5  # never interrupted


def test_a_view_nobody_watches_costs_nothing_per_tick_and_is_drawn_again_when_watched(fanout):
    feed = Feed(fanout.subscriber, "pump")
    feed.tick([0.1] * 4)
    e = engine_of(live.view(overlay, rows="pump"), fanout)  # made, then nobody watches it
    calls, version = e.calls.count, e.version
    for _ in range(5):
        feed.tick([0.9] * 4)
    assert e.calls.count == calls and e.idle
    e.watch(WATCHER)  # a session opens: drawn again from the window, rows and spikes
    assert e.version == version + 1 and not e.idle
    line, spikes = (e.channels[p] for p in sorted(e.channels, key=str))
    assert len(line.window["value"]) == 24 and len(spikes.window["value"]) == 20


def test_elements_that_cannot_stream_are_refused_as_declared_with_what_to_use(fanout):
    with pytest.raises(live.ViewError, match=r"hv.Histogram .* live.rows\('pump'\).last\("):
        live.view(lambda rows: hv.Histogram(np.histogram(rows["value"])), rows="pump", name="h")
    with pytest.raises(live.ViewError, match="DynamicMap; return elements"):
        live.view(lambda rows: hv.DynamicMap(lambda: hv.Curve([])), rows="pump", name="d")
    with pytest.raises(TypeError, match="give it a stream"):
        live.view(overlay)
    with pytest.raises(TypeError, match="input rows=3"):
        live.view(overlay, rows=3)
    # A histogram of a window and of appended rows in one element: refused when drawn.
    Feed(fanout.subscriber, "pump").tick()

    def mixed(rows, recent):
        return hv.Curve(pd.concat([rows, recent]), "time", "value")

    both = engine(live.view(mixed, rows="pump", recent=live.rows("pump").last("1s")), fanout)
    assert "from appended rows and from a window at once" in both.error


@pytest.mark.timeout(120)
def test_a_users_app_feeds_every_glyph_of_every_session_from_one_call_per_tick():
    import panel as pn

    from benchmarks.viewer import open_viewer
    from headrace.app import registry
    from headrace.app.views.component import LiveView

    subscriber = Subscriber("tcp://127.0.0.1:1", window=600)
    parts = registry.reset(subscriber)
    feed, late = Feed(subscriber, "pump"), Feed(subscriber, "late")
    view = live.view(overlay, rows="pump")
    later = live.view(lambda rows: hv.Curve(rows, "time", "value"), rows="late")
    feed.tick([0.1, 0.9])  # this stream exists before anyone opens the page; "late" not yet
    port = free_port()
    app = {
        "app": lambda: pn.template.BootstrapTemplate(
            main=[LiveView(view, parts).panel, LiveView(later, parts).panel]
        )
    }
    server = pn.serve(app, port=port, address="127.0.0.1", show=False, threaded=True)
    try:
        wait_http(port, "/static/js/bokeh.min.js", 30)
        loop = server.asyncio_loop

        async def tick(values) -> None:
            feed.tick(values)

        async def first(values) -> None:
            late.tick(values)

        async def scenario():
            viewers = [await open_viewer(f"http://127.0.0.1:{port}/app") for _ in range(5)]
            e = next(x for x in _engines(parts.fanout) if x.view.streams == ["pump"])
            before = e.calls.count
            await asyncio.sleep(0.5)
            # A stream that appears after the pages opened: its plot comes, then its rows.
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(first([7.0]), loop))
            await asyncio.sleep(1.0)  # every document ready
            for i in range(10):
                values = [0.1, 0.2, 0.95] if i % 2 else [0.3]
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(tick(values), loop))
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(first([8.0]), loop))
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            for v in viewers:
                v.close()
            return viewers, e.calls.count - before

        viewers, calls = asyncio.run(scenario())
        assert calls == 10  # five sessions, ten ticks: ten calls
        for v in viewers:
            got = {m: np.concatenate(chunks) for m, chunks in v.rows.values.items()}
            # The spikes, the late stream's line (its first row came with its plot), the line.
            assert sorted(len(x) for x in got.values()) == [5, 10, 20], got
            assert np.concatenate(list(got.values())).tolist().count(0.95) == 10
            assert np.concatenate(list(got.values())).tolist().count(8.0) == 10
    finally:
        server.stop()
        registry.reset()


def _engines(fanout: Fanout) -> list[Engine]:
    from headrace.app.views.engine import engines

    return engines(fanout)


def test_each_kind_of_element_is_fed_the_way_it_can_be():
    rows = pd.DataFrame(
        {
            "time": START + pd.to_timedelta(np.arange(40) * 25, unit="ms"),
            "value": np.r_[np.full(39, 0.1), 0.9],
        }
    )

    def kinds(rows):
        return (
            hv.Curve(rows, "time", "value")
            * hv.Curve(rows, "time", "value").opts(interpolation="steps-mid")
            * hv.Scatter(rows, "time", "value")
            * hv.Points(rows, ["time", "value"])
            * hv.Spikes(rows[rows["value"] > 0.5], "time", "value")
            * hv.Area(rows, "time", "value")
            * hv.VLine(START.tz_localize(None))
            * hv.HLine(0.5)
        )

    fed = live.view(kinds, rows="alpha").check(alpha=rows)
    assert fed == {
        "Curve.I": "append",
        "Curve.II": "append",
        "Scatter.I": "append",
        "Points.I": "append",
        "Spikes.I": "append",
        "Area.I": "redraw",  # its outline joins every row: drawn again from the window
    }


def test_a_view_renders_apart_from_the_current_document_of_a_server_session():
    # In a server process curdoc() may be a session's document, whose changes need its lock.
    from bokeh.document import Document
    from bokeh.io.doc import patch_curdoc

    from headrace.app.views.tree import render

    rows = pd.DataFrame({"time": [START], "value": [1.0]})
    page = hv.render(hv.Curve(rows, "time", "value"), backend="bokeh")  # themed models
    session_doc = Document()
    session_doc.add_root(page)
    changes = []
    session_doc.on_change(changes.append)
    with patch_curdoc(session_doc):
        rendering = render(hv.Curve(rows, "time", "value"), "curve")
    assert changes == [] and session_doc.roots == [page]
    assert rendering.glyphs, "the curve was rendered and its glyph found"


def test_headrace_serve_takes_a_users_app_instead_of_the_dashboard(tmp_path):
    from click.testing import CliRunner

    from headrace.cluster.cli import main

    app = tmp_path / "my_dashboard.py"
    app.write_text("import panel as pn\npn.pane.Markdown('hi').servable()\n")
    printed = CliRunner().invoke(main, ["serve", str(app), "--num-procs", "3", "--print-command"])
    assert printed.exit_code == 0, printed.output
    assert str(app) in printed.output and "pages/dashboard.py" not in printed.output
    assert "ops.py" in printed.output and "--num-procs 3" in printed.output
    assert "--setup" in printed.output and "--plugins headrace.app.metrics" in printed.output
    # Pages waiting for their turn show a spinner; sessions built ahead are configurable.
    assert "--reuse-sessions" in printed.output and "--global-loading-spinner" in printed.output
    prepared = CliRunner().invoke(main, ["serve", "--prepared", "4", "--print-command"])
    assert prepared.exit_code == 0 and "HEADRACE_PREPARED=4" in prepared.output, prepared.output
    wrong = CliRunner().invoke(main, ["serve", "--prepared", "-1", "--print-command"])
    assert wrong.exit_code == 2 and "--prepared" in wrong.output
    missing = CliRunner().invoke(main, ["serve", str(tmp_path / "nope.py")])
    assert (
        missing.exit_code == 2 and "no app file" in missing.output and "nope.py" in missing.output
    )


def test_a_live_view_shows_what_it_waits_for_then_its_plot_themed_as_the_page_then_its_error(
    fanout,
):
    """One Bokeh column per view (line, alert, plot), in a dark page: the plot that comes
    later is themed dark, as the plots Panel renders are; an error shows escaped."""
    import panel as pn
    from bokeh.document import Document
    from bokeh.models import Div
    from bokeh.plotting import figure
    from panel.io.state import set_curdoc

    from headrace.app import registry
    from headrace.app.views.component import LiveView

    parts = registry.reset(fanout.subscriber)
    feed = Feed(parts.subscriber, "pump")
    broken = {"now": False}

    def flaky(rows):
        if broken["now"]:
            raise ValueError("a <b>bad</b> tick")
        return hv.Curve(rows, "time", "value")

    doc = Document()
    try:
        with set_curdoc(doc):
            view = LiveView(live.view(flaky, rows="pump", name="flaky"), parts)
            pn.template.BootstrapTemplate(main=[view], theme="dark").server_doc(doc)
            line, alert, waiting = view.box.children
            assert line is view.title.div and not alert.visible
            assert "waiting for the first rows of pump" in waiting.text
            feed.tick([0.1, 0.2])
            view._show()  # what the session's next tick does
            plot = view.box.children[2]
            assert isinstance(plot, figure) and plot.document is doc
            dark = doc.theme._json["attrs"]["Plot"]["background_fill_color"]
            assert plot.background_fill_color == dark != figure().background_fill_color
            broken["now"] = True
            feed.tick([0.3])
            view._show()
            assert alert.visible and "ValueError: a &lt;b&gt;bad&lt;/b&gt; tick" in alert.text
            assert view.box.children[2] is plot  # the last good plot stays
            broken["now"] = False
            feed.tick([0.4])
            view._show()
            assert not alert.visible
            assert isinstance(line, Div) and "pump" in line.text
    finally:
        registry.reset()
