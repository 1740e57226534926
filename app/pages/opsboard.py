"""What the operator page shows, gathered once per process every 2 s while someone looks.

One :class:`OpsBoard` per process reads the loop's health records, the Panel processes'
records (:mod:`headrace.app.telemetry`) and the scheduler's identity, renders them once and
offers the result to every open operator page, as :class:`headrace.app.pages.board.Board` does for
viewers. Viewers' sessions are not involved: an operator looking costs them nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import time
from dataclasses import dataclass
from typing import Any

from headrace.app.live.subscriber import Subscriber
from headrace.app.pages.board import Board
from headrace.app.pages.template import badge
from headrace.app.telemetry import viewer_records
from headrace.etl import contract
from headrace.etl.contract.health import HealthRecord, StreamStatus, statuses
from headrace.etl.contract.loops import ACTIVE, LoopRecord, loop_records

log = logging.getLogger(__name__)

PERIOD_MS = 2000
STALE_AFTER = 30.0  # seconds without a publication: stale (as `headrace status`)
MALFORMED_SHOWN = 12


@dataclass(frozen=True)
class OpsView:
    """The operator page's content, rendered once for all its sessions."""

    state: str  # ok | stale | failing | unknown
    headline: str
    streams: str  # HTML
    malformed: str
    viewers: str
    cluster: str
    dashboard: str  # the Dask dashboard's URL, or ""


