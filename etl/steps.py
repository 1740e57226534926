"""What a transform is: called once per tick with the parsed rows, it returns a :class:`Step`.

A transform keeps no state of its own: what one tick leaves for the next goes back in
``Step.carry`` and comes in as ``carry`` (None the first time); the loop keeps it in its
state store across restarts, so it must stay small and picklable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar, runtime_checkable

import numpy as np
import pandas as pd
from pandas.api.extensions import ExtensionArray

from headrace.etl import pandas_internals as internals
from headrace.etl.store.pickles import by_fields

C = TypeVar("C")


@dataclass
class Step(Generic[C]):
    """What a transform returns for one tick."""

    frame: pd.DataFrame  # rows to publish, sorted by time, none published before
    carry: C | None  # what the next tick's call gets as ``carry``
    late: int = 0  # input rows not published: their window had closed (or none can hold them)
    carried: int = 0  # rows held in carry
    # Which input rows were late (positions in ``rows``) and by how much (ns; -1: no
    # window can hold the row): the loop keeps them as dead letters, reason "late".
    late_rows: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    lateness: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))


@runtime_checkable
class Transform(Protocol[C]):
    """Parsed rows of one tick -> the frame to publish, with state carried in ``C``."""

    def step(self, rows: pd.DataFrame, carry: C | None) -> Step[C]: ...


@dataclass(frozen=True)
class Held:
    """Rows a window holds between ticks, as arrays: building a frame of them, and reading
    it back at the next tick, cost more than the rest of a tick's step on a few rows."""

    times: np.ndarray  # ns since the epoch
    values: np.ndarray
    keys: ExtensionArray | None = None

    def __len__(self) -> int:
        return len(self.times)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, ExtensionArray | None]:
        return self.times, self.values, self.keys

    def __reduce__(self) -> tuple:
        # As its arrays' bytes: a carry goes to the loop and back at every tick, and numpy
        # pickles each array as an object to rebuild (~3x the time, 3x the bytes).
        arrays = (self.times, self.values)
        return _held, (*((a.dtype.str, a.tobytes()) for a in arrays), self.keys)

    def frame(self) -> pd.DataFrame:
        """The rows as a frame: ``time``, ``value`` and ``key`` if any."""
        rows = {"time": internals.times(self.times), "value": self.values}
        if self.keys is not None:
            rows["key"] = self.keys
        return internals.frame(rows)


def _held(times: tuple[str, bytes], values: tuple[str, bytes], keys: ExtensionArray | None) -> Held:
    def array(kept: tuple[str, bytes]) -> np.ndarray:
        return np.frombuffer(bytearray(kept[1]), kept[0])  # writable, as before

    return Held(array(times), array(values), keys)


@by_fields
@dataclass
class Carry:
    """A window's state between ticks (the name Resample's carry has always had)."""

    # Rows of windows still open: time, value and key if any (a frame in older carries).
    rows: Held | pd.DataFrame
    # ns since the epoch; windows starting before it are closed, whether or not they
    # had rows, and never published again.
    published_until: int | None = None
    watermark: int | None = None  # the latest event time seen (None: before grace existed)
    seen: float | None = None  # wall-clock time rows last came (for idle_close)
    # emit="early": the open windows as published so far, with their revision numbers.
    early: pd.DataFrame | None = None
    marks: dict[str, int] | None = None  # key_skew: each key's watermark
