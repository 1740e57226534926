"""Prometheus figures of the Panel processes, served at ``/metrics`` on the dashboard port.

``headrace serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` before ``panel serve --num-procs``
forks: every process writes its figures to files there (``prometheus_client``'s
multiprocess mode), and a scrape of ``/metrics``, whichever process answers it, returns
every process's, labelled ``process="<pid>"``. Without the variable (``panel serve`` run
by hand) ``/metrics`` returns the answering process's own.

No label names a session: a figure per session would grow without bound.
``panel serve --plugins headrace.app.metrics`` adds the route (:data:`ROUTES`).

When the server authenticates viewers (``--basic-auth``, ``--oauth-provider``), so does
``/metrics``: a logged-in browser's cookie, the basic-auth credentials as HTTP Basic
(what Prometheus' ``basic_auth`` sends), or ``Authorization: Bearer <token>`` with the
token in the file ``HEADRACE_METRICS_TOKEN_FILE`` names (Prometheus' ``authorization``
with ``credentials_file``). Anyone else gets 401 and no figures.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
from pathlib import Path
from typing import Any

import psutil
from bokeh.server.views.auth_request_handler import AuthRequestHandler
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
TOKEN_ENV = "HEADRACE_METRICS_TOKEN_FILE"
LABELS = ["process"]
REGISTRY = CollectorRegistry()  # this process's own, when not in multiprocess mode


def _multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def _counter(name: str, doc: str) -> Counter:
    return Counter(name, doc, LABELS, registry=REGISTRY)


SESSIONS = Gauge(
    "headrace_viewer_sessions",
    "Sessions open in this Panel process.",
    LABELS,
    registry=REGISTRY,
    # One process per label set; "live": a dead process's value goes (see exposition).
    multiprocess_mode="livesum",
)
BEHIND = Gauge(
    "headrace_viewer_sessions_behind",
    "Sessions whose browser has not yet taken the newest rows (slow or stalled readers).",
    LABELS,
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
WAITING = Gauge(
    "headrace_session_opens_waiting",
    "Session opens waiting for their turn to be built (admission control).",
    LABELS,
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
PREPARED = Gauge(
    "headrace_sessions_prepared",
    "Sessions built ahead and waiting for an open of their page.",
    LABELS,
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
COUNTERS = {  # fan-out / subscriber counter -> metric
    "messages": _counter("headrace_viewer_messages", "Row messages sent to sessions."),
    "sent_bytes": _counter("headrace_viewer_sent_bytes", "Bytes of row messages sent."),
    "skipped_rows": _counter(
        "headrace_viewer_skipped_rows", "Rows slow sessions skipped to catch up."
    ),
    "frames": _counter("headrace_frames_fetched", "Frames fetched from the cluster."),
    "gaps": _counter("headrace_gaps_filled", "Times a missed frame announcement was filled in."),
    "rows": _counter("headrace_rows_ingested", "Rows taken into this process's windows."),
    "builds": _counter(
        "headrace_session_builds", "Pages built for a session (ours or a user's app)."
    ),
    "refused": _counter(
        "headrace_session_refused",
        "Session opens refused because too many were waiting in the process.",
    ),
    "copied": _counter(
        "headrace_session_copies",
        "Session opens made as a copy of a page the process built earlier (no build).",
    ),
    "copy_failed": _counter(
        "headrace_session_copy_failures",
        "Session copies that failed and were built instead (the reason is logged once).",
    ),
    "adopted": _counter(
        "headrace_session_prepared_opens",
        "Session opens that took a session built ahead (no build while the viewer waited).",
    ),
    "opened": _counter(
        "headrace_session_opens", "Sessions whose browser loaded the page (reported ready)."
    ),
    "build_total": _counter(
        "headrace_session_build_seconds",
        "Seconds this process's event loop spent building sessions (opens and ahead).",
    ),
    "gc_seconds": _counter(
        "headrace_gc_seconds",
        "Seconds Python's garbage collector held this process (and its event loop).",
    ),
    "gc_full": _counter(
        "headrace_gc_full_collections",
        "Full collections of sessions' objects (frozen after each build; collected once "
        "half as many sessions as are open closed, or eight times as many were built).",
    ),
    "view_calls": _counter(
        "headrace_view_calls", "Live views' functions called (once per view per tick)."
    ),
    "view_renders": _counter(
        "headrace_view_renders", "Live views rendered (once per view, again for a new key)."
    ),
}
FANOUT_SECONDS = Histogram(
    "headrace_fanout_duration_seconds",
    "Time one fan-out flush takes (every session of the process).",
    LABELS,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
    registry=REGISTRY,
)
VIEWER_LAG = Histogram(
    "headrace_viewer_lag_seconds",
    "From a stream's newest row time to the fan-out sending it.",
    LABELS,
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)


class ProcessFigures:
    """Advances this process's counters to the totals it is given (which only grow)."""

    def __init__(self) -> None:
        self.pid = str(os.getpid())
        self.seen: dict[str, float] = {}

    def update(self, totals: dict[str, Any]) -> None:
        for key, counter in COUNTERS.items():
            value = float(totals.get(key, 0))
            delta = value - self.seen.get(key, 0.0)
            if delta > 0:
                counter.labels(self.pid).inc(delta)
                self.seen[key] = value
        SESSIONS.labels(self.pid).set(totals.get("sessions", 0))
        BEHIND.labels(self.pid).set(totals.get("behind", 0))
        WAITING.labels(self.pid).set(totals.get("waiting", 0))
        PREPARED.labels(self.pid).set(totals.get("prepared", 0))

    def flushed(self, seconds: float, lags: list[float]) -> None:
        """From the fan-out: a flush took ``seconds``, carrying rows ``lags`` seconds old."""
        FANOUT_SECONDS.labels(self.pid).observe(seconds)
        for lag in lags:
            VIEWER_LAG.labels(self.pid).observe(max(0.0, lag))


