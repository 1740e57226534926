"""Moving the loop's state between a state directory and a database, nothing lost.

``headrace state move SOURCE TARGET`` (each a directory or a SQLAlchemy URL): every
stream's checkpoint, the history backlog in its order, the dead letters and the lease's
lineage and epoch (so that the scheduler's fence goes on: the next loop's epoch is one
more), copied in one transaction of the target, then deleted from the source in one of
its own.

The move takes the source's lease first, as a loop would, so that no loop commits while
it copies: a loop beating on it (running, or a standby that took it) refuses the move.
The source keeps a lease naming where the state went, and a loop started on it says so
instead of starting afresh. A target that already holds a state refuses the move too.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from headrace.etl.store.database import StateSpec
from headrace.etl.store.deadletter import DeadLetterStore
from headrace.etl.store.lease import Lease, holder_name
from headrace.etl.store.state import FILENAME, StateError, StateStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Place:
    """A state's place: a directory, or a database (the directory then holds nothing)."""

    directory: Path
    database: StateSpec | None = None

    @classmethod
    def parse(cls, text: str, password_env: str | None = None) -> Place:
        """A path, or a URL (anything with ``://``)."""
        if "://" in text:
            return cls(Path("."), StateSpec(text, password_env))
        return cls(Path(text))

    def __str__(self) -> str:
        return self.database.display() if self.database else str(self.directory)


@dataclass(frozen=True)
class Moved:
    streams: int
    backlog: int
    dead_letters: int


def move(source: Place, target: Place, ttl: float = 1.0) -> Moved:
    """Move the state at ``source`` to ``target`` (see the module's docstring).

    ``ttl``: the loops' lease; a holder is watched for at least 5 s before it counts as gone.
    """
    if source.database is None and not (source.directory / FILENAME).exists():
        raise StateError(f"no state in {source}: {source.directory / FILENAME} does not exist")
    stores: list[StateStore | DeadLetterStore] = []
    try:
        src = StateStore(source.directory, source.database)
        stores.append(src)
        dst = StateStore(target.directory, target.database)
        stores.append(dst)
        src_dead = DeadLetterStore(source.directory, database=source.database)
        stores.append(src_dead)
        dst_dead = DeadLetterStore(target.directory, database=target.database)
        stores.append(dst_dead)
        if there := dst.names():
            raise StateError(f"{target} already holds the state of {len(there)} streams")
        lease = _take(src, source, max(ttl, 5.0))
        moved = _copy(src, dst, src_dead, dst_dead)
        _clear(src, src_dead, lease)
        lease.release(to=str(target))
        log.info(
            "state: moved %d streams, %d backlog frames, %d dead letters from %s to %s",
            moved.streams,
            moved.backlog,
            moved.dead_letters,
            source,
            target,
        )
        return moved
    finally:
        for store in stores:
            store.close()


def _take(store: StateStore, place: Place, ttl: float) -> Lease:
    """The source's lease, held by this move; a loop beating on it refuses the move."""
    lease = Lease(store, ttl, holder=f"headrace state move:{holder_name()}")
    deadline = time.monotonic() + ttl * 1.5
    while not lease.try_acquire():
        if time.monotonic() > deadline:
            now = lease.current()
            who = f" ({now.holder}, epoch {now.epoch})" if now is not None else ""
            raise StateError(f"a loop holds the state in {place}{who}: stop it first")
        time.sleep(0.1)
    return lease


def _copy(
    src: StateStore,
    dst: StateStore,
    src_dead: DeadLetterStore,
    dst_dead: DeadLetterStore,
) -> Moved:
    def rows(engine: sa.Engine, table: sa.Table) -> list[dict]:
        """``table``'s rows; with ids, in their order and without them (the target numbers
        them anew)."""
        query = sa.select(*(c for c in table.c if c.name != "id"))
        if "id" in table.c:
            query = query.order_by(table.c.id)
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    s, d = src.tables, dst.tables
    streams, backlog = rows(src.engine, s.streams), rows(src.engine, s.backlog)
    # The lease as the move holds it, released: the next loop's epoch is one more.
    held = [{**r, "holder": None} for r in rows(src.engine, s.lease)]
    dead = rows(src_dead.engine, src_dead.table)
    with dst.engine.begin() as conn:
        conn.execute(sa.delete(d.lease))
        for table, got in ((d.streams, streams), (d.backlog, backlog), (d.lease, held)):
            if got:
                conn.execute(sa.insert(table), got)
    if dead:  # another database, maybe (a state directory keeps them in a file of their own)
        with dst_dead.engine.begin() as conn:
            conn.execute(sa.insert(dst_dead.table), dead)
    return Moved(len(streams), len(backlog), len(dead))


def _clear(src: StateStore, src_dead: DeadLetterStore, lease: Lease) -> None:
    with src.engine.begin() as conn:
        lease.fence(conn)  # still the move's: nothing was committed since the copy
        for table in (src.tables.streams, src.tables.backlog):
            conn.execute(sa.delete(table))
    with src_dead.engine.begin() as conn:
        conn.execute(sa.delete(src_dead.table))
