"""Resample publishes closed periods only, once each; Map checks user output."""

from __future__ import annotations

import pickle
from itertools import pairwise

import numpy as np
import pandas as pd
import pytest

from headrace.etl.parse.parser import FunctionParser
from headrace.etl.transforms import AGGS, Carry, Map, Resample, Step, Transform, empty_frame

START = pd.Timestamp("2026-11-23T09:00:00Z").value
MS = 1_000_000


def make_rows(rng: np.random.Generator, n: int, keys: list[str] | None = None) -> pd.DataFrame:
    """Sorted times with gaps (empty periods) and repeats; noise with rare spikes."""
    steps = rng.choice([0, 1 * MS, 3 * MS, 7 * MS, 60 * MS], size=n, p=[0.1, 0.4, 0.3, 0.15, 0.05])
    times = START + np.cumsum(steps) + rng.integers(0, 1000, n)
    times.sort()
    values = rng.normal(0.1, 0.01, n)
    spikes = rng.random(n) < 0.02
    values[spikes] = rng.normal(50, 10, spikes.sum())
    frame = pd.DataFrame(
        {"time": pd.array(times.view("M8[ns]"), pd.DatetimeTZDtype("ns", "UTC")), "value": values}
    )
    if keys:
        frame["key"] = pd.Series(rng.choice(keys, n), dtype="str")
    return frame


def one_shot(rows: pd.DataFrame, period: str, agg: str) -> pd.DataFrame:
    """The expected result: a plain groupby of all rows, minus the last (open) period."""
    by = [rows["time"].dt.floor(period)]
    if "key" in rows.columns:
        by.append(rows["key"])
    groups = rows.groupby(by, sort=True)["value"]
    out = groups.agg(agg).to_frame("value").assign(count=groups.size()).reset_index()
    return out[out["time"] < out["time"].max()].reset_index(drop=True)


def run(transform: Resample, chunks: list[pd.DataFrame]) -> tuple[list[Step], pd.DataFrame]:
    """Feed chunks one per tick, pickling the carry between ticks as the loop does."""
    steps, carry = [], None
    for chunk in chunks:
        step = transform.step(chunk, carry)
        steps.append(step)
        carry = pickle.loads(pickle.dumps(step.carry))
    return steps, pd.concat([s.frame for s in steps], ignore_index=True)


def random_split(rng: np.random.Generator, rows: pd.DataFrame) -> list[pd.DataFrame]:
    cuts = np.sort(rng.integers(0, len(rows) + 1, rng.integers(0, 12)))  # empty chunks too
    bounds = [0, *cuts.tolist(), len(rows)]
    return [rows.iloc[a:b].reset_index(drop=True) for a, b in pairwise(bounds)]


def assert_accounted(steps: list[Step], total: int) -> None:
    published = sum(int(s.frame["count"].sum()) for s in steps)
    late = sum(s.late for s in steps)
    assert published + late + steps[-1].carried == total
    assert steps[-1].carried == len(steps[-1].carry.rows)


@pytest.mark.parametrize("agg", AGGS)
def test_random_splits_equal_one_shot_groupby(agg: str) -> None:
    for seed in range(6):
        rng = np.random.default_rng(seed)
        rows = make_rows(rng, int(rng.integers(1, 400)))
        expected = one_shot(rows, "25ms", agg)
        for _ in range(3):
            steps, got = run(Resample("25ms", agg), random_split(rng, rows))
            pd.testing.assert_frame_equal(got, expected, check_dtype=False)
            assert got["time"].is_unique and got["time"].is_monotonic_increasing
            assert sum(s.late for s in steps) == 0
            assert_accounted(steps, len(rows))


def test_random_splits_with_keys() -> None:
    for seed in range(8):
        rng = np.random.default_rng(seed)
        rows = make_rows(rng, 300, keys=["pump", "fan", "valve"])
        expected = one_shot(rows, "10ms", "max")
        for _ in range(3):
            steps, got = run(Resample("10ms", "max"), random_split(rng, rows))
            pd.testing.assert_frame_equal(got, expected[got.columns], check_dtype=False)
            assert not got.duplicated(["time", "key"]).any()
            assert_accounted(steps, len(rows))


def test_output_dtypes_and_columns() -> None:
    rows = make_rows(np.random.default_rng(1), 200, keys=["a", "b"])
    step = Resample("25ms").step(rows, None)
    assert list(step.frame.columns) == ["time", "value", "count", "key"]
    assert str(step.frame["time"].dtype) == "datetime64[ns, UTC]"
    assert step.frame["value"].dtype == np.float64
    assert step.frame["count"].dtype == np.int64
    assert step.frame["key"].dtype == rows["key"].dtype
    times = step.frame["time"].array.asi8
    assert (np.diff(times) >= 0).all() and (times % (25 * MS) == 0).all()


def test_empty_input() -> None:
    step = Resample().step(empty_frame(), None)
    assert len(step.frame) == 0 and (step.late, step.carried) == (0, 0)
    pd.testing.assert_series_equal(step.frame.dtypes, empty_frame({"count": "int64"}).dtypes)
    # An empty tick keeps the open period and what was published.
    first = Resample().step(make_rows(np.random.default_rng(2), 50), None)
    again = Resample().step(empty_frame(), first.carry)
    assert len(again.frame) == 0 and again.carried == first.carried
    assert again.carry.published_until == first.carry.published_until


