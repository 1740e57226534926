"""The fan-out: one encoding per tick for every in-sync session, and slow viewers left behind.

The protocol-level tests parse what ``internals.encode`` writes with Bokeh's own receiver
and apply it to a document; the served test runs the real dashboard in a Panel server
with raw Bokeh-protocol viewers, one of which stops reading.
"""

from __future__ import annotations

import asyncio
import json
import re

import numpy as np
import pandas as pd
import pytest
from faultreport import record
from helpers import free_port, wait_for, wait_http

from headrace.app.live.channel import Channel
from headrace.app.live.columns import empty
from headrace.app.live.internals import Copies, clone, encode


class Plot:
    """A HoloViews curve rendered to Bokeh: its figure and its glyph's source."""

    def __init__(self, figure) -> None:
        from bokeh.models import GlyphRenderer

        self.figure = figure
        (renderer,) = figure.select(type=GlyphRenderer)
        self.source = renderer.data_source

    @classmethod
    def rendered(cls) -> Plot:
        import holoviews as hv
        import holoviews.plotting.bokeh

        frame = pd.DataFrame(empty(["time", "value"]))
        return cls(hv.render(hv.Curve(frame, "time", "value").opts(title="s")))

    def copy(self) -> Plot:
        return Plot(Copies()(self.figure))


def rows(first: int, n: int) -> dict[str, np.ndarray]:
    index = np.arange(first, first + n, dtype=float)
    return {"time": index * 25.0, "value": index}


def test_channel_keeps_the_newest_rows_gap_and_repeat_free():
    channel = Channel("s", rows(0, 10), end=10, rollover=50)
    assert not channel.add(rows(5, 5), 5)  # all known
    assert channel.add(rows(5, 10), 5)  # overlaps: only 10..14 queued
    channel.advance()
    assert channel.end == 15 and channel.start == 0
    for first in range(15, 215, 20):
        channel.add(rows(first, 20), first)
    channel.advance()
    np.testing.assert_array_equal(channel.window["value"], np.arange(165, 215))
    assert channel.start == 165
    # A session at row 200 gets 200..214; one whose row rolled out gets the whole window.
    np.testing.assert_array_equal(channel.since(200, ["time", "value"])["value"], range(200, 215))
    np.testing.assert_array_equal(channel.since(3, ["time", "value"])["value"], range(165, 215))
    assert np.isnan(channel.since(210, ["time", "count"])["count"]).all()


def _receive(parts) -> object:
    """``parts`` through Bokeh's own protocol receiver, as its client reads a websocket."""
    from bokeh.protocol import Protocol
    from bokeh.protocol.receiver import Receiver

    async def run():
        receiver = Receiver(Protocol())
        message = None
        for payload, _binary in parts:
            message = await receiver.consume(payload)
        return message

    return asyncio.run(run())


def test_one_encoding_streams_like_cds_stream_into_every_copy():
    from bokeh.document import Document

    plot = Plot.rendered()
    copy = plot.copy()
    assert copy.source.id == plot.source.id and copy.source is not plot.source
    docs = []
    for p in (plot, copy):
        doc = Document()
        doc.add_root(p.figure)
        p.source.data = rows(0, 8)
        docs.append(doc)
    message = _receive(encode([(plot.source.id, rows(8, 5), 10)]).parts)
    assert message.msgtype == "PATCH-DOC"
    expected = Document()
    reference = clone(plot.source)
    expected.add_root(reference)
    reference.data = rows(0, 8)
    reference.stream(rows(8, 5), rollover=10)
    for doc, p in zip(docs, (plot, copy), strict=True):
        message.apply_to_document(doc)
        for name in ("time", "value"):
            np.testing.assert_array_equal(p.source.data[name], reference.data[name])
    np.testing.assert_array_equal(plot.source.data["value"], np.arange(3, 13))
    # The frames are the parts, each an unmasked final websocket frame.
    frames, pos = encode([(plot.source.id, rows(0, 3000), 10)]), 0
    for payload, binary in frames.parts:
        data = payload if isinstance(payload, bytes) else payload.encode()
        head = frames.frames[pos]
        assert head == 0x80 | (0x2 if binary else 0x1)
        length = frames.frames[pos + 1]
        skip = {126: 4, 127: 10}.get(length, 2)
        assert frames.frames[pos + skip : pos + skip + len(data)] == data
        pos += skip + len(data)
    assert pos == frames.size


def test_a_copy_serialises_as_the_rendered_plot_and_changes_alone():
    from bokeh.document import Document
    from bokeh.protocol import Protocol

    plot = Plot.rendered()
    copy = clone(plot.figure)

    def roots(figure) -> str:
        doc = Document()
        doc.add_root(figure)
        content = json.loads(Protocol().create("PULL-DOC-REPLY", "x", doc).content_json)
        text = json.dumps(content["doc"]["roots"], sort_keys=True)
        # Buffers get new ids at every serialisation; models keep theirs.
        return re.sub(r'"data": \{"id": "[^"]+"\}', '"data": {"id": "buffer"}', text)

    assert roots(copy) == roots(plot.figure)
    copy.title.text = "changed"
    copy.renderers[0].glyph.line_width = 7
    assert plot.figure.title.text == "s" and plot.figure.renderers[0].glyph.line_width != 7
    assert Plot(Copies(renew=True)(plot.figure)).source.id != plot.source.id


