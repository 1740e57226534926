"""The operator page in a real Chromium: per-stream state by colour and word, malformed
lines with file and line, viewers per Panel process, the tick loops (active and waiting),
in light and dark themes."""

from __future__ import annotations

import pytest
import yaml
from distributed import LocalCluster
from helpers import (
    TEXTS,
    chromium,
    headrace_etl,
    headrace_serve,
    needs_chromium,
    wait_for,
    wait_http,
)

from headrace.cluster.demo.logwriter import LogWriter

pytestmark = [needs_chromium, pytest.mark.browser]

# The header's state badge, and the page's background, as the browser renders them.
LOOK = """
() => {
  const badge = [...document.querySelectorAll("*")].map((e) => e.shadowRoot)
    .filter(Boolean).flatMap((r) => [...r.querySelectorAll(".hr-badge")])[0];
  return {theme: document.documentElement.dataset.theme || document.body.className,
          background: getComputedStyle(document.body).backgroundColor,
          badge: badge ? getComputedStyle(badge).backgroundColor : null};
}
"""


@pytest.mark.timeout(150)
def test_ops_page_shows_each_streams_health_and_the_viewers(
    ftp_server, ftp_root, tmp_path, cluster_options
):
    from playwright.sync_api import sync_playwright

    path = ftp_root / "good.log"
    writer = LogWriter([path], rate=100, malformed_every=25)
    config = tmp_path / "etl.yaml"
    streams = {
        "good": {"source": ftp_server.url("good.log"), "interval": 0.2},
        "broken": {"source": ftp_server.url("missing.log"), "interval": 0.2},
    }
    config.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "streams": streams}))
    with (
        open(tmp_path / "etl.log", "wb") as log,
        LocalCluster(**cluster_options) as cluster,
        writer,
        headrace_serve(cluster.scheduler_address, 1, tmp_path / "panel.log") as (proc, port),
        sync_playwright() as playwright,
    ):
        loop = headrace_etl(config, cluster.scheduler_address, log)
        standby = headrace_etl(config, cluster.scheduler_address, log)  # same state: waits
        browser = chromium(playwright)
        try:
            wait_http(port, "/metrics", 60, proc)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"http://127.0.0.1:{port}/ops", wait_until="load")

            def shown() -> str:
                text = page.evaluate(TEXTS)
                ready = "good.log:25" in text and "FAILING" in text and "Panel process" in text
                loops = "ACTIVE" in text and "WAITING" in text
                return ready and loops and "1 failing: broken" in text and text

            text = wait_for(shown, 60, "the operator page to show both streams")
            page.screenshot(path=str(tmp_path / "ops-light.png"), full_page=True)
            light = page.evaluate(LOOK)
            # It refreshes by itself: the sequence number moves on without a reload.
            before = page.evaluate(TEXTS)
            after = wait_for(
                lambda: (now := page.evaluate(TEXTS)) != before and now, 30, "the page to refresh"
            )
            page.goto(f"http://127.0.0.1:{port}/ops?theme=dark", wait_until="load")
            wait_for(lambda: "FAILING" in page.evaluate(TEXTS), 30, "the dark page")
            page.screenshot(path=str(tmp_path / "ops-dark.png"), full_page=True)
            dark = page.evaluate(LOOK)
        finally:
            browser.close()
            for proc in (loop, standby):
                proc.terminate()
                proc.wait(30)

    assert "OK" in text and "not a log line 25" in text and "does not match pattern" in text
    assert "missing.log" in text  # the failing stream's error names its file
    assert "s3cret" not in text  # the FTP password is not on the page
    assert before != after
    # State by colour as well as words: the header badge is red (failing) in both themes.
    assert light["badge"] == dark["badge"] == "rgb(198, 40, 40)", (light, dark)
    assert light["background"] != dark["background"], (light, dark)
    assert not errors, errors
