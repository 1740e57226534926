"""Field strings -> numbers and times, the same whichever way a line was split.

Arrow casts are fast but fail a whole array for one bad element; a failing array
is bisected and the small pieces that still fail go to pandas. Arrow accepts a
subset of what pandas accepts and gives the same value for it, so a line's result
does not depend on its neighbours. Kept apart from :mod:`headrace.etl.parse.regex` so that the
parser's two paths (CSV and general) share one definition of a valid time/value.
"""

from __future__ import annotations

import math
import time
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pandas.api.extensions import ExtensionArray

from headrace.etl import pandas_internals as internals

__all__ = [
    "NAT",
    "TIME_RANGE",
    "epoch_ns",
    "ns",
    "parse_times",
    "parse_values",
    "time_problem",
    "value_problem",
]

NAT = np.iinfo(np.int64).min  # int64 ns of NaT: marks a time that did not parse
TIME_RANGE = "1677-09-21..2262-04-11"  # what datetime64[ns] holds, for reasons
_TIME_TEXT_MAX = 100  # longer than any time a format reads, ISO 8601 ones included
# Below this size a failing Arrow cast is not bisected further but left to pandas.
_MIN_BISECT = 1024


def ns(ns: np.ndarray) -> pa.Array:
    """int64 ns since the epoch as an Arrow timestamp[ns, UTC] array (no copy)."""
    return pa.array(ns, pa.int64()).view(pa.timestamp("ns", "UTC"))


