"""Per-stream state that survives a restart of the tick loop: a SQLite file, or a database.

A row is written only after its frame is published, in one transaction, so a
loop killed at any instant restarts from a consistent point: either before the
frame (it is produced again, identically, under the same sequence number) or
after it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from headrace.etl.sources.base import CURRENT, Cursor
from headrace.etl.store import pickles
from headrace.etl.store.database import (
    StateSpec,
    create_tables,
    locate,
    make_engine,
    reason,
    state_tables,
)

FILENAME = "state.sqlite"  # in a state directory


@dataclass(frozen=True)
class Queued:
    """A published frame waiting in the backlog for the history sink."""

    id: int
    stream: str
    seq: int
    frame: bytes  # see headrace.etl.store.sink.encode
    added: float


@dataclass
class Checkpoint:
    """Where a stream's loop stands: what it has read, what it publishes next, its carry."""

    cursor: Cursor = field(default_factory=Cursor)
    next_seq: int = 1
    carry: Any = None  # the transform's state between ticks (small, picklable)
    # Set while frame `next_seq` is being published: the byte offset its chunk ends at, so
    # that a restart reproduces exactly that frame rather than a larger one under the same seq.
    pending_until: int | None = None
    # The stream's all-time counters (lines, rows, malformed...) as of this checkpoint, so
    # that they continue across restarts and count a replayed tick once.
    totals: dict[str, int] = field(default_factory=dict)


class StateError(Exception):
    """The state store could not be opened or written; the message names its file and why."""


