"""Revisions in the live path: a window that emits early publishes a period again with
the same time; every session's plot replaces the point in place (a ``ColumnsPatched``
encoded once for the sessions in sync), across the browser's rollover."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pandas as pd
import pytest
from helpers import RecordedSession, serve_threaded, stream_source, wait_for

from headrace.app.live.channel import Channel
from headrace.app.live.window import Window
from headrace.etl.windows.early import latest

START = pd.Timestamp("2026-12-05", tz="UTC")


class Revising:
    """Frames as a window that emits early publishes them: new periods, and the last
    ``k`` periods again with changed values and the next revision number."""

    def __init__(self) -> None:
        self.n = 0
        self.frames: list[pd.DataFrame] = []
        self.revision: dict[int, int] = {}
        self.rng = np.random.default_rng(7)

    def frame(self, new: int, k: int = 5) -> pd.DataFrame:
        again = list(range(max(0, self.n - k), self.n))
        index = np.array([*again, *range(self.n, self.n + new)], np.int64)
        self.n += new
        revision = [self.revision.get(int(i), -1) + 1 for i in index]
        self.revision.update(zip(index.tolist(), revision, strict=True))
        frame = pd.DataFrame(
            {
                "time": (START + pd.to_timedelta(index * 25, unit="ms")).as_unit("ns"),
                "value": self.rng.integers(0, 1000, len(index)).astype(float),
                "count": np.ones(len(index), np.int64),
                "revision": revision,
            }
        )
        self.frames.append(frame)
        return frame

    def expected(self) -> dict[int, float]:
        """Value by time (µs) with revisions applied."""
        rows = latest(self.frames)
        micros = (rows["time"].astype("int64") // 1000).tolist()
        return dict(zip(micros, rows["value"], strict=True))


def test_a_window_revises_its_rows_in_a_copy_and_says_which():
    w = Window(window_ns=10**12)
    t = np.array([1, 2, 3], "datetime64[ns]")
    held = {"time": t, "value": np.array([1.0, 2.0, 3.0])}
    w.append(held)
    indices, rows, rest = w.revised(
        {"time": np.array([2, 3, 4], "datetime64[ns]"), "value": np.array([20.0, 30.0, 4.0])}
    )
    assert indices.tolist() == [1, 2] and rows["value"].tolist() == [20.0, 30.0]
    assert rest["value"].tolist() == [4.0]  # newer: appended as usual
    assert w.snapshot().columns["value"].tolist() == [1.0, 20.0, 30.0]
    assert held["value"].tolist() == [1.0, 2.0, 3.0]  # what sessions were given is not touched


def test_a_channel_patches_a_browsers_rows_at_its_own_indices():
    channel = Channel("s", {"time": np.arange(5.0), "value": np.zeros(5)}, 5, rollover=4)
    assert channel.start == 1  # rows 1-4 held
    channel.add({"time": np.array([5.0, 6.0]), "value": np.ones(2)}, 5)
    indices, found = channel.locate("time", np.array([3.0, 6.0, 9.0]))
    assert indices.tolist() == [3, 6] and found.tolist() == [True, True, False]
    channel.patch(indices, {"time": np.array([3.0, 6.0]), "value": np.array([30.0, 60.0])})
    assert channel.advance()
    assert channel.window["value"].tolist() == [30.0, 0.0, 1.0, 60.0]  # rows 3 to 6
    # A browser holding rows 1 to 4 (offset 1, next row 5) gets row 3 at its index 2.
    assert channel.patches_for(1, 5, 0, ["value"]) == {"value": [(2, 30.0)]}
    assert channel.patches_for(1, 5, channel.patched, ["value"]) == {}  # had it already


@pytest.mark.timeout(120)
def test_sessions_replace_revised_points_in_place_across_the_rollover():
    from headrace.app import registry
    from headrace.app.live.subscriber import Subscriber
    from headrace.app.pages.dashboard import build

    subscriber = Subscriber("tcp://127.0.0.1:1", window=20)  # 1,000 rows: a rollover
    parts = registry.reset(subscriber)
    parts.prepared.size = 0
    feed = Revising()
    subscriber.ingest("s", 1, feed.frame(200))
    server, port = serve_threaded({"dashboard": lambda: build(parts)})
    sessions: list[RecordedSession] = []
    try:
        url = f"http://127.0.0.1:{port}/dashboard"

        def publish(seq: int) -> None:
            async def ingest() -> None:
                subscriber.ingest("s", seq, feed.frame(60))

            asyncio.run_coroutine_threadsafe(ingest(), server.asyncio_loop).result(10)

        def open_session() -> RecordedSession:
            session = RecordedSession(url, "s")
            session.start()
            assert session.pulled.wait(30) and session.error is None, session.error
            sessions.append(session)
            return session

        def shows_latest(session: RecordedSession) -> bool:
            source = stream_source(session.session.document, "s")
            times = np.round(np.asarray(source.data["time"], float) * 1000).astype(np.int64)
            values = np.asarray(source.data["value"], float)
            want = feed.expected()
            return (
                len(times) > 0
                and times[-1] == max(want)
                and all(want[t] == v for t, v in zip(times.tolist(), values.tolist(), strict=True))
            )

        open_session()
        for seq in range(2, 20):
            publish(seq)
            time.sleep(0.1)  # a tick's pace: a flush per frame
            if seq == 10:
                open_session()  # opened mid-way, before the rollover
                wait_for(lambda: parts.fanout.info()["opened"] == 2, 30, "the second session")
        for session in sessions:
            wait_for(lambda s=session: shows_latest(s), 30, "the session to show every revision")
        source = stream_source(sessions[0].session.document, "s")
        assert len(source.data["time"]) == 1000  # rolled over: indices moved under the patches
        assert subscriber.stats["revised_rows"] >= 18 * 5
        info = parts.fanout.info()
        assert info["encodes"] < info["messages"], info  # sessions in sync shared encodings
    finally:
        for session in sessions:
            session.stop()
        server.stop()
        registry.reset()


def test_a_view_patches_its_line_and_adds_a_spike_a_revision_makes():
    from headrace.app.views.engine import trial
    from headrace.app.views.plots import stream_view

    class Watching:
        active = True

        def changed(self) -> None:
            pass

    feed = Revising()
    first = feed.frame(50)
    first["value"] = 100.0  # no spike yet
    engine = trial(stream_view("s", threshold=500), {"s": first})
    watcher = Watching()
    engine.watch(watcher)
    revised = feed.frame(0, k=1).assign(value=900.0)  # the last period, now a spike
    engine.subscriber.ingest("s", 2, revised)
    channels = {engine.rendering.glyphs[p].kind: c for p, c in engine.channels.items()}
    for channel in channels.values():
        channel.advance()
    line, spikes = channels["Curve"], channels["Scatter"]
    assert line.window["value"].tolist() == [100.0] * 49 + [900.0]  # patched in place
    assert line.patched == 1
    assert spikes.window["value"].tolist() == [900.0]  # the marker it now needs
