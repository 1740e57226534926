"""The apps in examples/, served by ``headrace serve`` and opened in Chromium.

Each page must show live rows arriving in every glyph it draws from a stream: lines
and markers grow, a histogram of the last minute changes. The streams are published
on a LocalCluster as the tick loop would (``alpha`` and ``beta``, and ``pumps`` with
a key per row).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from distributed import LocalCluster
from helpers import (
    STEP,
    Publisher,
    chromium,
    headrace_serve,
    needs_chromium,
    publishing,
    wait_for,
    wait_http,
)

pytestmark = [needs_chromium, pytest.mark.browser]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class Keyed(Publisher):
    """Rows of three pumps, one key per row, as the demo's ``pumps`` file carries."""

    def make_frame(self) -> pd.DataFrame:
        now = pd.Timestamp.now(tz="UTC")
        n = max(1, int((now - self.next_time) / STEP))
        times = pd.date_range(self.next_time, periods=n, freq=STEP, unit="ns")
        self.next_time = times[-1] + STEP
        keys = np.array(["p1", "p2", "p3"])[np.arange(n) % 3]
        values = 0.1 + 0.05 * (np.arange(n) % 3) + 0.01 * self.rng.standard_normal(n)
        values[self.rng.random(n) < 0.05] += 0.5
        return pd.DataFrame({"time": times, "value": values, "key": keys})


class Spiky(Publisher):
    def make_frame(self) -> pd.DataFrame:
        frame = super().make_frame()
        frame["value"] = 0.1 + 0.01 * frame["value"]
        frame.loc[self.rng.random(len(frame)) < 0.1, "value"] += 0.5  # markers come often
        return frame


# Each glyph's source that draws from data: its rows and a digest of its values.
GLYPHS = """
() => {
  const doc = window.Bokeh && Bokeh.documents && Bokeh.documents[0];
  if (!doc) return null;
  const found = [];
  for (const m of doc.all_models) {
    if (m.constructor.__name__ !== "GlyphRenderer" || m.name === "history") continue;
    const data = m.data_source.data;
    const columns = Object.keys(data);
    if (!columns.length) continue;
    const values = Array.from(data[columns[columns.length - 1]] || []);
    found.push({id: m.id, glyph: m.glyph.constructor.__name__, rows: values.length,
                sum: values.reduce((a, b) => a + Number(b), 0)});
  }
  return found.sort((a, b) => a.id.localeCompare(b.id));
}
"""


@pytest.mark.timeout(240)
def test_every_example_shows_live_rows_in_every_glyph(tmp_path, cluster_options):
    from playwright.sync_api import sync_playwright

    apps = tuple(sorted(EXAMPLES.glob("*.py")))
    assert {a.stem for a in apps} >= {"spikes", "keyed", "linked"}
    publishers = [Spiky("alpha", interval=0.2), Publisher("beta", interval=0.2)]
    publishers.append(Keyed("pumps", interval=0.2))
    with LocalCluster(**cluster_options) as cluster:
        address = cluster.scheduler_address
        with (
            publishing(publishers[0], address),
            publishing(publishers[1], address),
            publishing(publishers[2], address),
            headrace_serve(address, 1, tmp_path / "panel.log", apps=apps) as (proc, port),
            sync_playwright() as playwright,
        ):
            wait_http(port, "/static/js/bokeh.min.js", 60, proc)
            browser = chromium(playwright)
            try:
                for app in apps:
                    _check(browser, f"http://127.0.0.1:{port}/{app.stem}", tmp_path / app.stem)
            finally:
                browser.close()
    log = (tmp_path / "panel.log").read_text()
    assert not unexpected_tracebacks(log), log


def unexpected_tracebacks(log: str) -> list[str]:
    """The log's entries with a traceback, but for a page closed while Panel wrote to it.

    Panel's ``_dispatch_msgs`` and Tornado's ``write_message`` leave the
    ``WebSocketClosedError`` of a page closed mid-write unretrieved, which asyncio logs.
    """
    entries = re.split(r"(?m)^(?=\d{4}-\d\d-\d\d )", log)
    # Bokeh's last words carry no time stamp: they end whichever entry came before.
    ends = [re.sub(r"\nReceived signal \w+, shutting down$", "", e.rstrip()) for e in entries]
    return [
        e
        for e, end in zip(entries, ends, strict=True)
        if "Traceback" in e
        and not (
            e.split("\n", 1)[0].endswith("Task exception was never retrieved")
            and end.endswith("tornado.websocket.WebSocketClosedError")
        )
    ]


def _check(browser, url: str, shot: Path) -> None:
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
    page.goto(url, wait_until="load")
    first = wait_for(
        lambda: (g := page.evaluate(GLYPHS)) and all(x["rows"] for x in g) and g,
        60,
        f"every glyph of {url} with rows",
    )

    def moved(glyphs) -> bool:
        before = {g["id"]: g for g in first}
        return all(
            g["rows"] != before[g["id"]]["rows"] or g["sum"] != before[g["id"]]["sum"]
            for g in glyphs
        )

    later = wait_for(
        lambda: (g := page.evaluate(GLYPHS)) and len(g) == len(first) and moved(g) and g,
        60,
        f"live rows in every glyph of {url}",
    )
    page.screenshot(path=f"{shot}.png")
    page.close()
    assert not errors, (url, errors)
    assert len(later) >= 2, later  # each example draws more than one glyph from data
