"""Admission of sessions: one build at a time, after a flush, a bounded number waiting.

The policy on its own (asyncio, real timing), then a real Panel server with the real
dashboard: a burst of websocket opens over the limit gets some refused with code 1013
and the reason, the others their sessions.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from distributed import LocalCluster
from helpers import Publisher, async_wait_for, free_port, publishing, wait_for, wait_http

from headrace.app.live.admission import Admission, Refused


def test_builds_run_one_at_a_time_in_order():
    async def main() -> list[tuple[str, int]]:
        admission = Admission()
        events: list[tuple[str, int]] = []

        async def build(i: int) -> int:
            events.append(("start", i))
            await asyncio.sleep(0.02)  # an await inside a build: others still wait
            events.append(("end", i))
            return i

        results = await asyncio.gather(*(admission.admit(lambda i=i: build(i)) for i in range(4)))
        assert results == [0, 1, 2, 3] and admission.admitted == 4 and admission.waiting == 0
        return events

    events = asyncio.run(main())
    assert events == [(kind, i) for i in range(4) for kind in ("start", "end")]


def test_a_build_waits_for_the_next_flush_but_not_for_ever():
    async def main() -> tuple[float, float]:
        admission = Admission(idle=2.0)
        for _ in range(3):  # rows flowing: a flush every 0.5 s, and a build takes 0.2 s
            admission.flushed()
            await asyncio.sleep(0.5)
        admission.flushed()
        assert admission.interval is not None and 0.4 < admission.interval < 0.9
        assert admission.fits()  # just after a flush: it fits before the next one
        await asyncio.sleep(0.4)
        assert not admission.fits()  # 0.1 s before the next flush: it would delay it
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        loop.call_later(0.3, admission.flushed)
        after_flush = await admission.admit(lambda: _now())
        idle = Admission(idle=0.2)
        idle.flushed()
        await asyncio.sleep(0.1)
        idle.flushed()  # a cadence of 0.1 s: a build of 0.2 s never fits
        t0 = time.monotonic()
        no_flush = await idle.admit(lambda: _now())
        return after_flush - started, no_flush - t0

    after_flush, no_flush = asyncio.run(main())
    assert 0.25 <= after_flush < 1.5, after_flush  # held until the flush 0.3 s later
    assert 0.15 <= no_flush < 1.5, no_flush  # no flush came: built after `idle`


async def _now() -> float:
    return time.monotonic()


def test_opens_beyond_the_limit_are_refused_and_counted():
    async def main() -> None:
        admission = Admission(limit=2)
        release = asyncio.Event()

        async def build() -> str:
            await release.wait()
            return "built"

        first = asyncio.ensure_future(admission.admit(build))
        await asyncio.sleep(0)  # it holds the turn
        queued = [asyncio.ensure_future(admission.admit(build)) for _ in range(2)]
        await asyncio.sleep(0)
        assert admission.waiting == 2
        with pytest.raises(Refused, match="2 pages are opening"):
            await admission.admit(build)
        # A viewer who leaves while waiting frees its place.
        queued[0].cancel()
        await asyncio.sleep(0)
        assert admission.waiting == 1
        release.set()
        assert await first == "built" and await queued[1] == "built"
        assert (admission.admitted, admission.refused, admission.waiting) == (2, 1, 0)

    asyncio.run(main())


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_burst_of_opens_over_the_limit_is_refused_with_1013_and_the_reason(cluster_options):
    import panel as pn
    from bokeh.util.token import generate_jwt_token, generate_session_id
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    from headrace.app import registry
    from headrace.app.live.subscriber import Subscriber
    from headrace.app.pages.dashboard import build

    async def open_one(url: str) -> tuple[str, int | None, str | None]:
        token = generate_jwt_token(generate_session_id())
        conn = await websocket_connect(HTTPRequest(url), subprotocols=["bokeh", token])
        header = await asyncio.wait_for(conn.read_message(), 60)
        conn.close()
        return (
            "ack" if header and '"ACK"' in header else "closed",
            conn.close_code,
            conn.close_reason,
        )

    with LocalCluster(**cluster_options) as cluster:
        publisher = Publisher("burst", interval=0.1)
        parts = registry.reset(Subscriber(cluster.scheduler_address, window=30))
        parts.admission.limit = 3
        parts.prepared.size = 0  # no build ahead takes the turn: the opens are alone
        port = free_port()
        with publishing(publisher, cluster.scheduler_address):
            server = pn.serve(
                {"dashboard": build}, port=port, address="127.0.0.1", show=False, threaded=True
            )
            try:
                url = f"ws://127.0.0.1:{port}/dashboard/ws"
                wait_http(port)  # its page's GET builds a session: the registry starts
                wait_for(lambda: parts.subscriber.started, 30, "the subscriber")

                async def burst() -> list[tuple[str, int | None, str | None]]:
                    return await asyncio.gather(*(open_one(url) for _ in range(10)))

                results = asyncio.run(burst())
            finally:
                server.stop()
                registry.reset()
    acked = [r for r in results if r[0] == "ack"]
    refused = [r for r in results if r[0] == "closed"]
    assert refused and all(code == 1013 and "are opening" in reason for _, code, reason in refused)
    # The three allowed to wait, at least (and the one building, if it started before the
    # burst filled the queue: on a busy machine it may not have).
    assert len(acked) >= 3, results
    assert parts.admission.refused == len(refused)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_an_open_takes_a_session_prepared_for_its_page_and_theme(cluster_options):
    """The second viewer of the dark page gets a dark session built ahead, renamed to its
    id, and its rows; a viewer of the light page is not given one of those."""
    import panel as pn
    from bokeh.util.token import get_session_id
    from test_app_sessions import server_sessions

    from benchmarks.viewer import open_viewer
    from headrace.app import registry
    from headrace.app.live.subscriber import Subscriber
    from headrace.app.pages.dashboard import build

    with LocalCluster(**cluster_options) as cluster:
        publisher = Publisher("ahead", interval=0.1)
        parts = registry.reset(Subscriber(cluster.scheduler_address, window=30))
        parts.prepared.size = 2
        port = free_port()
        with publishing(publisher, cluster.scheduler_address):
            thread = pn.serve(
                {"dashboard": build}, port=port, address="127.0.0.1", show=False, threaded=True
            )
            try:
                url = f"http://127.0.0.1:{port}/dashboard"
                wait_http(port)
                wait_for(lambda: parts.subscriber.started, 30, "the subscriber")

                async def viewers() -> list[tuple[str, float | None]]:
                    opened = []
                    for theme in ("dark", "dark", "default"):
                        if opened:  # the first open made the page wanted: sessions get built
                            await async_wait_for(
                                lambda: parts.prepared.info()["prepared"] >= 2, 30, "prepared"
                            )
                        t0 = time.time()
                        viewer = await open_viewer(f"{url}?theme={theme}")
                        opened.append((viewer, await viewer.first_row(t0), parts.prepared.adopted))
                    for viewer, *_ in opened:
                        viewer.close()
                    return [(v.token, first, adopted) for v, first, adopted in opened]

                results = asyncio.run(viewers())
                sessions = {s.id: s for s in server_sessions(thread)}
            finally:
                thread.stop()
                registry.reset()
    (_, first0, adopted0), (token1, first1, adopted1), (_, first2, adopted2) = results
    assert (adopted0, adopted1, adopted2) == (0, 1, 1), results  # only the second dark open
    assert None not in (first0, first1, first2), results  # every viewer got live rows
    session = sessions[get_session_id(token1)]  # the prepared session, under the viewer's id
    assert session.document.session_context.id == session.id
    assert session.document.session_context.request.arguments["theme"] == [b"dark"]
    texts = [t for m in session.document.models if isinstance(t := getattr(m, "text", None), str)]
    assert any("light theme" in t for t in texts)  # a dark page links to the light one
