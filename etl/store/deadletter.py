"""Malformed lines kept for later inspection: ``deadletters.sqlite`` in the state directory,
or a table of the state's database.

Each row names the stream, the source file, the line number, the line (truncated), the
reason and when it was seen. The store is bounded per stream (the oldest rows go first)
and a replayed tick (after a crash) stores its lines once: ``(stream, seq, line)`` is the
key, and a tick re-read after a restart has the same sequence number and line numbers.

The loop writes here before a tick is committed; a failure to write (disk full, read-only)
is logged and loses dead letters only, never a tick.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from headrace.etl.parse.parser import Malformed
from headrace.etl.store.database import (
    StateSpec,
    create_tables,
    deadletter_table,
    locate,
    make_engine,
)

FILENAME = "deadletters.sqlite"
PER_STREAM = 10_000  # rows kept per stream
TEXT_MAX = 1_000  # characters of a line kept


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
    """The dead letters of every stream; safe to share between threads.

    ``fence``, when set, is called before each write (the loop's
    :meth:`~headrace.etl.store.lease.Lease.check`): a loop that lost its lease keeps no
    dead letters either. In a transaction of its own, as this store may be another file
    than the state's: the dead letters of a tick are keyed, so a write the fence let
    through just before the lease changed hands is the same a successor would make.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        per_stream: int = PER_STREAM,
        text_max: int = TEXT_MAX,
        database: StateSpec | None = None,
    ) -> None:
        if per_stream < 1:
            raise ValueError(f"per_stream must be >= 1, got {per_stream}")
        here = locate(directory, FILENAME, database)
        self.path, self.where = here.path, here.display
        self.per_stream, self.text_max = per_stream, text_max
        self.fence: Callable[[], None] | None = None
        metadata, self.table = deadletter_table(here.prefix)
        self.engine = make_engine(here.url)
        create_tables(self.engine, metadata)

    def add(
        self, stream: str, seq: int, samples: Iterable[Malformed], seen: float | None = None
    ) -> int:
        """Keep the malformed lines of tick ``seq``; prune the stream to its bound. How many new."""
        seen = time.time() if seen is None else seen
        rows = {
            s.line: dict(
                stream=stream,
                seq=seq,
                source=s.source,
                line=s.line,
                text=s.text[: self.text_max],
                reason=s.reason,
                seen=seen,
            )
            for s in samples
        }
        if not rows:
            return 0
        if self.fence is not None:
            self.fence()
        try:
            return self._add(stream, seq, rows)
        except sa.exc.IntegrityError:  # another loop kept this tick's lines meanwhile
            return self._add(stream, seq, rows)

    def _add(self, stream: str, seq: int, rows: dict[int, dict]) -> int:
        t = self.table
        with self.engine.begin() as conn:
            # The lines of this tick kept before (a replay) stay as they are.
            kept = sa.select(t.c.line).where(t.c.stream == stream, t.c.seq == seq)
            before = set(conn.execute(kept).scalars())
            fresh = [r for line, r in rows.items() if line not in before]
            if fresh:
                conn.execute(sa.insert(t), fresh)
            # Keep the newest per_stream rows of this stream: ids grow with time.
            edge = conn.execute(
                sa.select(t.c.id)
                .where(t.c.stream == stream)
                .order_by(t.c.id.desc())
                .offset(self.per_stream)
                .limit(1)
            ).scalar()
            if edge is not None:
                conn.execute(sa.delete(t).where(t.c.stream == stream, t.c.id <= edge))
        return len(fresh)

    def recent(self, stream: str, limit: int = 50) -> list[DeadLetter]:
        """The newest ``limit`` dead letters of ``stream``, newest first."""
        t = self.table
        columns = [t.c.stream, t.c.seq, t.c.source, t.c.line, t.c.text, t.c.reason, t.c.seen]
        query = sa.select(*columns).where(t.c.stream == stream).order_by(t.c.id.desc())
        with self.engine.connect() as conn:
            got = conn.execute(query.limit(limit)).all()
        return [DeadLetter(*row) for row in got]

    def count(self, stream: str | None = None) -> int:
        """Dead letters kept, of ``stream`` or of all streams."""
        query = sa.select(sa.func.count()).select_from(self.table)
        if stream is not None:
            query = query.where(self.table.c.stream == stream)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def close(self) -> None:
        self.engine.dispose()
