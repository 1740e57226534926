"""How fresh a stream is, as one line a viewer can read: "live, 0.3 s behind".

From two numbers the subscriber keeps per stream: the time of the newest row and the
wall-clock time it arrived in this process. *Behind* is the worst delay from a row's
time to its arrival over the last few seconds, rounded up to a step of
:data:`BEHIND_STEPS` (0.1, 0.2, 0.3, 0.5, 0.8, 1 s...): a steady figure,
so that the line (and the message to every session that shows it) changes only when
the pipeline's delay does. Nothing here touches the cluster.
"""

from __future__ import annotations

import time
from collections import deque

MIN_STALE_AFTER = 1.5  # seconds without new rows before a stream counts as stale
STALE_TICKS = 5  # ... or this many of its tick intervals, whichever is longer
LAG_WINDOW = 5.0  # seconds over which "behind" is the worst delay seen
# "Behind" is rounded up to one of these (seconds): fine where delays are small, coarse
# where they jitter, so that the text, and a message to every viewer, changes seldom.
BEHIND_STEPS = (0.1, 0.2, 0.3, 0.5, 0.8, 1, 1.5, 2, 3, 5, 8, 10, 15, 20, 30, 60)


class Lag:
    """The worst delay between a row's time and its arrival, over the last ``window`` s."""

    __slots__ = ("_recent", "window")

    def __init__(self, window: float = LAG_WINDOW) -> None:
        self.window = window
        self._recent: deque[tuple[float, float]] = deque()

    def add(self, arrived: float, newest_ns: int) -> None:
        self._recent.append((arrived, arrived - newest_ns / 1e9))
        while self._recent[0][0] < arrived - self.window:
            self._recent.popleft()

    def worst(self) -> float | None:
        return max(lag for _, lag in self._recent) if self._recent else None


def stale_after(interval: float) -> float:
    """Seconds without new rows after which a stream ticking every ``interval`` s is stale."""
    return max(MIN_STALE_AFTER, STALE_TICKS * interval)


def describe(
    lag: float | None,
    arrived: float | None,
    interval: float = 0.0,
    now: float | None = None,
) -> str:
    """``live, 0.3 s behind`` / ``stale: no data for 12 s`` / ``waiting for data``.

    ``lag`` is the stream's recent worst delay (:class:`Lag`), ``arrived`` the
    wall-clock seconds when rows last arrived, ``interval`` the stream's tick.
    """
    if lag is None or arrived is None:
        return "waiting for data"
    now = time.time() if now is None else now
    quiet = now - arrived
    if quiet > stale_after(interval):
        return f"stale: no data for {_seconds(quiet)}"
    behind = next((step for step in BEHIND_STEPS if lag <= step + 1e-9), None)
    return f"live, {_seconds(lag) if behind is None else f'{behind:g} s'} behind"


def is_live(text: str) -> bool:
    return text.startswith("live")


def _seconds(value: float) -> str:
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"
