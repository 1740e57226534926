"""Per-stream state that survives a restart of the tick loop, in one SQLite file.

A row is written only after its frame is published, in one transaction, so a
loop killed at any instant restarts from a consistent point: either before the
frame (it is produced again, identically, under the same sequence number) or
after it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headrace.etl.sources.base import CURRENT, Cursor
from headrace.etl.store import pickles

# Columns added since the first state directories, with their types: added to old ones.
# A row without them is a cursor of a file being read (phase "current") with no head yet;
# its first read fills the head in.
_ADDED = {"totals": "TEXT", "head": "BLOB", "phase": "TEXT", "mtime": "TEXT", "inode": "INTEGER"}
_CURSOR = ("offset", "line", "tail", "fingerprint", "head", "phase", "mtime", "inode")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    name TEXT PRIMARY KEY,
    offset INTEGER NOT NULL,
    line INTEGER NOT NULL,
    tail BLOB NOT NULL,
    fingerprint BLOB NOT NULL,
    next_seq INTEGER NOT NULL,
    carry BLOB,
    pending_until INTEGER,
    updated REAL NOT NULL,
    totals TEXT,
    head BLOB,
    phase TEXT,
    mtime TEXT,
    inode INTEGER
);
CREATE TABLE IF NOT EXISTS backlog (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    frame BLOB NOT NULL,
    added REAL NOT NULL
)
"""


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
    """``state.sqlite`` in ``directory``; safe to share between the loop's threads."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / "state.sqlite"
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = self._open()
        except (OSError, sqlite3.Error) as exc:
            raise self._error("cannot open the loop's state in", exc) from exc

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # WAL + NORMAL: a commit survives the process being killed, which is the failure
        # that matters here; only a power cut may lose the last ticks.
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(streams)")}
        for column, kind in _ADDED.items():
            if column not in columns:  # a state directory from before it was kept
                db.execute(f"ALTER TABLE streams ADD COLUMN {column} {kind}")
        return db

    def load(self, name: str) -> Checkpoint:
        with self._lock:
            row = self._db.execute(
                f"SELECT {', '.join(_CURSOR)}, next_seq, carry, pending_until, totals"
                " FROM streams WHERE name=?",
                (name,),
            ).fetchone()
        if row is None:
            return Checkpoint()
        offset, line, tail, fingerprint, head, phase, mtime, inode = row[: len(_CURSOR)]
        next_seq, carry, pending_until, totals = row[len(_CURSOR) :]
        return Checkpoint(
            cursor=Cursor(
                offset=offset,
                line=line,
                tail=bytes(tail),
                fingerprint=bytes(fingerprint),
                head=bytes(head or b""),
                phase=CURRENT if phase is None else phase,
                mtime=mtime or "",
                inode=inode or 0,
            ),
            next_seq=next_seq,
            carry=pickles.loads(carry) if carry is not None else None,
            pending_until=pending_until,
            totals=json.loads(totals) if totals else {},
        )

    def save(
        self, name: str, state: Checkpoint, updated: float, queue: bytes | None = None
    ) -> None:
        """Store ``state``; with ``queue``, put that frame (``next_seq - 1``) in the backlog.

        Both in one transaction: a frame is queued exactly when its stream moves past it.
        """
        self.save_many([(name, state, queue)], updated)

    def save_many(self, states: list[tuple[str, Checkpoint, bytes | None]], updated: float) -> None:
        """:meth:`save` of many streams' ``(name, state, queue)``, all in one transaction."""
        rows, queued = [], []
        for name, state, queue in states:
            c = state.cursor
            carry = pickles.dumps(state.carry) if state.carry is not None else None
            cursor = (c.offset, c.line, c.tail, c.fingerprint, c.head, c.phase, c.mtime, c.inode)
            totals = json.dumps(state.totals)
            rows.append(
                (name, *cursor, state.next_seq, carry, state.pending_until, updated, totals)
            )
            if queue is not None:
                queued.append((name, state.next_seq - 1, queue, updated))
        with self._lock:
            try:
                self._db.execute("BEGIN")
                self._db.executemany(
                    f"INSERT OR REPLACE INTO streams (name, {', '.join(_CURSOR)},"
                    " next_seq, carry, pending_until, updated, totals)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                if queued:
                    self._db.executemany(
                        "INSERT INTO backlog (stream, seq, frame, added) VALUES (?, ?, ?, ?)",
                        queued,
                    )
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._error("cannot save the stream's state in", exc) from exc
                raise

    def queued(self, limit: int) -> list[Queued]:
        """The oldest ``limit`` frames of the backlog, in the order they were queued."""
        with self._lock:
            got = self._db.execute(
                "SELECT id, stream, seq, frame, added FROM backlog ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [Queued(i, s, q, bytes(f), a) for i, s, q, f, a in got]

    def unqueue(self, ids: list[int]) -> None:
        # One statement, one transaction: the loop, in another process, waits for each
        # write transaction here before it can commit its next tick.
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        with self._lock:
            self._db.execute(f"DELETE FROM backlog WHERE id IN ({marks})", ids)

    def backlog(self) -> tuple[int, int]:
        """Frames and bytes waiting in the backlog."""
        with self._lock:
            n, size = self._db.execute(
                "SELECT count(*), coalesce(sum(length(frame)), 0) FROM backlog"
            ).fetchone()
        return int(n), int(size)

    def trim_backlog(self, max_bytes: int) -> int:
        """Drop the oldest frames while the backlog holds more than ``max_bytes``; how many."""
        dropped = 0
        while self.backlog()[1] > max_bytes:
            with self._lock:
                dropped += self._db.execute(
                    "DELETE FROM backlog WHERE id IN (SELECT id FROM backlog ORDER BY id LIMIT 100)"
                ).rowcount
        return dropped

    def _error(self, what: str, exc: Exception) -> StateError:
        why = self.unwritable()
        reason = f"{exc} ({why})" if why and why.lower() not in str(exc).lower() else exc
        return StateError(f"{what} {self.path}: {reason}")

    def unwritable(self) -> str | None:
        """Why the state's directory cannot take a write now, in the system's words, or None.

        SQLite reports a file system gone read-only as "disk I/O error" or "unable to open
        database file"; a small write beside the file says which it is.
        """
        try:
            with tempfile.TemporaryFile(dir=self.path.parent) as probe:
                probe.write(b"\0" * 4096)
                probe.flush()
                os.fsync(probe.fileno())
        except OSError as exc:
            return exc.strerror or str(exc)
        return None

    def close(self) -> None:
        with self._lock:
            self._db.close()
