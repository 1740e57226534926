"""A session's plots looking back: history drawn under the live glyphs, read again at each zoom.

A window (the last hour, day, week, or a range the viewer picks) fixes the plots'
time axes and has ``draw`` show the history of the window, read through the process's
:class:`~headrace.app.views.history.HistoryCache` (computed once, off the event loop)
and downsampled to about :data:`POINTS` points with every bucket's min and max, so
spikes stay visible. Zooming or panning reads the visible range again (once the viewer
has paused for :data:`SETTLE` s), finer as the range narrows, down to the raw 25 ms
rows. The live glyphs keep streaming, in view where the window reaches the present.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from bokeh.document import Document
    from bokeh.events import RangesUpdate
    from bokeh.plotting import figure as Figure

log = logging.getLogger(__name__)

POINTS = 2000
SETTLE = 0.3  # seconds without zooming before the visible range is read again

Window = tuple[pd.Timestamp, pd.Timestamp]
Read = Callable[[pd.Timestamp, pd.Timestamp], Awaitable[Any]]


def _ms(t: pd.Timestamp) -> float:
    return pd.Timestamp(t).value / 1e6


class LookBack:
    """The past in one session's time plots: ``read`` a window, ``draw`` it (None: clear)."""

    def __init__(
        self, figures: Sequence[Figure], doc: Document, read: Read, draw: Callable[[Any], None]
    ) -> None:
        from bokeh.events import RangesUpdate

        self.figures = list(figures)
        self.read, self.draw = read, draw
        self._doc = weakref.ref(doc)
        # The ranges that follow live data, put back when the viewer returns to live.
        self._live = {f.id: f.x_range for f in self.figures}
        # Subscribed from the start: a subscription added to a live document does not
        # reach the browser.
        for figure in self.figures:
            figure.on_event(RangesUpdate, self._zoomed)
        self.window: Window | None = None  # None: following live
        self._asked = 0  # the newest read asked for; older answers are dropped
        self._tasks: set[asyncio.Future[None]] = set()

    def show(self, window: Window | None) -> None:
        """Look at ``window`` (UTC start, end), or follow the newest data again (None).

        Call from the session's own callbacks.
        """
        from bokeh.models import Range1d

        self.window = window
        self._asked += 1
        if window is None:
            for figure in self.figures:
                figure.x_range = self._live[figure.id]
            self.draw(None)
            return
        start, end = window
        shared = Range1d(_ms(start), _ms(end))  # one range: linked plots stay linked
        for figure in self.figures:
            figure.x_range = shared
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
                found = await self.read(start, end)
            except Exception as exc:  # a database outage costs this plot its past, no more
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                log.warning("history: read failed: %s", error)
                return
            doc = self._doc()
            if doc is not None and asked == self._asked:
                with contextlib.suppress(Exception):  # the session is being torn down
                    doc.add_next_tick_callback(partial(self._draw, found, asked))

        self._spawn(read())

    def _spawn(self, work: Coroutine[None, None, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)

    def _draw(self, found: Any, asked: int) -> None:
        if asked == self._asked and self.window is not None:
            self.draw(found)
