"""``headrace.etl.pandas_internals`` gives exactly what pandas' public paths give: an
upgrade of pandas that changes its private constructors fails here, not in a chart."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from headrace.etl import pandas_internals as internals
from headrace.etl.contract.frames import TIME_DTYPE
from headrace.etl.contract.messages import Span

NS = np.array([1_764_000_000_000_000_000 + i * 25_000_000 for i in range(5)], np.int64)
TIMES = pd.array(NS.view("M8[ns]"), TIME_DTYPE)
KEYS = pd.array(["a", "b", None, "a", "c"], dtype="str")
M4 = ("value", "value_min", "value_first", "value_last")
COMPACT = b"pandas_internals\x94\x8c\x06unpack"  # a pickle that calls internals.unpack


@pytest.mark.parametrize(
    "columns",
    [
        {"time": TIMES, "value": np.arange(5.0)},
        {"time": TIMES, "value": np.arange(5.0), "count": np.arange(5), "key": KEYS},
        {"time": TIMES[:0], "value": np.empty(0)},
        {"time": TIMES, "value": np.array([1.0, np.nan, 3.0, np.inf, -0.0])},
        # m4: four float columns in one block, as pandas consolidates them
        {"time": TIMES, **{c: np.arange(5.0) * i for i, c in enumerate(M4)}, "count": NS % 7},
        {"flag": np.arange(5) > 2, "small": np.arange(5, dtype=np.int32), "key": KEYS},
        {"naive": NS.view("M8[ns]"), "value": np.arange(5.0)},  # pandas' own path
        {"value": np.arange(5.0), "other": np.ones(5), "time": TIMES, "last": np.zeros(5)},
    ],
)
def test_a_frame_is_what_the_public_constructor_makes(columns):
    fast = internals.frame(columns)
    public = pd.DataFrame(columns, copy=False)
    pd.testing.assert_frame_equal(fast, public, check_exact=True)
    assert fast.columns.dtype == public.columns.dtype
    assert fast.index.equals(public.index) and type(fast.index) is type(public.index)
    assert fast._mgr.nblocks == public._mgr.nblocks  # consolidated as the public one is
    assert [b.mgr_locs.as_array.tolist() for b in fast._mgr.blocks] == [
        b.mgr_locs.as_array.tolist() for b in public._mgr.blocks
    ]
    pd.testing.assert_frame_equal(fast.iloc[1:3].copy(), public.iloc[1:3].copy())
    again = internals.frame(columns)  # shares the labels
    assert again.columns is fast.columns


def test_a_frame_of_read_only_columns_can_be_written_and_leaves_them_alone():
    values = np.arange(5.0)
    values.flags.writeable = False  # as a parse's columns, views of Arrow buffers, are
    rows = internals.frame({"time": TIMES, "value": values})
    rows.loc[rows["value"] > 2, "value"] = -1.0
    assert rows["value"].tolist() == [0.0, 1.0, 2.0, -1.0, -1.0]
    assert values.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_times_are_what_pd_array_makes():
    fast = internals.times(NS)
    public = pd.array(NS.view("M8[ns]"), TIME_DTYPE)
    assert type(fast) is type(public) and fast.dtype == public.dtype == TIME_DTYPE
    assert (fast.asi8 == public.asi8).all()
    pd.testing.assert_extension_array_equal(fast, public)


def test_a_column_is_the_array_iloc_gives():
    rows = pd.DataFrame({"time": TIMES, "value": np.arange(5.0), "key": KEYS})
    assert internals.column(rows, 0).dtype == TIME_DTYPE
    pd.testing.assert_extension_array_equal(internals.column(rows, 0), rows.iloc[:, 0].array)
    value = internals.column(rows, 1)
    assert isinstance(value, np.ndarray) and (value == rows.iloc[:, 1].to_numpy()).all()
    pd.testing.assert_extension_array_equal(internals.column(rows, 2), rows.iloc[:, 2].array)


def test_names_and_span_equal_the_public_paths():
    ns = np.array([5, 7, 9], dtype=np.int64) * 1_000_000
    shared = internals.frame({"time": internals.times(ns), "value": np.ones(3)})
    public = pd.DataFrame({"value": np.ones(3), "time": pd.to_datetime(ns, utc=True)})
    for f in (shared, shared, public):  # the shared labels' names are remembered
        assert internals.names(f) == tuple(f.columns.tolist())
        assert internals.span(f) == tuple(vars(Span.of(f)).values())
    naive = pd.DataFrame({"time": pd.to_datetime(ns), "value": np.ones(3)})
    assert internals.span(naive) is None and internals.span(shared.iloc[:0]) is None


@pytest.mark.parametrize(
    "frame",
    [
        pd.DataFrame({"time": TIMES, "value": np.arange(5.0), "count": np.arange(5)}),
        pd.DataFrame({"time": TIMES, "value": np.array([1.0, np.nan, 3.0, np.inf, -0.0])}),
        pd.DataFrame({"time": TIMES[:0], "value": np.empty(0)}),
        pd.DataFrame({"time": TIMES, "flag": np.array([True, False] * 2 + [True])}),
        pd.DataFrame({"time": TIMES, "n": np.arange(5, dtype=">i4")}),  # not native order
        pd.DataFrame({"time": TIMES, "value": np.arange(10.0)[::2]}),  # not contiguous
    ],
)
def test_a_compact_pickle_reads_back_the_same_frame(frame):
    back = pickle.loads(pickle.dumps(internals.Compact(frame), protocol=5))
    pd.testing.assert_frame_equal(back, frame, check_exact=True)
    assert back.columns.dtype == frame.columns.dtype
    assert type(back.index) is pd.RangeIndex and back.index.equals(frame.index)
    assert COMPACT in pickle.dumps(internals.Compact(frame), protocol=5)


@pytest.mark.parametrize(
    "frame",
    [
        pd.DataFrame({"time": TIMES, "key": KEYS}),  # a string column
        pd.DataFrame({"time": TIMES, "value": np.arange(5.0)}, index=np.arange(5) * 2),
        pd.DataFrame({"time": TIMES.astype("M8[us, UTC]"), "value": np.arange(5.0)}),
        pd.DataFrame({"value": np.arange(5.0)}).rename(columns={"value": 1}),
        pd.DataFrame({"time": TIMES, "value": pd.array([1.0, None, 3, 4, 5], "Float64")}),
    ],
)
def test_other_frames_are_pickled_by_pandas(frame):
    pickled = pickle.dumps(internals.Compact(frame), protocol=5)
    assert COMPACT not in pickled
    pd.testing.assert_frame_equal(pickle.loads(pickled), frame, check_exact=True)


def test_a_frame_with_attrs_keeps_them():
    frame = pd.DataFrame({"time": TIMES, "value": np.arange(5.0)})
    frame.attrs["revision"] = 2
    assert pickle.loads(pickle.dumps(internals.Compact(frame))).attrs == {"revision": 2}
