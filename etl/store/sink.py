"""History: every published frame into a SQL database, exactly once, never in the live path.

The loop queues each frame in its state store's backlog in the same transaction that
moves the stream past it (:meth:`headrace.etl.store.state.StateStore.save`), so a frame is queued
exactly once whatever kills the loop. :func:`drain` writes the backlog, oldest first, to
each stream's database (:class:`Sink`), one transaction per batch that writes a frame
only if ``headrace_frames`` does not have it yet, then unqueues it. A database that is
down or slow holds up only the backlog, which lives on local disk and is bounded.
The schema is :mod:`headrace.etl.contract.history`; a revision of a row published early
replaces it (:mod:`headrace.etl.store.rollups`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import sqlalchemy as sa

from headrace.etl.contract import history
from headrace.etl.store import pickles, rollups
from headrace.etl.store.database import check_url, make_engine, resolve_url, shown
from headrace.etl.store.state import Queued, StateStore

log = logging.getLogger(__name__)

BATCH = 200  # frames per transaction
DEFAULT_BACKLOG_BYTES = 1 << 30
PRUNE_EVERY = 60.0  # seconds between retention passes
PRUNE_SLICE = pd.Timedelta(minutes=10)  # rows deleted per statement: readers are not locked out
RETRY_START, RETRY_CAP = 1.0, 30.0


@dataclass(frozen=True)
class SinkSpec:
    """Where a stream's history goes: a SQLAlchemy URL, how long rows are kept.

    Unset fields come from the loop's defaults (:meth:`defaults`), the URL at last from
    the state directory (a SQLite file there: nothing to set up).
    """

    url: str | None = None
    retention: pd.Timedelta | None = None  # None: kept for ever
    password_env: str | None = None  # the password, if not in the URL

    @classmethod
    def parse(cls, raw: Mapping[str, object]) -> SinkSpec:
        """From a config mapping: ``{url: ..., retention: 30d, password_env: ...}``."""
        unknown = set(raw) - {"url", "retention", "password_env"}
        if unknown:
            raise ValueError(
                f"unknown settings {sorted(unknown)}: use url, retention, password_env"
            )
        retention = raw.get("retention")
        try:
            # "30d", as people write it (pandas wants "30D" for days).
            text = re.sub(r"(?<=\d)d\b", "D", str(retention))
            span = pd.Timedelta(text) if retention is not None else None
        except ValueError:
            raise ValueError(f"retention {retention!r} is not a duration such as 30d") from None
        if span is not None and span <= pd.Timedelta(0):
            raise ValueError(f"retention must be positive, got {retention!r}")
        url = check_url(raw["url"]) if raw.get("url") is not None else None
        password_env = raw.get("password_env")
        return cls(
            url,
            span,
            str(password_env) if password_env else None,
        )

    def defaults(self, other: SinkSpec, state_dir: str | os.PathLike) -> SinkSpec:
        """This spec with its unset fields from ``other``, then the state directory."""
        url = self.url or other.url or f"sqlite:///{os.path.abspath(state_dir)}/history.sqlite"
        return SinkSpec(
            url,
            self.retention if self.retention is not None else other.retention,
            self.password_env or other.password_env,
        )

    def engine_url(self) -> sa.URL:
        if self.url is None:
            raise ValueError("no database URL: resolve the spec with defaults() first")
        return resolve_url(self.url, self.password_env)

    def display(self) -> str:
        """The URL with any password hidden: safe to log."""
        return shown(self.url)


def encode(frame: pd.DataFrame) -> bytes:
    """A frame as the backlog keeps it.

    Pickle, not Arrow IPC: the loop and its writer run the same version, and it costs the
    loop no conversion (Arrow's from_pandas starts its thread pool on the loop's thread).
    """
    return pickles.dumps(frame)


def decode(data: bytes) -> pd.DataFrame:
    return pickles.loads(data)


def _rows(stream: str, seq: int, frame: pd.DataFrame) -> pd.DataFrame:
    """A frame as ``headrace_rows`` rows: naive UTC times, '' for no key, count 1 if absent."""
    times = frame["time"]
    if isinstance(times.dtype, pd.DatetimeTZDtype):
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    n = len(frame)
    return pd.DataFrame(
        {
            "stream": stream,
            "key": frame["key"].astype(str) if "key" in frame else "",
            "time": times.astype("datetime64[us]"),
            "value": frame["value"].astype(float),
            "count": frame["count"].astype("int64") if "count" in frame else np.ones(n, "int64"),
            "seq": seq,
            **({"revision": frame["revision"].to_numpy()} if "revision" in frame else {}),
        }
    )


def _further(rows: pd.DataFrame, frame: pd.DataFrame) -> list[pd.DataFrame]:
    """A frame's further value columns (``value_<agg>``) as ``headrace_values`` rows, a
    part per column."""
    names = [c for c in frame.columns if c.startswith("value_") and frame[c].dtype.kind in "fiub"]
    keys = rows[["stream", "key", "time", "seq"]]
    return [keys.assign(name=name, value=frame[name].to_numpy(float)) for name in names]


class Sink:
    """One database: writes frames with their rollups, exactly once, and prunes old rows."""

    def __init__(self, spec: SinkSpec) -> None:
        self.spec = spec
        self.engine = make_engine(spec.engine_url())
        self._created = False

    def write(self, queued: list[Queued]) -> int:
        """Write the frames not written before, in one transaction; return rows written."""
        if not self._created:
            history.create(self.engine)
            self._created = True
        with self.engine.begin() as conn:
            fresh = self._unwritten(conn, queued)
            if not fresh:
                return 0
            decoded = [decode(q.frame) for q in fresh]
            each = [_rows(q.stream, q.seq, f) for q, f in zip(fresh, decoded, strict=True)]
            new = pd.concat(each)
            further = [p for r, f in zip(each, decoded, strict=True) for p in _further(r, f)]
            rollups.write(conn, new, further)
            now = datetime.now(UTC).replace(tzinfo=None)
            conn.execute(sa.insert(history.frames), [_frame_record(q, new, now) for q in fresh])
        return len(new)

    def _unwritten(self, conn: sa.Connection, queued: list[Queued]) -> list[Queued]:
        t, written = history.frames, set()
        for stream in {q.stream for q in queued}:
            seqs = [q.seq for q in queued if q.stream == stream]
            query = sa.select(t.c.seq).where(t.c.stream == stream, t.c.seq.in_(seqs))
            written |= {(stream, s) for (s,) in conn.execute(query)}
        fresh, seen = [], set(written)
        for q in queued:  # a frame queued twice (it cannot be, but) is written once
            if (q.stream, q.seq) not in seen:
                seen.add((q.stream, q.seq))
                fresh.append(q)
        return fresh

    def prune(self, stream: str, now: pd.Timestamp) -> int:
        """Delete ``stream``'s rows older than the retention, a slice per transaction."""
        if self.spec.retention is None:
            return 0
        cutoff = (now - self.spec.retention).tz_convert("UTC").tz_localize(None)
        deleted = 0
        for table in (history.rows, history.values, *(lv.table for lv in history.LEVELS)):
            mine = sa.and_(table.c.stream == stream, table.c.time < cutoff.to_pydatetime())
            while True:
                with self.engine.begin() as conn:
                    oldest = conn.execute(sa.select(sa.func.min(table.c.time)).where(mine)).scalar()
                    if oldest is None:
                        break
                    edge = min(pd.Timestamp(oldest) + PRUNE_SLICE, cutoff).to_pydatetime()
                    cond = sa.and_(mine, table.c.time <= edge)
                    deleted += conn.execute(sa.delete(table).where(cond)).rowcount or 0
        return deleted