def _cast(arr: pa.Array, to: pa.DataType, fallback) -> np.ndarray:
    """Arrow cast as numpy; pieces Arrow rejects go to ``fallback`` (bisecting)."""
    try:
        out = pc.cast(arr, to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if len(arr) <= _MIN_BISECT:
            return fallback(arr)
        mid = len(arr) // 2
        return np.concatenate([_cast(arr[:mid], to, fallback), _cast(arr[mid:], to, fallback)])
    if pa.types.is_timestamp(to):
        out = out.cast(pa.int64())
    return out.to_numpy(zero_copy_only=False)


def _pandas_numbers(arr: pa.Array) -> np.ndarray:
    series = pd.Series(arr.to_pandas().to_numpy(), dtype=object)
    return pd.to_numeric(series, errors="coerce").to_numpy(np.float64, na_value=np.nan)


def _to_ns(times: pd.DatetimeIndex) -> np.ndarray:
    """Nanoseconds since the epoch; NaT where the time does not fit in ns."""
    scale = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[times.unit]
    raw = times.asi8
    ok = (raw != NAT) & (np.abs(raw) <= np.iinfo(np.int64).max // scale)
    return np.where(ok, raw * np.where(ok, scale, 0), NAT)


def _pandas_times(fmt: str):
    def parse(arr: pa.Array) -> np.ndarray:
        texts = arr.to_pandas().to_numpy(object)
        times = pd.DatetimeIndex(pd.to_datetime(texts, format=fmt, utc=True, errors="coerce"))
        ns = _to_ns(times)
        if fmt == "ISO8601":
            # pandas also reads words such as "now" and "today"; ISO times start with a digit
            digit = pc.match_substring_regex(arr, r"^[0-9]").to_numpy(zero_copy_only=False)
            ns[~digit] = NAT
        return ns

    return parse


def parse_times(arr: pa.Array, fmt: str) -> np.ndarray:
    """int64 ns since the epoch (UTC), NaT where unparseable."""
    if fmt == "ISO8601":
        return _cast(arr, pa.timestamp("ns", "UTC"), _pandas_times(fmt))
    if fmt in ("epoch", "epoch_ms"):
        return epoch_ns(_cast(arr, pa.float64(), _pandas_numbers), fmt)
    return _pandas_times(fmt)(arr)


def epoch_ns(numbers: np.ndarray, fmt: str) -> np.ndarray:
    # Rounded to the microsecond: near today's epoch a float64 holds no finer, and
    # without rounding "…22.25" would come out as …22.249999872.
    us = np.rint(numbers * (1e6 if fmt == "epoch" else 1e3))
    ok = np.isfinite(us) & (np.abs(us) < 2.0**63 / 1000)
    return np.where(ok, np.where(ok, us, 0).astype(np.int64) * 1000, NAT)


def parse_values(arr: pa.Array) -> np.ndarray:
    """float64, NaN where unparseable (a literal "nan" counts as unparseable too).

    "inf" and numbers beyond float64 come out as +-inf: callers reject them as not finite.
    """
    return _cast(arr, pa.float64(), _pandas_numbers)


# Why a field was rejected, for the reason of a sampled malformed line: called once per
# sample (at most ``keep`` a tick), so plain Python. "" when there is nothing to add;
# never raises, as a reason must not cost the tick.


def value_problem(text: str) -> str:
    """What is wrong with a rejected value field beyond not parsing, or ""."""
    try:
        number = float(text)
    except (ValueError, OverflowError):
        return ""
    return "" if math.isfinite(number) else "not a finite number"


def time_problem(text: str, fmt: str) -> str:
    """What is wrong with a rejected time field beyond not parsing, or ""."""
    if len(text) > _TIME_TEXT_MAX:  # pandas takes quadratic time on long strings
        return ""
    try:
        if fmt in ("epoch", "epoch_ms"):
            number = float(text)
            if not math.isfinite(number):
                return "not a finite number"
            ns = abs(number) * (1e9 if fmt == "epoch" else 1e6)
            return f"outside {TIME_RANGE}" if ns >= 2.0**63 else ""
        if fmt == "ISO8601":
            if not text[:1].isdigit():
                return ""
            when = pd.Timestamp(text)  # wider than ns: years 1 to 9999
        else:
            when = pd.Timestamp(datetime.strptime(text, fmt))
        if when.tzinfo is None:
            when = when.tz_localize("UTC")
        inside = pd.Timestamp.min.tz_localize("UTC") <= when <= pd.Timestamp.max.tz_localize("UTC")
        return "" if inside else f"outside {TIME_RANGE}"
    except Exception:  # not a time at all: "bad time" says it
        return ""


def future_bound(max_future: str | pd.Timedelta | None) -> int | None:
    """``max_future`` (``"1h"``, a Timedelta, or None for no bound) in ns."""
    if max_future is None:
        return None
    try:
        ns = pd.Timedelta(max_future).value
    except (TypeError, ValueError):
        raise ValueError(f"max_future must be a duration like '1h', got {max_future!r}") from None
    if ns < 0:
        raise ValueError(f"max_future must not be negative, got {max_future!r}")
    return ns


def latest_ns(bound: int | None) -> int:
    """The newest time a line may have now: the clock plus ``bound`` ns (None: any)."""
    return np.iinfo(np.int64).max if bound is None else time.time_ns() + bound


def span(ns: int | None) -> str:
    """A duration for people, as one would write it in the config: ``1h``, ``90s``."""
    if ns is None:
        return "any time"
    for unit, size in (("d", 86_400 * 10**9), ("h", 3_600 * 10**9), ("min", 60 * 10**9)):
        if ns and ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns / 1e9:g}s"


def columns(table: pa.Table) -> dict[str, np.ndarray | ExtensionArray]:
    """The arrays of the contract's frame of parsed rows (``Table.to_pandas``'s fixed cost
    was half a tick's parse of a few lines): ``time`` (NaT for a null), ``value`` (NaN
    for a null) and ``key`` (``str``) if parsed."""
    times = pc.fill_null(table.column("time").cast(pa.int64()), NAT)
    out: dict[str, np.ndarray | ExtensionArray] = {
        "time": internals.times(times.to_numpy()),
        "value": table.column("value").to_numpy(),
    }
    if "key" in table.column_names:
        out["key"] = table.select(["key"]).to_pandas()["key"].array  # "str", as before
    return out
