"""Windows over event time: results equal pandas' over the rows within the grace."""

from __future__ import annotations

import asyncio
import pickle
from itertools import pairwise

import numpy as np
import pandas as pd
import pytest
from distributed import LocalCluster
from helpers import tail

from headrace.etl import windows
from headrace.etl.config import ConfigError
from headrace.etl.config import load as load_config
from headrace.etl.loop import pipeline
from headrace.etl.parse.regex import RegexParser
from headrace.etl.sources.base import Chunk, Cursor
from headrace.etl.streams import Stream
from headrace.etl.windows import Hopping, Session, Tumbling

START = pd.Timestamp("2026-12-04T09:00:00Z").value
MS = 1_000_000


class Clock:
    """A wall clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def disordered(seed: int, n: int = 600, keys: list[str] | None = None) -> pd.DataFrame:
    """Rows in file order: mostly on time, some a little late, a few very late."""
    rng = np.random.default_rng(seed)
    times = START + np.cumsum(rng.integers(0, 8 * MS, n))
    delay = np.where(rng.random(n) < 0.1, rng.integers(0, 60 * MS, n), 0)
    delay[rng.random(n) < 0.02] = 400 * MS
    frame = pd.DataFrame(
        {"time": pd.to_datetime(times - delay, utc=True), "value": rng.normal(0, 1, n)}
    )
    if keys:
        frame["key"] = pd.Series(rng.choice(keys, n), dtype="str")
    return frame


def within_grace(rows: pd.DataFrame, closes) -> np.ndarray:
    """Rows that came before their last window closed, in file order (the oracle)."""
    t = rows["time"].array.asi8
    mark = np.maximum.accumulate(np.r_[np.iinfo(np.int64).min, t[:-1]])
    return mark < closes(t)


def ticks(rows: pd.DataFrame, seed: int) -> list[pd.DataFrame]:
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.integers(0, len(rows) + 1, 15))
    return [rows.iloc[a:b].reset_index(drop=True) for a, b in pairwise([0, *cuts, len(rows)])]


def run(window, chunks, clock: Clock | None = None):
    """Feed ticks, pickling the carry between them; then let the stream go idle."""
    steps, carry = [], None
    for i, chunk in enumerate([*chunks, chunks[0].iloc[:0]]):
        if clock is not None and i == len(chunks):
            clock.now += 10  # silence: the idle bound closes what is open
        step = window.step(chunk, carry)
        steps.append(step)
        carry = pickle.loads(pickle.dumps(step.carry))
    return steps, pd.concat([s.frame for s in steps], ignore_index=True)


@pytest.mark.parametrize("seed", range(4))
def test_tumbling_with_grace_equals_pandas_over_the_rows_within_it(seed):
    rows = disordered(seed)
    size, grace = 25 * MS, 50 * MS
    ok = within_grace(rows, lambda t: t - t % size + size + grace)
    clock = Clock()
    window = Tumbling("25ms", agg=["max", "mean", "count"], grace="50ms", idle_close=1, clock=clock)
    steps, got = run(window, ticks(rows, seed), clock)
    kept = rows[ok]
    groups = kept.groupby(kept["time"].dt.floor("25ms"))["value"]
    want = pd.DataFrame({"value": groups.max(), "value_mean": groups.mean()}).reset_index()
    published = got[got["count"] > 0].reset_index(drop=True)
    pd.testing.assert_frame_equal(published[["time", "value", "value_mean"]], want)
    assert published["value_count"].tolist() == groups.count().tolist()
    assert got["time"].is_monotonic_increasing and got["time"].is_unique
    late = np.concatenate(
        [s.late_rows + sum(map(len, ticks(rows, seed)[:i])) for i, s in enumerate(steps[:-1])]
    )
    assert sorted(late.tolist()) == np.flatnonzero(~ok).tolist()
    assert all((s.lateness >= 0).all() for s in steps)


def test_hopping_windows_equal_pandas_per_window_and_key():
    rows = disordered(7, 300, keys=["a", "b"])
    size, hop, grace = 100 * MS, 25 * MS, 30 * MS
    t = rows["time"].array.asi8
    mark = np.maximum.accumulate(np.r_[np.iinfo(np.int64).min, t[:-1]])
    clock = Clock()
    window = Hopping("100ms", "25ms", agg="sum", grace="30ms", idle_close=1, clock=clock)
    _, got = run(window, ticks(rows, 7), clock)
    got = got[got["count"] > 0]
    want = []
    for start in range(t.min() - t.min() % hop - size, t.max() + hop, hop):
        # A row counts in the windows still open when it came: before end + grace.
        inside = (t >= start) & (t < start + size) & (mark < start + size + grace)
        for key, part in rows[inside].groupby("key"):
            want.append((start, key, part["value"].sum(), len(part)))
    want = pd.DataFrame(want, columns=["start", "key", "value", "count"]).sort_values(
        ["start", "key"]
    )
    assert got["time"].array.asi8.tolist() == want["start"].tolist()
    assert got["key"].tolist() == want["key"].tolist()
    np.testing.assert_allclose(got["value"], want["value"])
    assert got["count"].tolist() == want["count"].tolist()


def session_oracle(rows: pd.DataFrame, gap: int, reach: int) -> np.ndarray:
    """Rows a session processor takes, line by line: not after their session closed."""
    taken: dict[str, list[int]] = {}
    ok, mark = [], None
    for t, k in zip(rows["time"].array.asi8.tolist(), rows["key"], strict=True):
        ts = sorted(taken.get(k, []))
        sessions = np.split(np.array(ts), np.flatnonzero(np.diff(ts) > gap) + 1) if ts else []
        ends = [s[-1] + gap for s in sessions if mark is not None and s[-1] + reach <= mark]
        good = (mark is None or t + reach > mark) and (not ends or t > max(ends))
        ok.append(good)
        if good:
            taken.setdefault(k, []).append(t)
        mark = t if mark is None else max(mark, t)
    return np.array(ok)


@pytest.mark.parametrize("seed", range(3))
def test_sessions_equal_pandas_gaps_per_key_over_the_rows_a_processor_takes(seed):
    rows = disordered(seed, 400, keys=["a", "b", "c"])
    gap, grace = 15 * MS, 20 * MS
    ok = session_oracle(rows, gap, gap + grace)
    clock = Clock()
    window = Session("15ms", agg=["max", "first"], grace="20ms", idle_close=1, clock=clock)
    chunks = ticks(rows, seed)
    steps, got = run(window, chunks, clock)
    offsets = np.cumsum([0, *map(len, chunks)])
    late = np.concatenate([s.late_rows + o for s, o in zip(steps, offsets, strict=False)])
    assert sorted(late.tolist()) == np.flatnonzero(~ok).tolist()
    taken = rows[ok].sort_values(["key", "time"])
    new = taken.groupby("key")["time"].diff().gt(pd.Timedelta(gap, "ns")).cumsum().rename("n")
    want = taken.groupby(["key", new]).agg(
        time=("time", "max"), start=("time", "min"), value=("value", "max"), count=("value", "size")
    )
    want = want.reset_index().sort_values(["time", "key"], ignore_index=True)
    columns = ["time", "start", "value", "count", "key"]
    pd.testing.assert_frame_equal(got[columns], want[columns], check_dtype=False)
    assert got["time"].is_monotonic_increasing


def test_m4_keeps_a_spike_at_every_size_and_names_its_columns():
    t = pd.date_range("2026-12-04", periods=1000, freq="1ms", tz="UTC")
    values = np.zeros(1000)
    values[537] = 99.0
    rows = pd.DataFrame({"time": t, "value": values})
    for size in ("5ms", "100ms", "1s"):
        step = Tumbling(size, agg="m4", grace="0s").step(rows, None)
        closed = step.frame
        assert list(closed.columns) == [
            "time",
            "value",
            "value_min",
            "value_first",
            "value_last",
            "count",
        ]
        if len(closed):
            assert closed["value"].max() == 99.0 or size == "1s"


def test_an_idle_stream_closes_its_window_and_shows_a_gap_then_later_rows_are_late():
    clock = Clock()
    window = Tumbling("25ms", agg="max", idle_close=1.0, clock=clock)
    rows = pd.DataFrame(
        {"time": pd.to_datetime([START, START + 30 * MS], utc=True), "value": [1.0, 2.0]}
    )
    first = window.step(rows, None)
    assert first.frame["value"].tolist() == [1.0]  # the second window is still open
    clock.now += 0.5
    quiet = window.step(rows.iloc[:0], first.carry)
    assert quiet.frame.empty  # not idle long enough
    clock.now += 0.6
    idle = window.step(rows.iloc[:0], quiet.carry)
    assert idle.frame["value"].tolist()[0] == 2.0 and np.isnan(idle.frame["value"].iloc[1])
    assert idle.frame["count"].tolist() == [1, 0]
    again = window.step(rows.iloc[:0], idle.carry)
    assert again.frame.empty  # one gap, not one per tick
    back = window.step(
        pd.DataFrame({"time": [pd.Timestamp(START + 40 * MS, tz="UTC")], "value": [3.0]}),
        again.carry,
    )
    assert back.late == 1 and back.frame.empty


def test_late_rows_reach_dead_letters_with_their_line_and_lateness():
    lines = [
        "2026-12-04T09:00:00.000Z 1.0",
        "2026-12-04T09:00:01.000Z 2.0",
        "not a line",
        "",
        "2026-12-04T09:00:00.100Z 3.0",  # its window closed a second ago, grace 0.5 s
        "2026-12-04T09:00:00.800Z 4.0",  # within the grace of its window
    ]
    data = ("\n".join(lines) + "\n").encode()
    chunk = Chunk(data, 10, Cursor(), 0, None, "ftp://host/x.log")
    window = Tumbling("100ms", agg="max", grace="500ms")
    result = pipeline.transform(chunk, RegexParser(), window, None)
    letters = result.summary.late_letters
    assert [(x.line, x.text) for x in letters] == [(14, lines[4])]
    assert letters[0].reason == "late by 0.300 s (its window had closed)"
    assert result.summary.late == 1 and result.summary.malformed == 1


def test_window_settings_from_yaml_and_errors_that_name_stream_and_setting(tmp_path):
    config = tmp_path / "headrace.yaml"
    config.write_text(
        "streams:\n"
        "  cpu:\n"
        "    source: /tmp/cpu.log\n"
        "    transform: {window: hopping, size: 10s, step: 2s, agg: [max, mean], grace: 2s}\n"
        "  users:\n"
        "    source: /tmp/users.log\n"
        "    transform: {window: session, gap: 30s, agg: count, idle_close: 5}\n"
    )
    streams = {s.name: s for s in load_config(config).streams}
    assert (
        repr(streams["cpu"].transform)
        == "Hopping('10s', step='2s', agg=['max', 'mean'], grace='2s')"
    )
    assert streams["users"].transform.idle_close == 5.0
    for bad, says in [
        ("{window: tumbling, size: 1 minutes later}", "size: '1 minutes later' is not a duration"),
        ("{window: sliding, size: 1s}", "window: 'sliding' is not one of"),
        ("{window: hopping, size: 1s}", "a hopping window needs step"),
        ("{window: tumbling, size: 1s, agg: p99}", "unknown aggregation 'p99'"),
        ("{window: hopping, size: 1s, step: 2s}", "step: 2s is longer than size 1s"),
        ("{window: session, gap: 1s, grace: -1s}", "grace: must be >= 0"),
    ]:
        config.write_text(f"streams:\n  cpu:\n    source: /tmp/cpu.log\n    transform: {bad}\n")
        with pytest.raises(ConfigError) as err:
            load_config(config)
        assert "cpu" in str(err.value) and "transform" in str(err.value), err.value
        assert says in str(err.value), err.value


def test_a_key_seen_once_leaves_nothing_behind():
    window = Session("10ms", grace="0s")
    keys = [f"k{i}" for i in range(500)]
    rows = pd.DataFrame(
        {
            "time": pd.to_datetime(START + np.arange(500) * 20 * MS, utc=True),
            "value": 1.0,
            "key": pd.Series(keys, dtype="str"),
        }
    )
    step = window.step(rows, None)
    assert len(step.frame) == 499 and len(step.carry.rows) == 1
    assert len(step.carry.closed) <= 2  # only keys a row could still be late for


def test_from_config_is_exported_and_windows_pickle():
    for w in (Tumbling("1s", agg="m4"), Hopping("1s", "250ms"), Session("5s", idle_close="2s")):
        assert repr(pickle.loads(pickle.dumps(w))) == repr(w)
    assert isinstance(windows.from_config({"window": "tumbling", "size": "1s"}), Tumbling)


@pytest.fixture(scope="module")
def cluster(cluster_options):
    with LocalCluster(**{**cluster_options, "n_workers": 1, "threads_per_worker": 1}) as c:
        yield c


def test_a_window_through_the_loop_keeps_late_lines_and_closes_when_idle(
    cluster, ftp_server, ftp_root, tmp_path
):
    def line(ms: int, value: float) -> bytes:
        at = pd.Timestamp(START + ms * MS, tz="UTC")
        return f"{at.isoformat().replace('+00:00', 'Z')} {value}\n".encode()

    pieces = [
        b"".join(line(ms, 1.0) for ms in range(0, 1000, 10)),  # lines 1-100
        line(1200, 5.0) + line(950, 7.0),  # 950 is within the 300 ms grace of [900, 1000)
        line(1500, 2.0) + line(1050, 9.0),  # 1050: [1000, 1100) closed at 1400; late by 100 ms
    ]
    path = ftp_root / "w.log"
    path.write_bytes(b"")
    window = Tumbling("100ms", agg=["max", "mean"], grace="300ms", idle_close=0.5)
    stream = Stream("w", ftp_server.url("w.log"), transform=window, interval=0.05)
    runners, frames, letters = asyncio.run(
        tail(cluster.scheduler_address, [stream], path, pieces, tmp_path, linger=1.5)
    )
    got = pd.concat([f for _, f in frames["w"]], ignore_index=True)
    starts = (got["time"].array.asi8 - START) // MS
    assert starts.tolist() == [0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1200, 1500, 1600]
    assert got["value"].tolist()[9:12] == [7.0, 5.0, 2.0]  # 950 counted, 1050 not
    assert np.isnan(got["value"].iloc[-1]) and got["count"].iloc[-1] == 0  # the idle gap
    assert got["value_mean"].iloc[9] == pytest.approx((9 * 1.0 + 1.0 + 7.0) / 11)
    assert runners["w"].health.late == 1
    late = [x for x in letters["w"] if x.reason.startswith("late")]
    assert [(x.line, x.reason) for x in late] == [(104, "late by 0.100 s (its window had closed)")]
    assert late[0].text == line(1050, 9.0).decode().strip()
