"""The settings windows share: durations that name themselves when they do not parse."""

from __future__ import annotations

import pandas as pd


def duration(value: object, setting: str, *, zero: bool = False) -> int:
    """``value`` ("25ms", "2s", a Timedelta) in ns; ValueError naming ``setting``."""
    try:
        ns = int(pd.Timedelta(value).value)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise ValueError(f"{setting}: {value!r} is not a duration (e.g. 25ms, 2s, 1min)") from None
    if ns < 0 or (ns == 0 and not zero):
        raise ValueError(f"{setting}: must be {'>= 0' if zero else 'positive'}, got {value!r}")
    return ns


def seconds(value: object, setting: str) -> float:
    """A wall-clock bound in seconds (a number, or a duration string)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"{setting}: must be positive, got {value!r}")
        return float(value)
    return duration(value, setting) / 1e9


def text(ns: int) -> str:
    """A duration for reprs and messages: 25ms, 2s, 1min."""
    for unit, size in (
        ("h", 3_600_000_000_000),
        ("min", 60_000_000_000),
        ("s", 10**9),
        ("ms", 10**6),
    ):
        if ns % size == 0:
            return f"{ns // size}{unit}"
    return str(pd.Timedelta(ns, "ns"))