def _table(head: list[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f"<p><i>{html.escape(empty)}</i></p>"
    th = "".join(f'<th style="text-align:left;padding:4px 10px">{h}</th>' for h in head)
    body = "".join(
        "<tr>" + "".join(f'<td style="padding:4px 10px">{c}</td>' for c in row) + "</tr>"
        for row in rows
    )
    return f'<table style="border-collapse:collapse;width:100%"><tr>{th}</tr>{body}</table>'


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.0f} min"


def streams_table(found: list[StreamStatus], records: dict[str, HealthRecord], now: float) -> str:
    rows = []
    for s in found:
        r = records.get(s.stream) or HealthRecord(s.stream)
        since = r.since_start
        error = "none"
        if s.error:
            error = html.escape(s.error[:200])
            if s.error_since:
                error += f" <small>(since {_ago(now - s.error_since)} ago)</small>"
        rows.append(
            [
                f"<b>{html.escape(s.stream)}</b>",
                badge(s.state, s.state.upper()),
                str(s.seq),
                _ago(s.lag_seconds),
                f"{s.lines_per_second:,.1f}",
                f"{s.rows_per_second:,.1f}",
                f"{s.malformed:,} <small>({s.malformed_since_start:,} since start)</small>",
                f"{r.late:,} <small>({since.get('late', 0):,})</small>",
                f"{r.overruns:,}",
                f"{r.transfers:,}",
                error,
            ]
        )
    head = ["Stream", "State", "Seq", "Last published", "Lines/s", "Rows/s", "Malformed"]
    head += ["Late rows", "Overruns", "Transfers", "Last error"]
    return _table(head, rows, "no stream has reported: is `headrace etl` running?")


def malformed_table(records: dict[str, HealthRecord]) -> str:
    rows = []
    for stream, r in sorted(records.items()):
        for m in reversed(r.samples):
            rows.append([stream, f"{m.source}:{m.line}", m.reason, repr(m.text)[:160]])
    rows = [[html.escape(str(c)) for c in row] for row in rows[:MALFORMED_SHOWN]]
    rows = [[f"<b>{a}</b>", f"<code>{b}</code>", c, f"<code>{d}</code>"] for a, b, c, d in rows]
    return _table(["Stream", "File:line", "Reason", "Line"], rows, "no malformed lines")


def viewers_table(processes: list[dict[str, Any]]) -> str:
    rows = [
        [
            html.escape(p["process"]),
            f"{p.get('sessions', 0):,}",
            f"{p.get('behind', 0):,}",
            f"{p.get('messages', 0):,}",
            f"{p.get('sent_bytes', 0) / 1e6:,.1f} MB",
            f"{p.get('skipped_rows', 0):,}",
            f"{p.get('frames', 0):,}",
        ]
        for p in processes
    ]
    head = ["Panel process", "Sessions", "Behind", "Messages", "Sent", "Skipped rows", "Frames"]
    return _table(head, rows, "no Panel process has reported yet")


def cluster_html(address: str, identity: dict[str, Any] | None, dashboard: str) -> str:
    if identity is None:
        return f"<p>{badge('failing', 'UNREACHABLE')} scheduler {html.escape(address)}</p>"
    memory = identity.get("total_memory", 0) / 2**30
    link = (
        f' · <a href="{html.escape(dashboard)}" target="_blank">Dask dashboard</a>'
        f' (<a href="{html.escape(dashboard.replace("/status", "/tasks"))}" '
        'target="_blank">task stream</a>)'
        if dashboard
        else ""
    )
    return (
        f"<p>scheduler <code>{html.escape(address)}</code>: {identity.get('n_workers', 0)} "
        f"workers, {identity.get('total_threads', 0)} threads, {memory:.1f} GiB{link}</p>"
    )


def loops_html(loops: list[LoopRecord], now: float) -> str:
    """The tick loops: the active one, those waiting to take over, those gone."""
    if not loops:
        return ""
    said = []
    for p in loops:
        if p.gone(now):
            state, word = "unknown", "GONE"
        elif p.role == ACTIVE:
            state, word = "ok", "ACTIVE"
        else:
            state, word = "stale", "WAITING"
        epoch = f", epoch {p.epoch}" if p.role == ACTIVE and not p.gone(now) else ""
        when = (
            f"last heard {_ago(now - p.reported)} ago"
            if p.gone(now)
            else f"for {_ago(now - p.since)}"
        )
        said.append(f"{badge(state, word)} <code>{html.escape(p.holder)}</code>{epoch}, {when}")
    return "<p>tick loops: " + " · ".join(said) + "</p>"


def render(
    address: str,
    records: dict[str, HealthRecord],
    processes: list[dict],
    identity: dict | None,
    dashboard: str,
    now: float | None = None,
    loops: list[LoopRecord] | None = None,
) -> OpsView:
    now = time.time() if now is None else now
    found = statuses(records, STALE_AFTER, now)
    failing = [s.stream for s in found if s.state == "failing"]
    stale = [s.stream for s in found if s.state == "stale"]
    if identity is None:
        state, headline = "failing", "scheduler unreachable"
    elif failing:
        state, headline = "failing", f"{len(failing)} failing: {', '.join(failing)}"
    elif stale:
        state, headline = "stale", f"{len(stale)} stale: {', '.join(stale)}"
    elif found:
        state, headline = "ok", f"{len(found)} of {len(found)} streams healthy"
    else:
        state, headline = "unknown", "no stream has reported"
    return OpsView(
        state,
        headline,
        streams_table(found, records, now),
        malformed_table(records),
        viewers_table(processes),
        cluster_html(address, identity, dashboard) + loops_html(loops or [], now),
        dashboard,
    )


WAITING = OpsView("unknown", "connecting…", "", "", "", "<p><i>connecting…</i></p>", "")


class OpsBoard(Board):
    """The process's operator view, refreshed every :data:`PERIOD_MS` while pages are open."""

    def __init__(self, subscriber: Subscriber, period_ms: int = PERIOD_MS) -> None:
        super().__init__(subscriber, period_ms)
        self.latest: OpsView = WAITING
        self._gathering: asyncio.Task | None = None

    def status(self) -> OpsView:  # type: ignore[override]
        """The newest view; starts gathering the next one (the page shows it next period)."""
        if self._viewers and (self._gathering is None or self._gathering.done()):
            with contextlib.suppress(RuntimeError):  # no loop: a test calling it directly
                self._gathering = asyncio.get_running_loop().create_task(self.gather())
        return self.latest

    async def gather(self) -> OpsView:
        sub = self.subscriber
        client = sub.client
        if client is None or not sub.connected.is_set():
            self.latest = render(sub.address, {}, [], None, "")
            return self.latest
        try:
            records = await contract.health_records(client)
            processes = await viewer_records(client)
            identity = await client.scheduler.identity(n_workers=0)
            loops = await loop_records(client)
        except Exception as exc:  # the scheduler is away
            log.info("ops: cannot read the scheduler %s: %s", sub.address, exc)
            records, processes, identity, loops = {}, [], None, []
        link = client.dashboard_link
        self.latest = render(sub.address, records, processes, identity, link, loops=loops)
        return self.latest