@pytest.mark.fault  # a row of the reliability table
@pytest.mark.timeout(120)
def test_sessions_share_encodings_and_a_stalled_viewer_slows_nobody():
    import panel as pn

    from benchmarks.viewer import open_viewer
    from headrace.app import registry
    from headrace.app.live.subscriber import Subscriber
    from headrace.app.pages.dashboard import Dashboard, open_

    subscriber = Subscriber("tcp://127.0.0.1:1", window=600)
    parts = registry.reset(subscriber)
    parts.prepared.size = 0  # every board is a viewer's: none built ahead, waiting unfed
    fanout = parts.fanout
    boards: list[Dashboard] = []

    def app():  # the first session is built, the others are copies of it
        boards.append(open_(parts))

    start = pd.Timestamp("2026-01-01", tz="UTC")
    sent = {"n": 0}
    big = 20_000  # rows per frame (320 kB, within the window): a stalled reader falls behind

    def frame(n: int) -> pd.DataFrame:
        first = sent["n"]
        sent["n"] += n
        index = np.arange(first, first + n)
        times = start + pd.to_timedelta(index * 25, unit="ms")
        return pd.DataFrame({"time": times, "value": index.astype(float)})

    subscriber.ingest("s", 1, frame(10))  # the stream exists before anyone opens the page
    port = free_port()
    server = pn.serve({"dashboard": app}, port=port, address="127.0.0.1", show=False, threaded=True)
    loop = None
    try:
        wait_http(port, "/static/js/bokeh.min.js", 30)
        loop = server.asyncio_loop
        url = f"http://127.0.0.1:{port}/dashboard"

        def publish(seq: int, n: int) -> None:
            call = _call(subscriber.ingest, "s", seq, frame(n))
            asyncio.run_coroutine_threadsafe(call, loop).result(10)

        async def scenario():
            viewers = [await open_viewer(url) for _ in range(4)]
            slow = await open_viewer(url, rcvbuf=4096)
            for v in [*viewers, slow]:
                await _until(lambda v=v: v._ready_sent, 20)
            await _until(lambda: ready_sessions(fanout) == 5, 20)  # their ready events arrived
            slow.stall()
            for seq in range(2, 40):
                await asyncio.to_thread(publish, seq, big if seq % 2 else 3)
                await asyncio.sleep(0.06)  # the publisher's pace
            await _until(lambda: all(_received(v)[-1:] == [sent["n"] - 1] for v in viewers), 20)
            stalled_info = await asyncio.to_thread(fanout.info)
            slow.stall(False)
            await _until(lambda: _received(slow)[-1:] == [sent["n"] - 1], 20)
            for v in [*viewers, slow]:
                v.close()
            return viewers, slow, stalled_info

        viewers, slow, stalled = asyncio.run(scenario())
        # Every watcher got every row after the first 10 (in its document) once, in order.
        for v in viewers:
            assert _received(v) == list(range(10, sent["n"]))
        assert stalled["behind"] >= 1  # the stalled one was left behind, not waited for
        # It got the newest rows back when it read again, and its page said what it missed.
        got = _received(slow)
        assert got[-1] == sent["n"] - 1 and len(got) < sent["n"] - 10
        info = fanout.info()
        assert info["skipped_rows"] > 0
        slow_board = [b for b in boards if b.skipped]
        assert len(slow_board) == 1
        wait_for(lambda: slow_board[0].notice.visible, 10, "the skip notice")
        assert "skipped" in slow_board[0].notice.text and slow_board[0].notice.visible
        # One encoding served the in-sync sessions of a tick: far fewer than messages sent.
        assert info["encodes"] * 2 < info["messages"], info
        # Each session's document holds what its browser has: the channel's window. (Not
        # a page Panel keeps for GETs, with --reuse-sessions, which no browser loads.)
        for board in [b for b in boards if fanout.session_ready(b._doc())]:
            (sink,) = board.views["s"].sinks
            data = sink.source().data
            assert data["value"][-1] == sent["n"] - 1
        record(
            "a viewer's connection stalls",
            "a viewer with a 4 KB receive buffer stops reading while 38 frames (380,000 rows) "
            "go to 4 others",
            watchers_rows_missing=0,
            stalled_viewer_skipped_rows=info["skipped_rows"],
            queued_for_it="at most one message",
        )
    finally:
        server.stop()
        registry.reset()


def ready_sessions(fanout) -> int:
    """Sessions whose browser (here a raw viewer) has reported its document ready."""
    with fanout.lock:
        return sum(g.alive and g.ready for g in fanout._gates)


def _received(viewer) -> list[int]:
    chunks = [c for model in viewer.rows.values.values() for c in model]
    return [int(x) for x in np.concatenate(chunks)] if chunks else []


async def _call(function, *args):
    function(*args)


async def _until(predicate, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)
