"""The pattern from the field, written the obvious way: every session polls the FTP server.

Served with ``panel serve benchmarks/peer_app.py`` (one process or ``--num-procs 3``).
Every browser session runs its own periodic callback every ``HEADRACE_PEER_INTERVAL``
seconds (0.2, headrace's tick) that, on the server's event loop:

- opens a NEW FTP connection and logs in (as the field code does: ``with FTP(...)``
  inside the callback), then for each file ``SIZE`` and ``REST`` + ``RETR`` of the bytes
  after the session's own offset;
- parses the complete lines with ``pandas.read_csv`` + ``to_datetime``;
- resamples to 25 ms periods (max, which keeps spikes), holding back the still-open last
  period so that no period is sent twice (fairer to the peer than the naive version,
  which would resend it);
- streams the new rows into its own ``ColumnDataSource`` with a raw ``cds.stream``
  (the field user wanted HoloViews; the raw path is the cheapest, so the comparison is
  fair to the peer).

A session starts at the files' current ends: no backfill. Configuration by environment:
``HEADRACE_PEER_FTP`` (comma-separated ``ftp://host:port/file`` URLs, anonymous),
``HEADRACE_PEER_INTERVAL``, ``HEADRACE_PEER_ROLLOVER``.
"""

from __future__ import annotations

import ftplib
import io
import os
from urllib.parse import urlsplit

import pandas as pd
import panel as pn
from bokeh.models import ColumnDataSource
from bokeh.plotting import figure

URLS = [u for u in os.environ.get("HEADRACE_PEER_FTP", "").split(",") if u]
INTERVAL = float(os.environ.get("HEADRACE_PEER_INTERVAL", "0.2"))
ROLLOVER = int(os.environ.get("HEADRACE_PEER_ROLLOVER", "2400"))
PERIOD = "25ms"


class Tail:
    """One session's view of one file: its offset, partial line and open period."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname, parts.port or 21, parts.path.lstrip("/")
        self.offset: int | None = None
        self.tail = b""
        self.pending = pd.DataFrame({"time": pd.to_datetime([], utc=True), "value": []})
        self.source = ColumnDataSource({"time": pd.to_datetime([], utc=True), "value": []})

    def poll(self, ftp: ftplib.FTP) -> None:
        size = ftp.size(self.path) or 0
        if self.offset is None or size < self.offset:
            self.offset = size  # first tick (or truncated): start at the end
            return
        if size == self.offset:
            return
        parts: list[bytes] = []
        ftp.retrbinary(f"RETR {self.path}", parts.append, rest=self.offset)
        data = self.tail + b"".join(parts)
        self.offset += sum(len(p) for p in parts)
        cut = data.rfind(b"\n") + 1
        self.tail = data[cut:]
        if cut:
            self._push(data[:cut])

    def _push(self, lines: bytes) -> None:
        df = pd.read_csv(io.BytesIO(lines), sep=" ", header=None, names=["time", "value"])
        df["time"] = pd.to_datetime(df["time"], format="ISO8601", utc=True)
        df = pd.concat([self.pending, df], ignore_index=True) if len(self.pending) else df
        last = df["time"].iloc[-1].floor(PERIOD)
        # The period of the newest line may still get lines: keep it for the next tick.
        self.pending = df[df["time"] >= last]
        done = df[df["time"] < last]
        if done.empty:
            return
        rows = done.set_index("time")["value"].resample(PERIOD).max().dropna()
        self.source.stream({"time": rows.index.values, "value": rows.to_numpy()}, ROLLOVER)


def session() -> pn.viewable.Viewable:
    tails = [Tail(u) for u in URLS]

    def tick() -> None:
        if not tails:
            return
        t = tails[0]
        with ftplib.FTP(timeout=10) as ftp:
            ftp.connect(t.host, t.port)
            ftp.login()
            ftp.sendcmd("TYPE I")
            for tail in tails:
                tail.poll(ftp)

    plots = []
    for url, t in zip(URLS, tails, strict=True):
        p = figure(
            title=url.rsplit("/", 1)[-1],
            x_axis_type="datetime",
            height=220,
            sizing_mode="stretch_width",
        )
        p.line("time", "value", source=t.source)
        plots.append(pn.pane.Bokeh(p))
    pn.state.add_periodic_callback(tick, period=int(INTERVAL * 1000))
    return pn.Column(*plots, sizing_mode="stretch_width")


session().servable(title="peer: per-session polling")
