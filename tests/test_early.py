"""Windows that emit early: open windows published, each change a revision of its row."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from headrace.etl import config
from headrace.etl.windows import Hopping, Session, Tumbling, from_config
from headrace.etl.windows.early import latest

MS = 1_000_000
T0 = pd.Timestamp("2026-12-05", tz="UTC").value


def _lines(n: int = 3000, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = T0 + np.arange(n) * MS
    t -= np.where(rng.random(n) < 0.1, rng.integers(0, 150 * MS, n), 0)
    return pd.DataFrame(
        {
            "time": pd.to_datetime(t, utc=True),
            "value": rng.normal(size=n).round(3),
            "key": np.array(["a", "b"])[np.arange(n) % 2],
        }
    )


def _run(window, lines: pd.DataFrame, every: int = 37, pickled: bool = False):
    carry, frames = None, []
    for i in range(0, len(lines), every):
        step = window.step(lines.iloc[i : i + every].reset_index(drop=True), carry)
        carry = pickle.loads(pickle.dumps(step.carry)) if pickled else step.carry
        frames.append(step.frame)
    return frames, carry


WINDOWS = {
    "tumbling": lambda emit: Tumbling("100ms", agg=["max", "count"], grace="200ms", emit=emit),
    "hopping": lambda emit: Hopping("100ms", "50ms", agg="mean", grace="200ms", emit=emit),
}


@pytest.mark.parametrize("kind", WINDOWS)
def test_closed_windows_with_revisions_applied_equal_the_final_results(kind):
    lines = _lines()
    early, carry = _run(WINDOWS[kind]("early"), lines)
    final, _ = _run(WINDOWS[kind]("final"), lines)
    closed = pd.concat(final, ignore_index=True)
    applied = latest(early)
    # Closed windows: the final results; the rest are the windows still open.
    assert len(applied) == len(closed) + len(carry.early)
    pd.testing.assert_frame_equal(
        applied.iloc[: len(closed)].drop(columns="revision"), closed, check_index_type=False
    )
    assert applied.iloc[len(closed) :]["time"].min() >= pd.Timestamp(
        carry.published_until, tz="UTC"
    )


def test_revisions_count_up_from_zero_and_unchanged_windows_are_not_published_again():
    frames, _ = _run(WINDOWS["tumbling"]("early"), _lines())
    rows = pd.concat(frames, ignore_index=True)
    assert (rows["revision"] > 0).any()
    for _, group in rows.groupby(["time", "key"]):
        assert group["revision"].tolist() == list(range(len(group)))
        values = group[["value", "value_count", "count"]].to_numpy()
        assert (np.diff(values, axis=0) != 0).any(axis=1).all()  # each one a change
    for frame in frames:  # sorted by time, as every frame
        assert frame["time"].is_monotonic_increasing


def test_a_restart_from_the_pickled_carry_publishes_the_same_revisions():
    lines = _lines(seed=2)
    straight, _ = _run(WINDOWS["hopping"]("early"), lines)
    restarted, _ = _run(WINDOWS["hopping"]("early"), lines, pickled=True)
    for a, b in zip(straight, restarted, strict=True):
        pd.testing.assert_frame_equal(a, b)


def test_early_results_of_an_in_order_stream_show_the_open_window_at_once():
    w = Tumbling("1s", agg="max", emit="early")
    t = pd.to_datetime([T0, T0 + 100 * MS], utc=True)
    first = w.step(pd.DataFrame({"time": t[:1], "value": [1.0]}))
    assert first.frame["value"].tolist() == [1.0] and first.frame["revision"].tolist() == [0]
    second = w.step(pd.DataFrame({"time": t[1:], "value": [5.0]}), first.carry)
    assert second.frame["value"].tolist() == [5.0] and second.frame["revision"].tolist() == [1]
    later = pd.DataFrame({"time": t[1:] + pd.Timedelta("10ms"), "value": [2.0]})
    third = w.step(later, second.carry)  # the maximum stays, the count changes
    assert third.frame[["value", "count", "revision"]].values.tolist() == [[5.0, 3, 2]]
    assert len(w.step(later.iloc[:0], third.carry).frame) == 0  # no change: nothing


def test_emit_is_a_setting_of_the_yaml_and_says_what_is_wrong():
    w = from_config({"window": "tumbling", "size": "1s", "emit": "early"})
    assert repr(w) == "Tumbling('1s', agg='max', emit='early')"
    with pytest.raises(ValueError, match="emit: 'soon' is not one of final, early"):
        from_config({"window": "hopping", "size": "1s", "step": "1s", "emit": "soon"})
    with pytest.raises(ValueError, match="emit: early is for tumbling and hopping"):
        Session("5s", emit="early")
    with pytest.raises(ValueError, match=r"stream 's'.*emit"):
        config.parse(
            {
                "streams": {
                    "s": {
                        "source": "/tmp/x.log",
                        "transform": {"window": "session", "gap": "5s", "emit": "early"},
                    }
                }
            }
        )


def test_latest_keeps_rows_of_frames_without_revisions():
    t = pd.to_datetime([T0, T0], utc=True)
    rows = latest([pd.DataFrame({"time": t, "value": [1.0, 2.0]})])
    assert rows["value"].tolist() == [1.0, 2.0]
    assert latest([]).empty


def _skewed(n: int = 4000, seed: int = 4) -> pd.DataFrame:
    """Two keys, b's clock a second behind a's, each a little out of order, and a key
    seen once at the start."""
    rng = np.random.default_rng(seed)
    i = np.arange(n)
    t = T0 + i * MS - np.where(i % 2, 1000 * MS, 0)
    t -= np.where(rng.random(n) < 0.05, rng.integers(0, 400 * MS, n), 0)
    keys = np.where(i % 2, "b", "a").astype(object)
    keys[3] = "once"
    return pd.DataFrame(
        {"time": pd.to_datetime(t, utc=True), "value": rng.normal(size=n), "key": keys}
    )


def test_with_key_skew_each_key_is_late_only_by_its_own_watermark():
    lines = _skewed(n=8000)  # 8 s: the key seen once is more than key_skew behind
    window = Tumbling("100ms", agg="max", grace="200ms", key_skew="5s")
    carry, frames, late = None, [], []
    for i in range(0, len(lines), 41):
        step = window.step(lines.iloc[i : i + 41].reset_index(drop=True), carry)
        carry = pickle.loads(pickle.dumps(step.carry))
        frames.append(step.frame)
        late += (step.late_rows + i).tolist()
    # The oracle: per key, in file order, a row is late once its key's watermark passed
    # its window's end plus the grace.
    t = lines["time"].astype("int64").to_numpy()
    want_late = []
    for key in ("a", "b", "once"):
        at = np.flatnonzero(lines["key"].to_numpy() == key)
        mark = np.maximum.accumulate(np.r_[np.iinfo(np.int64).min, t[at][:-1]])
        end = t[at] - t[at] % (100 * MS) + 100 * MS
        want_late += at[mark >= end + 200 * MS].tolist()
    assert sorted(late) == sorted(want_late)
    assert len(late) < 0.1 * len(lines)  # without per-key marks, every b row would be late
    got = pd.concat(frames, ignore_index=True)
    assert got["time"].is_monotonic_increasing  # windows close at the slowest key
    assert set(carry.marks) == {"a", "b"}  # "once" was forgotten: bounded state
    kept = lines.drop(index=late)
    want = kept.groupby([kept["time"].dt.floor("100ms"), "key"])["value"].max()
    published = got.set_index(["time", "key"])["value"]
    assert published.equals(want.loc[published.index])  # closed windows: pandas' values
    carry, one_watermark = None, 0
    for i in range(0, len(lines), 41):  # the same with one watermark: b is always late
        step = Tumbling("100ms", agg="max", grace="200ms").step(
            lines.iloc[i : i + 41].reset_index(drop=True), carry
        )
        carry, one_watermark = step.carry, one_watermark + step.late
    assert one_watermark > 0.45 * len(lines)


def test_key_skew_is_a_setting_of_the_yaml():
    w = from_config({"window": "hopping", "size": "1s", "step": "500ms", "key_skew": "30s"})
    assert repr(w) == "Hopping('1s', step='500ms', agg='max', key_skew='30s')"
    with pytest.raises(ValueError, match="key_skew: 'soon' is not a duration"):
        from_config({"window": "tumbling", "size": "1s", "key_skew": "soon"})
    with pytest.raises(ValueError, match="key_skew: is for tumbling and hopping"):
        Session("5s", key_skew="1s")
