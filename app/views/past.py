"""A view drawn from history: its function called on a long window's rows, once per process.

For the look-back windows (:mod:`headrace.app.views.lookback`) a view's function gets
the history of its streams in place of their live rows (``time`` and ``value``, and
``key`` for a stream with several series; min and max of each bucket), and each glyph
drawn from appended rows gets what the function drew from them. Reads go through the
process's :class:`~headrace.app.views.history.HistoryCache` and each answer is computed
once per process, for every session looking at the same window.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from headrace.app.live.columns import Columns
from headrace.app.views.calls import APPENDED, TAG
from headrace.app.views.lookback import POINTS
from headrace.app.views.tree import elements

if TYPE_CHECKING:
    from headrace.app.views.engine import Engine
    from headrace.app.views.history import HistoryCache

log = logging.getLogger(__name__)

KEEP = 32  # answers kept per view


class Past:
    """One view's history answers in this process."""

    def __init__(self, engine: Engine, cache: HistoryCache) -> None:
        self.engine = engine
        self.cache = cache
        self._done: OrderedDict[tuple, tuple[list[pd.DataFrame], dict[tuple, Columns]]] = (
            OrderedDict()
        )
        self.calls = 0  # the view's function on history, for this process

    def keys(self, stream: str) -> list[str]:
        """The series of ``stream`` in the live window ("" for a stream without keys)."""
        columns = self.engine.subscriber.snapshot(stream).columns
        keys = columns.get("key")
        if keys is None or keys.dtype != object or not len(keys):
            return [""]
        return sorted(set(keys.tolist()))

    async def read(self, start: pd.Timestamp, end: pd.Timestamp) -> dict[str, pd.DataFrame]:
        """Each of the view's streams from ``start`` to ``end``, from the history database."""
        frames = {}
        for stream in self.engine.view.streams:
            keys = self.keys(stream)
            parts = await asyncio.gather(
                *(self.cache.window(stream, start, end, POINTS, key) for key in keys)
            )
            frames[stream] = _joined(parts, keys)
        return frames

    def data(self, frames: dict[str, pd.DataFrame]) -> dict[tuple, Columns]:
        """What each appended glyph draws from ``frames`` (computed once per process)."""
        engine = self.engine
        identity = (engine.version, *(id(f) for f in frames.values()))
        done = self._done.get(identity)
        if done is not None:
            self._done.move_to_end(identity)
            return done[1]
        inputs = {}
        live = engine.calls.inputs(whole=True, skip=APPENDED)
        for argument, given in engine.view.inputs.items():
            if engine.calls.kinds[argument] == APPENDED:
                frame = frames[given.stream].copy(deep=False)
                frame.attrs[TAG] = argument
                inputs[argument] = frame
            else:
                inputs[argument] = live[argument].iloc[:0]
        self.calls += 1
        result = engine.calls(inputs, count=False)
        rendering = engine.rendering
        answer: dict[tuple, Columns] = {}
        if rendering is not None:
            for found in elements(result, engine.name):
                glyph = rendering.glyphs.get(found.path)
                if glyph is not None and engine.kinds.get(found.path) in ("append", "redraw"):
                    answer[found.path] = glyph.data(found.element)
        self._done[identity] = (list(frames.values()), answer)
        while len(self._done) > KEEP:
            self._done.popitem(last=False)
        return answer


def _joined(parts: list[pd.DataFrame], keys: list[str]) -> pd.DataFrame:
    """One frame of a stream's series, ``time`` naive UTC as live rows have it."""
    frames = []
    for key, part in zip(keys, parts, strict=True):
        frame = part[["time", "value"]].copy()
        if frame["time"].dt.tz is not None:
            frame["time"] = frame["time"].dt.tz_convert("UTC").dt.tz_localize(None)
        frame["time"] = frame["time"].astype("datetime64[ns]")
        frame["value"] = frame["value"].astype(np.float64)
        if key:
            frame["key"] = key
        frames.append(frame)
    joined = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return joined.sort_values("time", kind="stable", ignore_index=True)