def test_keyed_carry_survives_a_frame_without_keys() -> None:
    rows = make_rows(np.random.default_rng(6), 100, keys=["a", "b"])
    first = Resample().step(rows, None)
    step = Resample().step(empty_frame(), first.carry)  # what a failed parser publishes
    assert step.carried == first.carried
    pd.testing.assert_frame_equal(step.carry.rows.frame(), first.carry.rows.frame())


def test_late_rows_are_dropped_and_counted() -> None:
    t = pd.to_datetime(
        ["2026-11-23T09:00:00.001Z", "2026-11-23T09:00:00.030Z", "2026-11-23T09:00:00.060Z"]
    )
    first = Resample("25ms", "sum").step(pd.DataFrame({"time": t, "value": [1.0, 2.0, 3.0]}), None)
    assert first.frame["value"].tolist() == [1.0, 2.0]  # 09:00:00.000 and .025 closed
    late = pd.DataFrame(
        {
            "time": pd.to_datetime(["2026-11-23T09:00:00.010Z", "2026-11-23T09:00:00.055Z"]),
            "value": [100.0, 4.0],
        }
    )
    step = Resample("25ms", "sum").step(late, first.carry)
    assert (step.late, step.carried, len(step.frame)) == (1, 2, 0)
    assert step.carry.rows.values.tolist() == [3.0, 4.0]


def test_out_of_order_rows_are_accounted_and_never_republished() -> None:
    for seed in range(8):
        rng = np.random.default_rng(seed)
        rows = make_rows(rng, 300)
        jitter = rng.integers(-40 * MS, 40 * MS, len(rows))
        rows["time"] = rows["time"] + pd.to_timedelta(jitter)  # arrives out of order
        steps, got = run(Resample("25ms", "mean"), random_split(rng, rows))
        assert got["time"].is_unique and got["time"].is_monotonic_increasing
        assert_accounted(steps, len(rows))
        for step in steps:  # whatever was published before a step is behind its carry
            if len(step.frame):
                assert step.frame["time"].array.asi8.max() < step.carry.published_until


def test_unsorted_rows_within_a_tick_are_not_late() -> None:
    rows = make_rows(np.random.default_rng(3), 200)
    shuffled = rows.sample(frac=1, random_state=3).reset_index(drop=True)
    step = Resample("25ms", "first").step(shuffled, None)
    pd.testing.assert_frame_equal(step.frame, one_shot(rows, "25ms", "first"), check_dtype=False)
    assert step.late == 0


def test_max_keeps_spikes() -> None:
    rng = np.random.default_rng(4)
    rows = make_rows(rng, 2000)
    rows.loc[1234, "value"] = 1e6
    _, got = run(Resample("25ms", "max"), random_split(rng, rows))
    assert got["value"].max() == 1e6
    spike = rows["time"][1234].floor("25ms")
    assert got.loc[got["time"] == spike, "value"].item() == 1e6


def test_carry_pickles() -> None:
    rows = make_rows(np.random.default_rng(5), 100, keys=["a"])
    carry = Resample().step(rows, None).carry
    clone = pickle.loads(pickle.dumps(carry))
    assert isinstance(clone, Carry)
    pd.testing.assert_frame_equal(clone.rows.frame(), carry.rows.frame())
    assert clone.published_until == carry.published_until
    assert len(pickle.dumps(carry)) < 10_000  # only the open period is kept


def test_resample_validation_and_pickle() -> None:
    with pytest.raises(ValueError, match=r"'avg'.*mean, max, min, sum, last, first, median"):
        Resample("25ms", "avg")
    with pytest.raises(ValueError, match="positive"):
        Resample("0ms")
    with pytest.raises(ValueError, match="value"):
        Resample().step(pd.DataFrame({"time": []}), None)
    clone = pickle.loads(pickle.dumps(Resample("1s", "median")))
    assert (clone.period_ns, clone.agg) == (10**9, "median")


def test_empty_frame() -> None:
    frame = empty_frame({"key": "str", "count": "int64"})
    assert list(frame.columns) == ["time", "value", "key", "count"]
    assert str(frame["time"].dtype) == "datetime64[ns, UTC]"
    assert frame["value"].dtype == np.float64 and frame["count"].dtype == np.int64
    assert len(frame) == 0


def unsorted_naive(rows: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {"time": ["2026-11-23 09:00:01", "2026-11-23 09:00:00"], "value": [2, 1], "x": 0}
    )


def test_map_coerces_to_the_contract() -> None:
    transform = Map(unsorted_naive)
    step = transform.step(empty_frame(), None)
    assert (step.carry, step.late, step.carried) == (None, 0, 0)
    assert str(step.frame["time"].dtype) == "datetime64[ns, UTC]"
    assert step.frame["value"].dtype == np.float64
    assert step.frame["value"].tolist() == [1.0, 2.0]  # sorted by time
    assert step.frame["time"][0] == pd.Timestamp("2026-11-23T09:00:00Z")
    assert list(step.frame.columns) == ["time", "value", "x"]
    assert isinstance(transform, Transform)
    assert pickle.loads(pickle.dumps(transform)).fn is unsorted_naive


