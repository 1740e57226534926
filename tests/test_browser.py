"""Headless Chromium loads /dashboard and watches the plot's data grow."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from distributed import LocalCluster
from helpers import (
    PLOT_STATE,
    TEXTS,
    Publisher,
    chromium,
    drag_back,
    headrace_serve,
    needs_chromium,
    publishing,
    shown,
    wait_for,
    wait_http,
)

pytestmark = [needs_chromium, pytest.mark.browser]


@contextlib.contextmanager
def served(
    tmp_path: Path,
    cluster_options: dict,
    streams: tuple[str, ...] = ("browser",),
    procs: int = 1,
    history: str | None = None,
) -> Iterator[tuple[int, Any]]:
    """``streams`` published on a cluster, ``headrace serve`` of them on ``procs`` Panel
    processes, and a headless Chromium: ``(port, browser)``, all stopped after."""
    from playwright.sync_api import sync_playwright

    with LocalCluster(**cluster_options) as cluster, contextlib.ExitStack() as stack:
        for name in streams:
            publisher = Publisher(name, interval=0.2)
            stack.enter_context(publishing(publisher, cluster.scheduler_address))
        log = tmp_path / "panel.log"
        serving = headrace_serve(cluster.scheduler_address, procs, log, history=history)
        proc, port = stack.enter_context(serving)
        playwright = stack.enter_context(sync_playwright())
        wait_http(port, "/static/js/bokeh.min.js", 60, proc)
        browser = chromium(playwright)
        stack.callback(browser.close)
        yield port, browser


@pytest.mark.timeout(120)
def test_dashboard_in_chromium_shows_growing_data(tmp_path, cluster_options):
    with served(tmp_path, cluster_options) as (port, browser):
        page = browser.new_page(viewport={"width": 1200, "height": 700})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
        page.goto(f"http://127.0.0.1:{port}/dashboard", wait_until="load")

        def state():
            return page.evaluate(PLOT_STATE, "browser")

        first = wait_for(
            lambda: (s := state()) and s["rows"] > 0 and s,
            60,
            "the plot's data in the browser",
        )
        # More rows, and the range has moved on with them (it follows the newest).
        second = wait_for(
            lambda: (
                (s := state())
                and s["rows"] > first["rows"]
                and s["last"] > first["last"]
                and abs(s["end"] - s["last"]) < 1000
                and s
            ),
            30,
            "the plot's data to grow, followed by its range",
        )
        page.screenshot(path=str(tmp_path / "dashboard.png"))
        text = page.evaluate(TEXTS)

        # Drag the plot back in time: the range holds still while data keeps coming...
        x, y = drag_back(page)
        panned = state()
        time.sleep(1.0)  # data keeps coming for a while; the range must not move
        held = state()
        # ... and a double-click follows the newest data again.
        page.mouse.dblclick(x, y)
        following = wait_for(
            lambda: (s := state()) and abs(s["end"] - s["last"]) < 1000 and s,
            30,
            "the range to follow the newest data again",
        )

        assert second["rows"] > first["rows"], (first, second)
        assert second["last"] > first["last"]
        # Following the newest data: the range ends at the newest row and spans the follow window.
        assert abs(second["end"] - second["last"]) < 1000, second
        assert "live," in text, text
        assert not errors, errors
        assert panned["end"] < panned["last"] and held["end"] == panned["end"], (panned, held)
        assert held["last"] > panned["last"]
        assert abs(following["end"] - following["last"]) < 1000, following


# The history line of the stream's plot: its points, highest value, and the x-range.
HISTORY_STATE = """
(stream) => {
  const doc = window.Bokeh && Bokeh.documents && Bokeh.documents[0];
  if (!doc) return null;
  for (const m of doc.all_models) {
    const past = Array.isArray(m.renderers) && m.renderers.find((r) => r.name === "history");
    if ((m.constructor.__name__ === "Figure" || m.constructor.__name__ === "Plot")
        && (m.tags || []).includes("headrace.stream:" + stream) && past) {
      const data = past.data_source.data;
      const values = data["value"];
      return {points: values.length, max: values.length ? Math.max(...values) : null,
              first: values.length ? data["time"][0] : null,
              start: m.x_range.start, end: m.x_range.end};
    }
  }
  return null;
}
"""


@pytest.mark.timeout(120)
def test_looking_back_an_hour_shows_the_spike_from_history(tmp_path, cluster_options):

    from headrace.etl.store.sink import Sink, SinkSpec, encode
    from headrace.etl.store.state import Queued

    # Half an hour of 25 ms rows in the history database, one spike among them.
    url = f"sqlite:///{tmp_path}/history.sqlite"
    now = pd.Timestamp.now(tz="UTC").floor("1s")
    times = pd.date_range(now - pd.Timedelta("30min"), now, freq="25ms", inclusive="left")
    values = np.full(len(times), 0.1)
    values[len(times) // 3] = 5.0
    frame = pd.DataFrame({"time": times, "value": values, "count": 1})
    parts = [frame.iloc[i : i + 1200] for i in range(0, len(frame), 1200)]
    Sink(SinkSpec(url)).write(
        [Queued(i, "browser", i + 1, encode(p), 0.0) for i, p in enumerate(parts)]
    )

    with served(tmp_path, cluster_options, history=url) as (port, browser):
        page = browser.new_page(viewport={"width": 1200, "height": 700})
        page.goto(f"http://127.0.0.1:{port}/dashboard", wait_until="load")
        wait_for(lambda: page.evaluate(PLOT_STATE, "browser"), 60, "the live plot")
        page.get_by_role("button", name="1 h").click()
        got = wait_for(
            lambda: (s := page.evaluate(HISTORY_STATE, "browser")) and s["points"] and s,
            30,
            "history in the plot",
        )
        page.screenshot(path=str(tmp_path / "history.png"))
        # Zoom in on the last quarter of the hour: that range is read again, finer.
        box = page.locator(".bk-Canvas").first.bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.75, box["y"] + box["height"] / 2)
        for _ in range(6):
            page.mouse.wheel(0, -300)
            time.sleep(0.05)  # a user's pace of wheel steps
        zoomed = wait_for(
            lambda: (
                (s := page.evaluate(HISTORY_STATE, "browser"))
                and s["first"] > got["first"] + 60e3
                and s
            ),
            30,
            "the zoomed range read again",
        )
    assert got["max"] == 5.0, got  # the spike survives the 2,000-point downsampling
    assert got["points"] <= 2000
    assert abs((got["end"] - got["start"]) - 3600e3) < 5e3, got  # the window is an hour
    assert zoomed["end"] - zoomed["start"] < 0.5 * 3600e3, zoomed
    assert zoomed["first"] >= zoomed["start"] - 60e3, zoomed  # the rows of the zoomed range
    log = (tmp_path / "panel.log").read_text()
    assert "history: stream browser" in log, log


DISCONNECTED = "() => document.querySelector('[role=status]')?.textContent ?? ''"


class Crowd:
    """Raw Bokeh-protocol viewers opening a page in a thread: ``watchers`` first, then
    ``joiners`` 20 ms apart once :meth:`storm` is called; all closed on :meth:`stop`."""

    def __init__(self, url: str, watchers: int, joiners: int) -> None:
        import asyncio
        import threading

        self.url, self.watchers, self.joiners = url, watchers, joiners
        self.loop = asyncio.new_event_loop()
        self.viewers: list = []
        self.watching = threading.Event()
        threading.Thread(target=self.loop.run_forever, name="crowd", daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._open(watchers, 0.0), self.loop).add_done_callback(
            lambda _: self.watching.set()
        )

    async def _open(self, n: int, spacing: float) -> None:
        import asyncio

        from benchmarks.viewer import open_viewer

        async def one() -> None:
            viewer = await open_viewer(self.url)
            self.viewers.append(viewer)
            await viewer.first_row(time.time(), 60)

        tasks = []
        for _ in range(n):
            tasks.append(asyncio.ensure_future(one()))
            await asyncio.sleep(spacing)
        await asyncio.gather(*tasks, return_exceptions=True)

    def storm(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self._open(self.joiners, 0.02), self.loop)

    def stop(self) -> None:
        import asyncio

        async def close() -> None:
            for viewer in self.viewers:
                viewer.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_page_opened_in_a_crowd_works_as_any(tmp_path, cluster_options):
    """A page opened while a crowd opens it too (3 Panel processes) gets its rows, and its
    stream picker, drag and double-click work: a session of its own, built ahead or not."""

    with served(tmp_path, cluster_options, ("alpha", "beta"), procs=3) as (port, browser):
        crowd = Crowd(f"http://127.0.0.1:{port}/dashboard", watchers=20, joiners=40)
        try:
            assert crowd.watching.wait(120), "the watchers' pages"
            crowd.storm()
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"http://127.0.0.1:{port}/dashboard", wait_until="load")

            def state(stream: str):
                return page.evaluate(PLOT_STATE, stream)

            first = wait_for(
                lambda: (s := state("alpha")) and s["rows"] > 0 and state("beta") and s,
                90,
                "both streams' plots with rows",
            )
            # The picker: take alpha away; its plot goes, beta's stays and grows.
            plots = page.locator(".bk-Canvas")
            shown_before = plots.count()
            page.locator(".choices__button").first.click()
            wait_for(lambda: plots.count() == shown_before - 1, 30, "alpha's plot to go")
            beta0 = state("beta")
            wait_for(lambda: state("beta")["last"] > beta0["last"], 30, "beta's rows")
            # Drag beta back in time: its range holds while rows come; a double-click
            # follows the newest again.
            x, y = drag_back(page)
            panned = state("beta")
            time.sleep(1.0)  # rows keep coming; the range must not move
            held = state("beta")
            page.mouse.dblclick(x, y)
            following = wait_for(
                lambda: (s := state("beta")) and abs(s["end"] - s["last"]) < 1000 and s,
                30,
                "the range to follow the newest rows again",
            )
            page.screenshot(path=str(tmp_path / "crowd.png"))
            joined = wait_for(
                lambda: (n := sum(1 for v in crowd.viewers if v.rows.streamed)) >= 60 and n,
                90,
                "every page of the crowd to get rows",
            )
        finally:
            crowd.stop()
    assert first["rows"] > 0 and shown_before == 2 and not errors, (shown_before, errors)
    assert panned["end"] < panned["last"] and held["end"] == panned["end"], (panned, held)
    assert held["last"] > panned["last"] and abs(following["end"] - following["last"]) < 1000
    assert joined == 60, joined  # the crowd got its rows too


@pytest.mark.timeout(120)
def test_a_page_refused_by_a_busy_process_says_so_and_loads_again(
    tmp_path, cluster_options, monkeypatch
):
    """An open beyond the opens allowed to wait is refused (1013): the page tells its viewer
    why, in colour and words, and loads itself again a few seconds later."""
    from playwright.sync_api import Error as PlaywrightError

    from headrace.app.settings import OPENS_WAITING_ENV, PREPARED_ENV

    monkeypatch.setenv(OPENS_WAITING_ENV, "0")  # no open may wait: every one is refused
    monkeypatch.setenv(PREPARED_ENV, "0")
    with served(tmp_path, cluster_options) as (port, browser):
        page = browser.new_page(viewport={"width": 1200, "height": 500})
        loads: list[float] = []
        page.on("load", lambda _page: loads.append(time.monotonic()))
        page.goto(f"http://127.0.0.1:{port}/dashboard", wait_until="load")
        said = wait_for(lambda: page.evaluate(DISCONNECTED), 30, "the page's note")
        colour = page.evaluate(
            "() => getComputedStyle(document.querySelector('[role=status]')).backgroundColor"
        )
        page.screenshot(path=str(tmp_path / "refused.png"))

        def reloaded() -> bool:
            # Playwright hands over the page's events only while it is called.
            with contextlib.suppress(PlaywrightError):  # called mid-reload
                page.evaluate("1")
            return len(loads) >= 2

        wait_for(reloaded, 30, "the page to load again")
    assert said.startswith("BUSY: headrace: 0 pages are opening on this server process"), said
    assert colour == "rgb(178, 106, 0)"  # the colour of a stale state: #b26a00
    assert 4.5 <= loads[1] - loads[0] <= 20, loads  # after 5-10 s, not in a tight loop


@pytest.mark.timeout(120)
def test_a_page_says_it_lost_the_server_and_comes_back_with_it(tmp_path, cluster_options):
    from playwright.sync_api import sync_playwright

    log = tmp_path / "panel.log"
    with LocalCluster(**cluster_options) as cluster:
        publisher = Publisher("browser", interval=0.2)
        with (
            publishing(publisher, cluster.scheduler_address),
            sync_playwright() as playwright,
        ):
            browser = chromium(playwright)
            try:
                page = browser.new_page(viewport={"width": 1200, "height": 500})
                with headrace_serve(cluster.scheduler_address, 1, log) as (proc, port):
                    wait_http(port, proc=proc)
                    page.goto(f"http://127.0.0.1:{port}/dashboard", wait_until="load")
                    first = wait_for(
                        lambda: (now := shown(page, "browser"))[1] and now[0], 60, "the plot's rows"
                    )
                # The server is gone: the page says so, in colour and words.
                said = wait_for(lambda: page.evaluate(DISCONNECTED), 10, "the notice")
                page.screenshot(path=str(tmp_path / "disconnected.png"))
                time.sleep(3)  # the page keeps asking; nothing answers
                with headrace_serve(cluster.scheduler_address, 1, log, port=port) as (proc, _):

                    def live_again() -> float:
                        # The page loaded again: a session of the new server, with rows.
                        pid, newest = shown(page, "browser")
                        return pid not in (None, first) and newest

                    back = wait_for(live_again, 60, "the page to load again with rows")
                    notice = page.evaluate(DISCONNECTED)
            finally:
                browser.close()
    assert said.startswith("DISCONNECTED"), said
    assert back > 0 and notice == "", notice