def exposition() -> bytes:
    """Every process's figures (multiprocess mode) or this process's, in the text format."""
    if _multiprocess():
        forget_dead_processes(os.environ[MULTIPROC_ENV])
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def forget_dead_processes(directory: str) -> None:
    """Drop the gauges of Panel processes that died (SIGKILL, OOM): a process Tornado
    forked in a dead one's place must not be counted beside its predecessor's sessions.
    Their counters stay: what they sent was sent."""
    for path in Path(directory).glob("gauge_live*_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        if not psutil.pid_exists(pid):
            multiprocess.mark_process_dead(pid, directory)


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def basic_ok(user: str, password: str, configured: str | None) -> bool:
    """``user:password`` against Panel's ``--basic-auth`` (one password, or a JSON users file)."""
    if not configured:
        return False
    if os.path.isfile(configured):
        users = json.loads(Path(configured).read_text())
        return user in users and _same(password, str(users[user]))
    return _same(password, configured)


class MetricsHandler(AuthRequestHandler):
    def get(self) -> None:
        if not self._allowed():
            self.set_status(401)
            self.set_header("WWW-Authenticate", 'Basic realm="headrace metrics"')
            self.finish("401: log in, or send the basic-auth credentials or the metrics token\n")
            return
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.write(exposition())

    def _allowed(self) -> bool:
        provider = self.application.auth_provider
        if provider.get_user is None and provider.get_user_async is None:
            return True  # the server authenticates nobody: neither does /metrics
        if self.current_user:  # a logged-in browser (cookie)
            return True
        kind, _, value = self.request.headers.get("Authorization", "").partition(" ")
        if kind.lower() == "bearer" and os.environ.get(TOKEN_ENV):
            token = Path(os.environ[TOKEN_ENV]).read_text().strip()
            return bool(token) and _same(value.strip(), token)
        if kind.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            from panel.config import config

            return basic_ok(user, password, config.basic_auth)
        return False


ROUTES = [(r"/metrics", MetricsHandler, {})]