class StateStore:
    """The loop's state: ``state.sqlite`` in ``directory``, or the tables in ``database``.

    Safe to share between the loop's threads, and between processes (the history writer
    reads the backlog). ``fence``, when set (by the :class:`~headrace.etl.store.lease.Lease`
    of the active loop), runs first in every transaction that writes a stream's state, so
    that a loop that lost its lease cannot commit.
    """

    def __init__(self, directory: str | os.PathLike, database: StateSpec | None = None) -> None:
        here = locate(directory, FILENAME, database)
        self.path, self.where = here.path, here.display
        self.tables = state_tables(here.prefix)
        self.fence: Callable[[sa.Connection], None] | None = None
        try:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self.engine = make_engine(here.url)
            create_tables(self.engine, self.tables.metadata)
        except (OSError, sa.exc.SQLAlchemyError) as exc:
            raise self._error("cannot open the loop's state in", exc) from exc

    def load(self, name: str) -> Checkpoint:
        t = self.tables.streams
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.name == name)).mappings().first()
        if row is None:
            return Checkpoint()
        return Checkpoint(
            cursor=Cursor(
                offset=row["offset"],
                line=row["line"],
                tail=bytes(row["tail"]),
                fingerprint=bytes(row["fingerprint"]),
                head=bytes(row["head"] or b""),
                phase=CURRENT if row["phase"] is None else row["phase"],
                mtime=row["mtime"] or "",
                inode=row["inode"] or 0,
            ),
            next_seq=row["next_seq"],
            carry=pickles.loads(row["carry"]) if row["carry"] is not None else None,
            pending_until=row["pending_until"],
            totals=json.loads(row["totals"]) if row["totals"] else {},
        )

    def names(self) -> list[str]:
        """The streams that have a checkpoint."""
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(self.tables.streams.c.name)).scalars())

    def save(
        self, name: str, state: Checkpoint, updated: float, queue: bytes | None = None
    ) -> None:
        """Store ``state``; with ``queue``, put that frame (``next_seq - 1``) in the backlog.

        Both in one transaction: a frame is queued exactly when its stream moves past it.
        """
        self.save_many([(name, state, queue)], updated)

    def save_many(
        self,
        states: list[tuple[str, Checkpoint, bytes | None]],
        updated: float,
        pending: frozenset[str] = frozenset(),
    ) -> None:
        """:meth:`save` of many streams' ``(name, state, queue)``, all in one transaction.

        ``pending``: streams whose stored state differs from ``state`` only in its
        ``pending_until`` (a publishing tick's write-ahead). SQLite updates just that,
        not the whole row again with its cursor's 1 kB head and pickled carry.
        """
        sqlite = self.engine.dialect.name == "sqlite"
        marked = pending if sqlite else frozenset()
        marks = [(n, s, q) for n, s, q in states if n in marked]
        rows = [_row(n, s, updated) for n, s, q in states if n not in marked]
        queued = [
            dict(stream=n, seq=s.next_seq - 1, frame=q, added=updated)
            for n, s, q in states
            if q is not None
        ]
        try:
            with self.engine.begin() as conn:
                if self.fence is not None:
                    self.fence(conn)
                if sqlite:
                    if marks and not self._mark_sqlite(conn, marks, updated):
                        rows += [_row(n, s, updated) for n, s, _ in marks]  # a row was missing
                    self._write_sqlite(conn, rows, queued)
                else:
                    self._write(conn, rows, queued)
        except sa.exc.SQLAlchemyError as exc:
            raise self._error("cannot save the stream's state in", exc) from exc

    def _mark_sqlite(self, conn: sa.Connection, marks: list[tuple], updated: float) -> bool:
        """Set ``pending_until`` of rows that exist; False if one did not."""
        sql = (
            f'UPDATE {self.tables.streams.name} SET "pending_until" = ?, "updated" = ?'
            ' WHERE "name" = ?'
        )
        got = conn.exec_driver_sql(sql, [(s.pending_until, updated, n) for n, s, _ in marks])
        return got.rowcount == len(marks)

    def _write(self, conn: sa.Connection, rows: list[dict], queued: list[dict]) -> None:
        # Delete and insert: the one replacement every database has (SQL Server has no
        # ON CONFLICT), in slices under every database's parameter limit.
        t = self.tables.streams
        for part in _slices(rows):
            conn.execute(sa.delete(t).where(t.c.name.in_([r["name"] for r in part])))
            conn.execute(sa.insert(t), part)
        if queued:
            conn.execute(sa.insert(self.tables.backlog), queued)

    def _write_sqlite(self, conn: sa.Connection, rows: list[dict], queued: list[dict]) -> None:
        # The driver's own executemany: SQLAlchemy's processing of each row's parameters
        # doubled a tick's commit (1,000 streams: 23 ms, 13.5 ms like this, measured).
        for table, got in ((self.tables.streams, rows), (self.tables.backlog, queued)):
            if got:
                names = list(got[0])
                verb = "INSERT OR REPLACE" if table is self.tables.streams else "INSERT"
                columns = ", ".join(f'"{n}"' for n in names)
                sql = f"{verb} INTO {table.name} ({columns}) VALUES ({', '.join('?' * len(names))})"
                conn.exec_driver_sql(sql, [tuple(r[n] for n in names) for r in got])

    def queued(self, limit: int) -> list[Queued]:
        """The oldest ``limit`` frames of the backlog, in the order they were queued."""
        b = self.tables.backlog
        query = sa.select(b.c.id, b.c.stream, b.c.seq, b.c.frame, b.c.added)
        with self.engine.connect() as conn:
            got = conn.execute(query.order_by(b.c.id).limit(limit)).all()
        return [Queued(i, s, q, bytes(f), a) for i, s, q, f, a in got]

    def unqueue(self, ids: list[int]) -> None:
        # One statement per slice: the loop, in another process, waits for each write
        # transaction of a SQLite file here before it can commit its next tick.
        b = self.tables.backlog
        with self.engine.begin() as conn:
            for part in _slices(ids):
                conn.execute(sa.delete(b).where(b.c.id.in_(part)))

    def backlog(self) -> tuple[int, int]:
        """Frames and bytes waiting in the backlog."""
        b = self.tables.backlog
        size = _length(b.c.frame, self.engine.dialect.name)
        query = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(size), 0))
        with self.engine.connect() as conn:
            n, size = conn.execute(query).one()
        return int(n), int(size)

    def trim_backlog(self, max_bytes: int) -> int:
        """Drop the oldest frames while the backlog holds more than ``max_bytes``; how many."""
        dropped, b = 0, self.tables.backlog
        while self.backlog()[1] > max_bytes:
            with self.engine.begin() as conn:
                oldest = conn.execute(sa.select(b.c.id).order_by(b.c.id).limit(100)).scalars()
                dropped += conn.execute(sa.delete(b).where(b.c.id.in_(list(oldest)))).rowcount
        return dropped

    def _error(self, what: str, exc: Exception) -> StateError:
        why, said = self.unwritable(), reason(exc)
        told = f"{said} ({why})" if why and why.lower() not in said.lower() else said
        return StateError(f"{what} {self.where}: {told}")

    def unwritable(self) -> str | None:
        """Why the state's directory cannot take a write now, in the system's words, or None.

        SQLite reports a file system gone read-only as "disk I/O error" or "unable to open
        database file"; a small write beside the file says which it is. A database
        elsewhere says why itself.
        """
        if self.path is None:
            return None
        try:
            with tempfile.TemporaryFile(dir=self.path.parent) as probe:
                probe.write(b"\0" * 4096)
                probe.flush()
                os.fsync(probe.fileno())
        except OSError as exc:
            return exc.strerror or str(exc)
        return None

    def close(self) -> None:
        self.engine.dispose()


def _length(column: sa.ColumnElement, dialect: str) -> sa.ColumnElement:
    # SQL Server's LEN ignores trailing blanks and refuses binaries: DATALENGTH counts bytes.
    return sa.func.datalength(column) if dialect == "mssql" else sa.func.length(column)


def _slices(items: list, size: int = 500) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _row(name: str, state: Checkpoint, updated: float) -> dict[str, Any]:
    """The streams table's row of ``state``."""
    c = state.cursor
    return dict(
        name=name,
        offset=c.offset,
        line=c.line,
        tail=c.tail,
        fingerprint=c.fingerprint,
        head=c.head,
        phase=c.phase,
        mtime=c.mtime,
        inode=c.inode,
        next_seq=state.next_seq,
        carry=pickles.stored(state.carry) if state.carry is not None else None,
        pending_until=state.pending_until,
        updated=updated,
        totals=json.dumps(state.totals),
    )
