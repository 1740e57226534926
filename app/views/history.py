"""Long windows for every session of a process, each computed once, off the event loop.

A session that looks back asks for "stream s from t0 to t1 in about n points". The
range is rounded to that resolution, so viewers asking for "the last 24 h" within the
same few seconds share one answer; the answer is read from the history database
(:class:`headrace.etl.contract.history.HistoryReader`) in a thread, so the event loop keeps
feeding the live viewers meanwhile, and kept in a small LRU. Concurrent asks for the
same window wait for the same read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

import pandas as pd

from headrace.etl.contract import history

log = logging.getLogger(__name__)

Key = tuple[str, int, int, int, str]


class HistoryCache:
    """The process's reads of the history database (None: no database configured)."""

    def __init__(self, url: str | None, size: int = 64) -> None:
        self.url = url
        self.size = size
        self._reader: history.HistoryReader | None = None
        self._done: OrderedDict[Key, pd.DataFrame] = OrderedDict()
        self._running: dict[Key, asyncio.Future[pd.DataFrame]] = {}
        self.stats = {"asked": 0, "read": 0}

    @property
    def available(self) -> bool:
        return self.url is not None

    @staticmethod
    def key(stream: str, start: pd.Timestamp, end: pd.Timestamp, points: int, key: str = "") -> Key:
        """The window rounded outwards to its resolution: close asks share one read."""
        lo, hi = pd.Timestamp(start).value, pd.Timestamp(end).value
        step = max(1, (hi - lo) // max(points, 1))
        return (stream, lo // step * step, -(-hi // step) * step, points, key)

    async def window(
        self,
        stream: str,
        start: pd.Timestamp,
        end: pd.Timestamp,
        points: int = 2000,
        key: str = "",
    ) -> pd.DataFrame:
        """``time`` and ``value`` of ``stream`` (of its series ``key``), min and max kept."""
        if self.url is None:
            raise RuntimeError("no history database configured (headrace serve --history URL)")
        self.stats["asked"] += 1
        key = self.key(stream, start, end, points, key)
        if key in self._done:
            self._done.move_to_end(key)
            return self._done[key]
        running = self._running.get(key)
        if running is None:
            running = asyncio.ensure_future(self._read(key))
            self._running[key] = running
        return await asyncio.shield(running)

    async def _read(self, key: Key) -> pd.DataFrame:
        stream, lo, hi, points, series = key
        started = time.perf_counter()
        try:
            frame = await asyncio.to_thread(
                self._reader_().window,
                stream,
                pd.Timestamp(lo, tz="UTC"),
                pd.Timestamp(hi, tz="UTC"),
                points,
                series,
            )
        finally:
            self._running.pop(key, None)
        self.stats["read"] += 1
        log.info(
            "history: stream %s, %s to %s: %d points from %s in %.0f ms",
            stream,
            pd.Timestamp(lo, tz="UTC"),
            pd.Timestamp(hi, tz="UTC"),
            len(frame),
            frame.attrs.get("level"),
            (time.perf_counter() - started) * 1e3,
        )
        self._done[key] = frame
        while len(self._done) > self.size:
            self._done.popitem(last=False)
        return frame

    def _reader_(self) -> history.HistoryReader:
        if self._reader is None:
            assert self.url is not None
            self._reader = history.HistoryReader.from_url(self.url)
        return self._reader