def test_map_converts_other_zones_to_utc() -> None:
    times = pd.date_range("2026-11-23 10:00", periods=2, freq="s", tz="Europe/Paris")
    step = Map(lambda rows: pd.DataFrame({"time": times, "value": [1.0, 2.0]})).step(None, None)
    assert step.frame["time"][0] == pd.Timestamp("2026-11-23T09:00:00Z")


@pytest.mark.parametrize(
    ("columns", "missing"), [(["value"], "time"), (["time"], "value"), (["x"], "time, value")]
)
def test_map_validates_columns(columns: list[str], missing: str) -> None:
    bad = Map(lambda rows: pd.DataFrame({c: [1] for c in columns}))
    with pytest.raises(ValueError, match=missing):
        bad.step(empty_frame(), None)


def test_map_rejects_non_frames() -> None:
    with pytest.raises(TypeError, match="list"):
        Map(lambda rows: []).step(empty_frame(), None)


def frame_of(times: list, values: list[float]) -> pd.DataFrame:
    stamps = pd.to_datetime(pd.Series(times, dtype=object), utc=True, format="ISO8601")
    return pd.DataFrame({"time": stamps.astype("datetime64[ns, UTC]"), "value": values})


@pytest.mark.parametrize("period", ["25ms", "1D"])
def test_rows_no_period_can_hold_are_late_not_a_watermark(period: str) -> None:
    # NaT is int64's minimum, and a time just after 1677-09-21T00:12:43.145 floors to a
    # period start below int64's range: either wrapped round to the year 2262 and, as the
    # watermark, made every later row late.
    rows = frame_of(
        [None, "1677-09-21T00:12:43.150Z", "2026-11-23T09:00:00Z", "2026-11-23T09:00:01Z"],
        [1.0, 2.0, 3.0, 4.0],
    )
    resample = Resample(period, "sum")
    step = resample.step(rows, None)
    # At 25 ms the 1677 row's period still starts inside the range; a day's does not.
    assert step.late == (2 if period == "1D" else 1)
    assert step.frame["value"].tolist() == ([] if period == "1D" else [2.0, 3.0])
    assert step.carry.published_until <= pd.Timestamp("2026-11-23T09:00:01Z").value
    later = resample.step(frame_of(["2026-11-23T09:00:02Z"], [5.0]), step.carry)
    assert later.late == 0 and later.frame["value"].tolist() == ([] if period == "1D" else [4.0])
    assert_accounted([step, later], 5)


def test_a_nan_value_does_not_poison_its_period() -> None:
    t = ["2026-11-23T09:00:00.001Z", "2026-11-23T09:00:00.002Z", "2026-11-23T09:00:00.003Z"]
    rows = frame_of([*t, "2026-11-23T09:00:01Z"], [1.0, np.nan, 3.0, 0.0])
    for agg, value in {"mean": 2.0, "max": 3.0, "min": 1.0, "sum": 4.0, "median": 2.0}.items():
        step = Resample("25ms", agg).step(rows, None)
        assert (step.frame["value"].tolist(), step.frame["count"].tolist()) == ([value], [3])


def untimed(data: bytes) -> pd.DataFrame:
    """A user's parser that gives a NaT for a time it cannot read."""
    fields = [line.split(b" ") for line in data.splitlines()]
    times = pd.to_datetime([f[0].decode() for f in fields], utc=True, errors="coerce")
    return pd.DataFrame({"time": times, "value": [float(f[-1]) for f in fields]})


@pytest.mark.timeout(30)
def test_a_user_parser_cannot_wedge_resample() -> None:
    data = b"".join(
        f"2026-11-23T09:00:00.{ms:03d}Z {ms}\n".encode() if ms >= 0 else b"later 3\n"
        for ms in (0, 1, -1, 30, 60)
    )
    # A NaT row is dropped as malformed: in Resample it counts as late (no period holds it),
    # where it used to become a period in 2262, the watermark, and make every later row late.
    parsed = FunctionParser(untimed).parse(data)
    assert (parsed.lines, parsed.malformed, len(parsed.frame)) == (5, 1, 4)
    assert parsed.samples[0].reason == "parser 'untimed' returned 1 row without a time"
    step = Resample().step(parsed.frame, None)
    assert (step.frame["count"].tolist(), step.late, step.carried) == ([2, 1], 0, 1)
    # A frame the contract cannot hold counts the chunk as malformed, instead of failing the
    # transform on every retry of the tick.
    for frame in (pd.DataFrame({"time": [1]}), pd.DataFrame({"time": ["x"], "value": [1]})):
        parsed = FunctionParser(lambda d, f=frame: f).parse(data, first_line=3, source="s")
        assert (parsed.lines, parsed.malformed, len(parsed.frame)) == (5, 5, 0)
        sample = parsed.samples[0]
        assert sample.line == 3 and sample.reason.startswith("parser '<lambda>' returned")
