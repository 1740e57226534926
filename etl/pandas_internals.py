"""pandas' private constructors for the small frames of a tick: the one module using them.

Each stream-tick builds two frames of a few rows (the parser's rows, the window's output),
reads the columns of one and pickles one for the wire. There pandas' public paths cost
more than the work: ``pd.DataFrame(dict)`` ~60 µs, ``iloc[:, i]`` ~20 µs a column,
``pd.array`` of times ~15 µs, a frame's pickle ~50 µs to make and ~60 µs to read (pandas
3.1). The private ones below cost a third of that or less. pandas is
pinned in the lock file, and ``tests/test_pandas_internals.py`` checks that each gives
exactly what the public path gives, so that an upgrade that changes them fails loudly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pandas._libs.internals import BlockPlacement
from pandas.api.extensions import ExtensionArray
from pandas.arrays import DatetimeArray
from pandas.core.internals.blocks import ensure_block_shape, new_block
from pandas.core.internals.managers import BlockManager

from headrace.etl.contract.frames import TIME_DTYPE

_RAW_KINDS = frozenset("biuf")  # numpy kinds made into blocks here, and pickled as bytes
# Column labels by names: an Index is immutable, and building one costs ~25 µs.
_LABELS: dict[tuple[str, ...], pd.Index] = {}
# The names of those labels, by the id of the Index (kept for ever in _LABELS): reading
# them back from a str Index costs ~7 µs.
_NAMES: dict[int, tuple[str, ...]] = {}


def frame(columns: dict[str, np.ndarray | ExtensionArray]) -> pd.DataFrame:
    """``pd.DataFrame(columns, copy=False)``, for 1-d arrays of one length (not lists).

    One block per column, sharing its array, as that constructor makes them (pandas 3
    consolidates only what it copies), without its generic construction: ~9 µs for three
    columns against ~20 for ``DataFrame._from_arrays``, which also copied numpy columns.
    """
    names = tuple(columns)
    labels = _LABELS.get(names)
    if labels is None:
        labels = _LABELS.setdefault(names, pd.Index(names))
    arrays = list(columns.values())
    index = pd.RangeIndex._simple_new(range(len(arrays[0]) if arrays else 0))  # 0.4 µs, not 1.5
    blocks = []
    for i, array in enumerate(arrays):
        if isinstance(array, np.ndarray):
            if array.dtype.kind not in _RAW_KINDS:  # naive times, objects: as pandas makes them
                return pd.DataFrame._from_arrays(
                    arrays, columns=labels, index=index, verify_integrity=False
                )
            if not array.flags.writeable:
                # A view of an Arrow buffer (a parse): copied, as pandas' stacking did, so
                # that a transform may write into its rows.
                array = array.copy()
        place = BlockPlacement(slice(i, i + 1))
        blocks.append(new_block(ensure_block_shape(array, 2), place, ndim=2))
    manager = BlockManager(tuple(blocks), [labels, index], verify_integrity=False)
    return pd.DataFrame._from_mgr(manager, axes=manager.axes)


def names(frame: pd.DataFrame) -> tuple[str, ...]:
    """``tuple(frame.columns.tolist())``, remembered for the labels :func:`frame` shares."""
    labels = frame.columns
    known = _NAMES.get(id(labels))
    if known is not None:
        return known
    got = tuple(labels.tolist())
    if _LABELS.get(got) is labels:
        _NAMES[id(labels)] = got
    return got


def span(frame: pd.DataFrame) -> tuple[int, int, int] | None:
    """Rows, first and last ns of ``frame``'s ``time`` column (``Span.of`` without
    building the frame's column hash table and a Series); None unless datetime64[ns, UTC]."""
    cols = names(frame)
    if "time" not in cols or not len(frame):
        return None
    times = column(frame, cols.index("time"))
    if times.dtype != TIME_DTYPE:
        return None
    ns = times.asi8
    return len(ns), int(ns[0]), int(ns[-1])


def times(ns: np.ndarray) -> DatetimeArray:
    """``pd.array(ns.view("M8[ns]"), TIME_DTYPE)`` for int64 ns since the epoch."""
    return DatetimeArray._simple_new(ns.view("M8[ns]"), dtype=TIME_DTYPE)


def column(rows: pd.DataFrame, i: int) -> np.ndarray | ExtensionArray:
    """The array of ``rows``' ``i``-th column: ``rows.iloc[:, i]`` without the Series,
    as a numpy array where the column is one (``.array`` would wrap it)."""
    return rows._get_column_array(i)


# Numeric columns go into a compact pickle as their bytes; anything else as pandas pickles it.
_TIME = "T"  # the kind of a datetime64[ns, UTC] column, sent as its int64 ns


class Compact:
    """A frame that pickles as its columns' bytes and is read back with :func:`frame`.

    A tick's frame of a few rows pickles in ~10 µs and is read in ~28 µs where pandas
    takes ~50 and ~60 (every Panel process reads every frame). It unpickles as a plain
    ``DataFrame``, equal to ``frame`` with its dtypes and labels, by :func:`unpack` (so a
    reader needs headrace importable, as any reader of the contract has). A frame with
    columns of other dtypes, another index, attrs or labels that are not strings is
    pickled by pandas as it is.
    """

    __slots__ = ("frame",)

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame

    def __reduce__(self) -> tuple:
        f = self.frame
        index = f.index
        if f.attrs or not (type(index) is pd.RangeIndex and index.start == 0 and index.step == 1):
            return _same, (f,)
        labels = names(f)
        if not labels or not all(type(n) is str for n in labels) or len(set(labels)) != len(labels):
            return _same, (f,)
        kinds, parts = [], []
        for i in range(len(labels)):
            array = column(f, i)
            if isinstance(array, np.ndarray) and array.dtype.kind in _RAW_KINDS:
                kinds.append(array.dtype.str)
                parts.append(array)
            elif array.dtype == TIME_DTYPE:
                kinds.append(_TIME)
                parts.append(array.asi8)
            else:
                return _same, (f,)
        blob = bytearray(b"".join(a.tobytes() for a in parts))  # C order, copied
        return unpack, (labels, tuple(kinds), len(f), blob)


def unpack(
    labels: tuple[str, ...], kinds: tuple[str, ...], rows: int, blob: bytearray
) -> pd.DataFrame:
    """The frame a :class:`Compact` pickled: its columns are views of ``blob``."""
    arrays, at = {}, 0
    for label, kind in zip(labels, kinds, strict=True):
        array = np.frombuffer(blob, "<i8" if kind == _TIME else kind, rows, at)
        at += array.nbytes
        arrays[label] = times(array) if kind == _TIME else array
    return frame(arrays)


def _same(frame: pd.DataFrame) -> pd.DataFrame:
    return frame
