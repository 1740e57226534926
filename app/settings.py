"""What a Panel process is told through its environment (``headrace serve`` sets it).

``DASK_SCHEDULER_ADDRESS`` (or dask's ``scheduler-address``), else the embedded
cluster's address; ``HEADRACE_WINDOW``: seconds of data kept per stream;
``HEADRACE_FOLLOW``: seconds of the newest data a plot shows while following;
``HEADRACE_HISTORY``: the SQLAlchemy URL of the history database, for looking back;
``HEADRACE_SPIKES``: the value above which the dashboard marks a row as a spike;
``HEADRACE_PREPARED``: sessions kept built ahead per page and process (0: none);
``HEADRACE_OPENS_WAITING``: opens that may wait for their turn per process before more
are refused.
"""

from __future__ import annotations

import logging
import os

from headrace.app.live.admission import LIMIT
from headrace.etl.contract import DEFAULT_SCHEDULER, configured_scheduler

log = logging.getLogger(__name__)

WINDOW_ENV = "HEADRACE_WINDOW"
DEFAULT_WINDOW = 600.0
FOLLOW_ENV = "HEADRACE_FOLLOW"
DEFAULT_FOLLOW = 60.0
HISTORY_ENV = "HEADRACE_HISTORY"
SPIKES_ENV = "HEADRACE_SPIKES"
PREPARED_ENV = "HEADRACE_PREPARED"
DEFAULT_PREPARED = 32  # ~2 MiB each: ~70 MiB per Panel process at most
OPENS_WAITING_ENV = "HEADRACE_OPENS_WAITING"
DEFAULT_OPENS_WAITING = LIMIT
FREEZE_ENV = "HEADRACE_FREEZE"


def scheduler_address() -> str:
    """The scheduler the app reads from."""
    return configured_scheduler() or DEFAULT_SCHEDULER


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        log.warning("%s=%r is not a number of seconds: using %s", name, raw, default)
        return default
    return value if value > 0 else default


def window_seconds() -> float:
    return _seconds(WINDOW_ENV, DEFAULT_WINDOW)


def follow_seconds() -> float:
    return _seconds(FOLLOW_ENV, DEFAULT_FOLLOW)


def spike_threshold() -> float | None:
    """The value above which the dashboard marks rows (None: no markers)."""
    raw = os.environ.get(SPIKES_ENV)
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        log.warning("%s=%r is not a number: no spike markers", SPIKES_ENV, raw)
        return None


def prepared_sessions() -> int:
    """Sessions each Panel process keeps built ahead per page (0: every open builds)."""
    return _count(PREPARED_ENV, DEFAULT_PREPARED)


def opens_waiting() -> int:
    """Opens each Panel process lets wait for their turn; beyond, an open is refused."""
    return _count(OPENS_WAITING_ENV, DEFAULT_OPENS_WAITING)


def freeze_sessions() -> bool:
    """Whether built sessions are frozen out of Python's full collections (default: yes;
    ``HEADRACE_FREEZE=0`` leaves CPython's collector as it is)."""
    return _count(FREEZE_ENV, 1) > 0


def _count(name: str, default: int) -> int:
    raw = os.environ.get(name)
    try:
        return max(0, int(raw)) if raw else default
    except ValueError:
        log.warning("%s=%r is not a whole number: using %d", name, raw, default)
        return default


def history_url() -> str | None:
    return os.environ.get(HISTORY_ENV) or None


def configure_logging() -> None:
    """Let ``headrace.app`` INFO lines through under ``panel serve``.

    Bokeh's ``--log-level`` sets only the ``bokeh`` logger; the root logger stays at
    WARNING, which would hide the subscriber's connect/resubscribe/gap lines. A level
    configured elsewhere is left alone.
    """
    logger = logging.getLogger("headrace")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
