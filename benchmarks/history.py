"""History: how fast the sink writes frames, and how fast long windows come back.

A SQLite database (the default sink) is filled with ``days`` of one stream: 1 s and
1 min rollups for the whole span and raw 25 ms rows for the last hour, written in bulk
as the sink would have over those days. Then each window (1 h, 24 h, 7 d, 30 d at 2,000
points) is read ``repeats`` times with :class:`headrace.etl.contract.history.HistoryReader`;
the figure is the median. Writing: frames of 8 rows (one 0.2 s tick of 25 ms rows)
through :meth:`headrace.etl.store.sink.Sink.write`, in batches as the backlog drains them.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .common import log

WINDOWS = {"1 h": "1h", "24 h": "1D", "7 d": "7D", "30 d": "30D"}


def _fill(engine, days: int, now: pd.Timestamp) -> dict[str, int]:
    from headrace.etl.contract import history

    rng = np.random.default_rng(0)
    counts = {}
    for level in history.LEVELS:
        times = pd.date_range(
            now - pd.Timedelta(days=days), now, freq=f"{level.width}s", inclusive="left"
        ).tz_localize(None)
        n = len(times)
        low = rng.normal(0.09, 0.005, n)
        high = low + 0.02 + (rng.random(n) < 0.002) * 0.5
        frame = pd.DataFrame(
            {
                "stream": "bench",
                "key": "",
                "time": times,
                "value_min": low,
                "value_max": high,
                "value_mean": (low + high) / 2,
                "value_sum": (low + high) / 2 * 40,
                "periods": 40,
                "count": 40,
            }
        )
        frame.to_sql(level.table.name, engine, if_exists="append", index=False, chunksize=50_000)
        counts[level.name] = n
    times = pd.date_range(now - pd.Timedelta("1h"), now, freq="25ms", inclusive="left")
    raw = pd.DataFrame(
        {
            "stream": "bench",
            "key": "",
            "time": times.tz_localize(None),
            "value": rng.normal(0.1, 0.01, len(times)),
            "count": 1,
            "seq": 1,
        }
    )
    raw.to_sql(history.rows.name, engine, if_exists="append", index=False, chunksize=50_000)
    counts["raw"] = len(raw)
    return counts


def _write_rate(work: Path, frames: int) -> dict:
    from headrace.etl.store.sink import Sink, SinkSpec, encode
    from headrace.etl.store.state import Queued

    sink = Sink(SinkSpec(f"sqlite:///{work}/write.sqlite"))
    start = pd.Timestamp("2026-01-01", tz="UTC")
    queued = []
    for i in range(frames):
        times = pd.date_range(start + pd.Timedelta(milliseconds=200 * i), periods=8, freq="25ms")
        frame = pd.DataFrame({"time": times, "value": np.full(8, 0.1), "count": 1})
        queued.append(Queued(i, "bench", i + 1, encode(frame), 0.0))
    t0 = time.perf_counter()
    for i in range(0, frames, 200):  # headrace.etl.store.sink.BATCH frames per transaction
        sink.write(queued[i : i + 200])
    seconds = time.perf_counter() - t0
    return dict(frames=frames, seconds=seconds, frames_per_s=frames / seconds)


def run(days: int = 30, repeats: int = 5) -> dict:
    import sqlalchemy as sa

    from headrace.etl.contract import history

    work = Path(tempfile.mkdtemp(prefix="headrace-history-"))
    engine = sa.create_engine(f"sqlite:///{work}/history.sqlite")
    history.create(engine)
    now = pd.Timestamp.now(tz="UTC").floor("1min")
    log(f"history: filling {days} days of rollups")
    t0 = time.perf_counter()
    result: dict = dict(days=days, repeats=repeats, rows=_fill(engine, days, now))
    result["fill_s"] = time.perf_counter() - t0
    reader = history.HistoryReader(engine)
    windows = {}
    for name, span in WINDOWS.items():
        start = now - pd.Timedelta(span)
        timings, frame = [], None
        for _ in range(repeats):
            t0 = time.perf_counter()
            frame = reader.window("bench", start, now, points=2000)
            timings.append(time.perf_counter() - t0)
        assert frame is not None
        windows[name] = dict(
            ms=statistics.median(timings) * 1e3,
            points=len(frame),
            level=frame.attrs["level"],
            max=float(frame["value"].max()),
        )
        log(
            f"history: {name}: {windows[name]['ms']:.0f} ms, {len(frame)} points "
            f"from {frame.attrs['level']}"
        )
    result["windows"] = windows
    result["write"] = _write_rate(work, 2000)
    log(f"history: sink writes {result['write']['frames_per_s']:.0f} frames/s")
    return result