def _frame_record(q: Queued, rows: pd.DataFrame, now: datetime) -> dict:
    mine = rows[(rows["stream"] == q.stream) & (rows["seq"] == q.seq)]["time"]
    first = mine.min().to_pydatetime() if len(mine) else None
    last = mine.max().to_pydatetime() if len(mine) else None
    return dict(
        stream=q.stream, seq=q.seq, rows=len(mine), first_time=first, last_time=last, written_at=now
    )


def sinks_for(specs: Mapping[str, SinkSpec]) -> dict[str, Sink]:
    """One :class:`Sink` (one engine) per distinct setting, by stream."""
    made: dict[SinkSpec, Sink] = {}
    out = {}
    for name, spec in specs.items():
        if spec not in made:
            made[spec] = Sink(spec)
        out[name] = made[spec]
    return out


async def drain(
    store: StateStore,
    sinks: Mapping[str, Sink],
    stop: asyncio.Event,
    max_backlog: int = DEFAULT_BACKLOG_BYTES,
    idle: float = 0.5,
) -> None:
    """Write the backlog to each stream's sink until ``stop``; log each change of state."""
    failures, last_error, next_prune = 0, None, 0.0
    while not stop.is_set():
        wait = idle
        try:
            dropped = store.trim_backlog(max_backlog)
            if dropped:
                log.error(
                    "history: backlog over %d bytes: dropped the %d oldest frames",
                    max_backlog,
                    dropped,
                )
            written = await asyncio.to_thread(_write_batch, store, sinks)
            if failures:
                log.info(
                    "history: database reachable again after %d failed writes; backlog %d frames",
                    failures,
                    store.backlog()[0],
                )
            failures, last_error = 0, None
            if written == BATCH:
                wait = 0.0  # more waiting: go on at once
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_EVERY
                await asyncio.to_thread(_prune, sinks)
        except Exception as exc:
            failures += 1
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            if error != last_error:
                frames, size = store.backlog()
                log.error(
                    "history: write failed, %d frames (%d bytes) wait in the backlog: %s",
                    frames,
                    size,
                    error,
                )
            last_error = error
            wait = min(RETRY_START * 2 ** (failures - 1), RETRY_CAP)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait)


def _write_batch(store: StateStore, sinks: Mapping[str, Sink]) -> int:
    """Write the oldest frames of the backlog; unqueue what each database took."""
    queued = store.queued(BATCH)
    by_sink: dict[int, tuple[Sink, list[Queued]]] = {}
    orphans = []  # streams that no longer have history: nothing to write them to
    for q in queued:
        sink = sinks.get(q.stream)
        if sink is None:
            orphans.append(q.id)
        else:
            by_sink.setdefault(id(sink), (sink, []))[1].append(q)
    store.unqueue(orphans)
    failed: Exception | None = None
    for sink, batch in by_sink.values():
        try:
            sink.write(batch)
        except Exception as exc:  # one database down must not hold up the others
            failed = failed or exc
        else:
            store.unqueue([q.id for q in batch])
    if failed is not None:
        raise failed
    return len(queued)


def _prune(sinks: Mapping[str, Sink]) -> None:
    now = pd.Timestamp.now(tz="UTC")
    for stream, sink in sinks.items():
        deleted = sink.prune(stream, now)
        if deleted:
            log.info(
                "history: stream %s: pruned %d rows older than %s",
                stream,
                deleted,
                sink.spec.retention,
            )
