"""Chromium shows a window that emits early: the loop revises the open window every tick,
and the page replaces the point in place, the same as the frames with revisions applied."""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import pytest
import yaml
from distributed import Client, LocalCluster
from helpers import chromium, headrace_etl, headrace_serve, needs_chromium, wait_for, wait_http

from headrace.etl import contract
from headrace.etl.windows.early import latest

pytestmark = [needs_chromium, pytest.mark.browser]

# The stream's line: its times and values as BokehJS holds them.
POINTS = """
(stream) => {
  const doc = window.Bokeh && Bokeh.documents && Bokeh.documents[0];
  if (!doc) return null;
  for (const m of doc.all_models) {
    if ((m.tags || []).includes("headrace.stream:" + stream) && Array.isArray(m.renderers)) {
      const data = m.renderers.find((r) => r.name !== "history").data_source.data;
      return {time: Array.from(data["time"]), value: Array.from(data["value"])};
    }
  }
  return null;
}
"""


class Rising(threading.Thread):
    """Appends a line every 20 ms whose value rises: each tick raises the open window's max."""

    def __init__(self, path) -> None:
        super().__init__(daemon=True)
        self.path, self.stop = path, threading.Event()

    def run(self) -> None:
        i = 0
        with open(self.path, "a") as f:
            while not self.stop.is_set():
                now = pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                f.write(f"{now} {i % 50}\n")
                f.flush()
                i += 1
                time.sleep(0.02)


@pytest.mark.timeout(180)
def test_a_page_replaces_an_early_window_in_place(tmp_path, cluster_options):
    from playwright.sync_api import sync_playwright

    path = tmp_path / "early.log"
    path.write_text("")
    config = tmp_path / "etl.yaml"
    stream = {
        "source": str(path),
        "interval": 0.2,
        "parser": {"pattern": r"^(?P<time>\S+) (?P<value>\S+)$"},
        "transform": {"window": "tumbling", "size": "1s", "agg": "max", "emit": "early"},
    }
    config.write_text(
        yaml.safe_dump({"state_dir": str(tmp_path / "state"), "streams": {"early": stream}})
    )
    writer = Rising(path)
    with (
        LocalCluster(**cluster_options) as cluster,
        Client(cluster) as client,
        open(tmp_path / "etl.log", "wb") as log,
        headrace_serve(cluster.scheduler_address, 1, tmp_path / "panel.log") as (proc, port),
        sync_playwright() as playwright,
    ):
        writer.start()
        etl = headrace_etl(config, cluster.scheduler_address, log)
        browser = chromium(playwright)
        try:
            wait_http(port, proc=proc)
            page = browser.new_page(viewport={"width": 1200, "height": 600})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"http://127.0.0.1:{port}/dashboard", wait_until="load")
            wait_for(
                lambda: (p := page.evaluate(POINTS, "early")) and len(p["time"]) >= 4, 60, "points"
            )

            def same_as_the_frames() -> dict | None:
                shown = page.evaluate(POINTS, "early")
                frames = [f for _, f in contract.FrameStream("early", client).read(after=0)]
                want = latest(frames)
                times = (want["time"].astype("int64") // 1_000_000).to_numpy(float)
                mine = np.isin(times, shown["time"])
                same = list(shown["time"]) == times[mine].tolist() and mine[-1]
                # Compared once the open window was revised many times, not before.
                same = same and (pd.concat(frames)["revision"] > 0).sum() > 10
                if same and list(shown["value"]) == want["value"].to_numpy()[mine].tolist():
                    return {"shown": shown, "frames": pd.concat(frames)}
                return None

            seen = wait_for(same_as_the_frames, 30, "the page's points to equal the frames")
            page.screenshot(path=str(tmp_path / "early.png"))
        finally:
            writer.stop.set()
            etl.terminate()
            etl.wait(30)
            browser.close()
    published = seen["frames"]
    assert (published["revision"] > 0).sum() > 10  # the open window was revised many times
    assert len(set(seen["shown"]["time"])) == len(seen["shown"]["time"])  # one point each
    assert not errors, errors
