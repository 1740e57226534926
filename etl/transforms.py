"""Transforms: parsed rows -> frames to publish, with state carried between ticks.

A :class:`Transform` is called as ``transform.step(rows, carry) -> Step`` once per tick
(:mod:`headrace.etl.steps`). :class:`Map` makes a transform of a stateless
``DataFrame -> DataFrame`` function; windows (tumbling, hopping, session) are in
:mod:`headrace.etl.windows`.

:class:`Resample` is the tumbling window headrace has always used: it publishes a period
only once it is closed, i.e. once a row of a later period has been seen. A closed period
is never published again: rows that arrive for it afterwards are dropped and counted
as ``late``, as are rows no period can hold (a NaT time, or one so close to the
earliest datetime64[ns] that its period would start before it). Every input row ends
up in exactly one place:
``sum(frame["count"]) + late`` over all steps ``+ carried`` of the last step equals
the number of rows ever passed in.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from headrace.etl.contract.frames import conform, empty_frame
from headrace.etl.steps import Carry, Step, Transform
from headrace.etl.windows.aggregate import AGGS
from headrace.etl.windows.fixed import Tumbling

# conform and empty_frame live in the contract (headrace.etl.contract.frames), Step and
# Carry in headrace.etl.steps; kept here for code that imported them from this module.
__all__ = ["AGGS", "Carry", "Map", "Resample", "Step", "Transform", "conform", "empty_frame"]


class Resample(Tumbling):
    """Aggregate ``value`` per period (per ``key`` and period if rows have a key).

    A :class:`~headrace.etl.windows.Tumbling` window of one aggregation whose watermark
    moves once per tick. Output columns: ``time`` (period start), ``value`` (the
    aggregate), ``count`` (rows in the period) and ``key``.
    """

    def __init__(self, period: str | pd.Timedelta = "25ms", agg: str = "mean") -> None:
        if agg not in AGGS:
            raise ValueError(f"unknown agg {agg!r}: use one of {', '.join(AGGS)}")
        try:
            super().__init__(period, agg=agg)
        except ValueError as exc:
            raise ValueError(f"period must be positive, got {period!r} ({exc})") from None
        self.period = pd.Timedelta(self.size_ns, "ns")
        self.period_ns = self.size_ns
        self.agg = agg

    def __repr__(self) -> str:
        return f"Resample({str(self.period)!r}, agg={self.agg!r})"


class Map:
    """A stateless ``DataFrame -> DataFrame`` function as a :class:`Transform` (no carry).

    Its output is checked and coerced to the contract: ``time`` and ``value`` columns
    required (ValueError naming what is missing), ``time`` as datetime64[ns, UTC],
    ``value`` as float64, rows sorted by time.
    """

    def __init__(self, fn: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    def __repr__(self) -> str:
        return f"Map({self.fn!r})"

    def step(self, rows: pd.DataFrame, carry: None = None) -> Step[None]:
        out = conform(self.fn(rows), f"transform {self.__name__!r}")
        out = out.sort_values("time", kind="stable", ignore_index=True)
        return Step(out, None, 0, 0)
