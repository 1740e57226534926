"""One plot looking back: history under the live line, read again at each zoom.

A window (the last hour, day, week, or a range the viewer picks) fixes the plot's
x-range and fills a second line from the history database, downsampled to about
:data:`POINTS` points with every bucket's min and max, so spikes stay visible. Zooming
or panning reads the visible range again (once the viewer has paused for
:data:`SETTLE` s), finer as the range narrows, down to the raw 25 ms rows. The live line
keeps streaming, in view where the window reaches the present. Reads go through the
process's :class:`~headrace.app.views.history.HistoryCache`: computed once, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Coroutine
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from headrace.app.settings import follow_seconds
from headrace.app.views.history import HistoryCache
from headrace.app.views.plots import history_line, live_range

if TYPE_CHECKING:
    from bokeh.document import Document
    from bokeh.events import RangesUpdate
    from bokeh.models import ColumnDataSource
    from bokeh.plotting import figure as Figure

log = logging.getLogger(__name__)

POINTS = 2000
SETTLE = 0.3  # seconds without zooming before the visible range is read again


def _ms(t: pd.Timestamp) -> float:
    return pd.Timestamp(t).value / 1e6


class LookBack:
    """The past of one stream in one session's plot."""

    def __init__(self, stream: str, figure: Figure, cache: HistoryCache, doc: Document) -> None:
        from bokeh.events import RangesUpdate

        self.stream, self.figure, self.cache = stream, figure, cache
        self._doc = weakref.ref(doc)
        # The line is made when the viewer first looks back: a session that only watches
        # live does not carry it. The subscription must be there from the start: one
        # added to a live document does not reach the browser.
        self.source: ColumnDataSource | None = None
        figure.on_event(RangesUpdate, self._zoomed)
        self.window: tuple[pd.Timestamp, pd.Timestamp] | None = None  # None: following live
        self._asked = 0  # the newest read asked for; older answers are dropped
        self._tasks: set[asyncio.Future[None]] = set()

    def show(self, window: tuple[pd.Timestamp, pd.Timestamp] | None) -> None:
        """Look at ``window`` (UTC start, end), or follow the newest data again (None).

        Call from the session's own callbacks.
        """
        from bokeh.models import Range1d

        self.window = window
        self._asked += 1
        if window is None:
            if self.source is not None:
                self.figure.x_range = live_range(follow_seconds())
                self.source.data = {"time": np.array([], float), "value": np.array([], float)}
            return
        if self.source is None:
            self.source = history_line(self.figure)
        start, end = window
        self.figure.x_range = Range1d(_ms(start), _ms(end))
        self._read(start, end, self._asked)

    def _zoomed(self, event: RangesUpdate) -> None:
        if self.window is None or event.x0 is None or event.x1 is None:
            return
        self._asked += 1
        asked = self._asked
        start = pd.Timestamp(event.x0 * 1e6, tz="UTC")
        end = pd.Timestamp(event.x1 * 1e6, tz="UTC")

        async def later() -> None:
            await asyncio.sleep(SETTLE)
            if asked == self._asked:  # the viewer has stopped zooming
                self._read(start, end, asked)

        self._spawn(later())

    def _read(self, start: pd.Timestamp, end: pd.Timestamp, asked: int) -> None:
        async def read() -> None:
            try:
                frame = await self.cache.window(self.stream, start, end, POINTS)
            except Exception as exc:  # a database outage costs this plot its past, no more
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                log.warning("history: stream %s: read failed: %s", self.stream, error)
                return
            doc = self._doc()
            if doc is not None and asked == self._asked:
                with contextlib.suppress(Exception):  # the session is being torn down
                    doc.add_next_tick_callback(partial(self._draw, frame, asked))

        self._spawn(read())

    def _spawn(self, work: Coroutine[None, None, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)

    def _draw(self, frame: pd.DataFrame, asked: int) -> None:
        if asked != self._asked or self.window is None or self.source is None:
            return
        times = frame["time"].dt.tz_localize(None).to_numpy("datetime64[ns]")
        self.source.data = {
            "time": times.view("int64") / 1e6,
            "value": frame["value"].to_numpy(float),
        }
