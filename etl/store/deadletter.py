"""Malformed lines kept for later inspection: ``deadletters.sqlite`` in the state directory.

Each row names the stream, the source file, the line number, the line (truncated), the
reason and when it was seen. The store is bounded per stream (the oldest rows go first)
and a replayed tick (after a crash) stores its lines once: ``(stream, seq, line)`` is the
key, and a tick re-read after a restart has the same sequence number and line numbers.

The loop writes here after a tick is committed; a failure to write (disk full, read-only)
is logged and loses dead letters only, never a tick.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from headrace.etl.parse.parser import Malformed

FILENAME = "deadletters.sqlite"
PER_STREAM = 10_000  # rows kept per stream
TEXT_MAX = 1_000  # characters of a line kept

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deadletters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    source TEXT NOT NULL,
    line INTEGER NOT NULL,
    text TEXT NOT NULL,
    reason TEXT NOT NULL,
    seen REAL NOT NULL,
    UNIQUE (stream, seq, line)
);
CREATE INDEX IF NOT EXISTS deadletters_stream ON deadletters (stream, id)
"""


@dataclass(frozen=True)
class DeadLetter:
    stream: str
    seq: int
    source: str
    line: int
    text: str
    reason: str
    seen: float

    def __str__(self) -> str:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.seen))
        return f"{at}Z {self.source}:{self.line}: {self.reason}: {self.text!r}"


class DeadLetterStore:
    """The dead letters of every stream in ``directory``; safe to share between threads."""

    def __init__(
        self, directory: str | Path, per_stream: int = PER_STREAM, text_max: int = TEXT_MAX
    ) -> None:
        if per_stream < 1:
            raise ValueError(f"per_stream must be >= 1, got {per_stream}")
        self.path = Path(directory) / FILENAME
        self.per_stream, self.text_max = per_stream, text_max
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def add(
        self, stream: str, seq: int, samples: Iterable[Malformed], seen: float | None = None
    ) -> int:
        """Keep the malformed lines of tick ``seq``; prune the stream to its bound. How many new."""
        seen = time.time() if seen is None else seen
        rows = [
            (stream, seq, s.source, s.line, s.text[: self.text_max], s.reason, seen)
            for s in samples
        ]
        if not rows:
            return 0
        with self._lock:
            self._db.execute("BEGIN")
            try:
                before = self._db.total_changes
                self._db.executemany(
                    "INSERT OR IGNORE INTO deadletters"
                    " (stream, seq, source, line, text, reason, seen) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                added = self._db.total_changes - before
                # Keep the newest per_stream rows of this stream: ids grow with time.
                self._db.execute(
                    "DELETE FROM deadletters WHERE stream = ? AND id <= (SELECT id FROM"
                    " deadletters WHERE stream = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (stream, stream, self.per_stream),
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return added

    def recent(self, stream: str, limit: int = 50) -> list[DeadLetter]:
        """The newest ``limit`` dead letters of ``stream``, newest first."""
        with self._lock:
            got = self._db.execute(
                "SELECT stream, seq, source, line, text, reason, seen FROM deadletters"
                " WHERE stream = ? ORDER BY id DESC LIMIT ?",
                (stream, limit),
            ).fetchall()
        return [DeadLetter(*row) for row in got]

    def count(self, stream: str | None = None) -> int:
        """Dead letters kept, of ``stream`` or of all streams."""
        with self._lock:
            if stream is None:
                (n,) = self._db.execute("SELECT count(*) FROM deadletters").fetchone()
            else:
                (n,) = self._db.execute(
                    "SELECT count(*) FROM deadletters WHERE stream = ?", (stream,)
                ).fetchone()
        return int(n)

    def close(self) -> None:
        with self._lock:
            self._db.close()
