"""How fresh a stream is, as one line a viewer can read: "live, 0.2 s behind".

Computed from two numbers the subscriber already keeps per stream: the time of the
newest row and the wall-clock time it arrived in this process. A session formats this
once a second; nothing here touches the cluster.
"""

from __future__ import annotations

import time

MIN_STALE_AFTER = 3.0  # seconds without new rows before a stream counts as stale
STALE_TICKS = 5  # ... or this many of its tick intervals, whichever is longer


def stale_after(interval: float) -> float:
    """Seconds without new rows after which a stream ticking every ``interval`` s is stale."""
    return max(MIN_STALE_AFTER, STALE_TICKS * interval)


def describe(
    newest_ns: int | None,
    arrived: float | None,
    interval: float = 0.0,
    now: float | None = None,
) -> str:
    """``live, 0.2 s behind`` / ``stale: no data for 12 s`` / ``waiting for data``.

    ``newest_ns`` is the newest row's time (ns since the epoch), ``arrived`` the
    wall-clock seconds when rows last arrived, ``interval`` the stream's tick.
    Behind is measured from the newest row to now, so it is what a viewer sees.
    """
    if newest_ns is None or arrived is None:
        return "waiting for data"
    now = time.time() if now is None else now
    quiet = now - arrived
    if quiet > stale_after(interval):
        return f"stale: no data for {_seconds(quiet)}"
    behind = max(0.0, now - newest_ns / 1e9)
    return f"live, {behind:.1f} s behind"


def is_live(text: str) -> bool:
    return text.startswith("live")


def _seconds(value: float) -> str:
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"
