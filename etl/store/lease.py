"""The lease of the active loop: one loop publishes and commits, any other waits to take over.

A row in the state's database names the loop that holds the lease, an **epoch** (one more
at every change of holder) and a **beat** (one more at every renewal and every commit of
the holder). A loop that waits takes the lease when it is free (released by a loop that
stopped) or when its beat has not moved for ``ttl`` seconds by the waiter's own clock:
no two hosts' clocks are compared. Taking it is one conditional ``UPDATE`` on the epoch and
beat the waiter saw, so of two waiters one wins.

**Fencing.** Every transaction that writes the state begins with :meth:`Lease.fence`, an
``UPDATE`` that moves the beat only where this loop's holder and epoch still stand: a loop
that was paused (SIGSTOP, a hung disk, a partition) and lost its lease finds no row to
update, and its commit fails with :class:`Fenced` before it writes anything. The loop
publishes to the scheduler with its epoch too, and the scheduler refuses an epoch older
than one it has seen (:mod:`headrace.etl.contract.batch`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import sqlalchemy as sa

from headrace.etl.store.database import bound_transactions
from headrace.etl.store.state import StateError, StateStore

log = logging.getLogger(__name__)

NAME = "loop"  # one lease per state: every stream of a config is ticked by one loop
MOVED = "moved to "  # a holder that is a state's new place (headrace state move)


class Fenced(StateError):
    """This loop's lease was taken by another loop: it must not publish or commit."""


@dataclass(frozen=True)
class Holder:
    """Who holds the lease, as its row says."""

    lineage: str  # made with the state's lease: a new state is a new lineage
    holder: str | None  # None: released
    epoch: int
    beat: int
    since: float


def holder_name() -> str:
    """``host:pid:random``: names the process in logs, unique across restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Lease:
    """This loop's side of the lease in ``store``'s database (see the module's docstring)."""

    def __init__(self, store: StateStore, ttl: float, holder: str | None = None) -> None:
        self.store, self.ttl = store, ttl
        bound_transactions(store.engine, ttl)  # a paused holder must not block a takeover
        self.table = store.tables.lease
        self.holder = holder or holder_name()
        self.epoch: int | None = None  # while held
        self.lineage = ""
        self.lost = threading.Event()  # set when a fence or a renewal found it taken
        self.takeovers = 0  # leases taken from another holder, released or silent
        self._seen: tuple | None = None
        self._seen_at = 0.0
        # A renewal and a release never interleave: a beat after the release would find
        # the row released and take it for a takeover.
        self._lock = threading.Lock()

    @property
    def held(self) -> bool:
        return self.epoch is not None and not self.lost.is_set()

    def token(self) -> tuple[str, int]:
        """What the scheduler fences publications with (:mod:`headrace.etl.contract.batch`)."""
        return self.lineage, self.epoch or 0

    def current(self) -> Holder | None:
        t = self.table
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.name == NAME)).mappings().first()
        if row is None:
            return None
        return Holder(row["lineage"], row["holder"], row["epoch"], row["beat"], row["since"])

    def try_acquire(self) -> bool:
        """One look at the lease: take it if it is free or silent for ``ttl``. Taken?

        Raises :class:`StateError` when the state was moved elsewhere (``headrace state
        move`` leaves its new place in the lease).
        """
        t = self.table
        try:
            seen = self.current()
        except sa.exc.SQLAlchemyError:
            # The database is away: so is the holder's beat. Watch it afresh once it is
            # back, or the first look after an outage would take a lease held all along.
            self._seen = None
            raise
        now = time.monotonic()  # after the look: a slow one must not count as silence
        if seen is None:
            return self._take(sa.insert(t).values(name=NAME), 1, None, uuid.uuid4().hex)
        if seen.holder is not None and seen.holder.startswith(MOVED):
            raise StateError(f"this state {seen.holder}: point the config at it")
        mark = (seen.holder, seen.epoch, seen.beat)
        if mark != self._seen:
            self._seen, self._seen_at = mark, now
        if seen.holder is not None and now - self._seen_at < self.ttl:
            return False
        same = sa.update(t).where(t.c.name == NAME, t.c.epoch == seen.epoch, t.c.beat == seen.beat)
        return self._take(same, seen.epoch + 1, seen, seen.lineage)

    def _take(
        self, statement: sa.Executable, epoch: int, seen: Holder | None, lineage: str
    ) -> bool:
        values = dict(holder=self.holder, epoch=epoch, beat=0, since=time.time())
        if seen is None:
            values["lineage"] = lineage
        try:
            with self.store.engine.begin() as conn:
                done = conn.execute(statement.values(**values))  # type: ignore[attr-defined]
                # An UPDATE that found the row as it was seen; an INSERT that did not fail
                # (some drivers count no rows for an INSERT).
                if seen is not None and done.rowcount != 1:
                    return False
        except sa.exc.IntegrityError:  # another loop inserted the first row first
            return False
        self.lineage, self.epoch = lineage, epoch
        self.lost.clear()
        if seen is None:
            log.info("lease: taken, epoch %d (the first loop on this state)", epoch)
        elif seen.holder is None:
            self.takeovers += 1
            log.info("lease: taken, epoch %d; the loop before released it", epoch)
        else:
            self.takeovers += 1
            log.info(
                "lease: taken over, epoch %d; %s silent for %.1fs", epoch, seen.holder, self.ttl
            )
        return True

    def fence(self, conn: sa.Connection) -> None:
        """In a writing transaction: go on only while this loop holds the lease (a beat)."""
        if not self._beat(conn):
            raise self._lose()

    def check(self) -> None:
        """:meth:`fence` in a transaction of its own (for stores in another database)."""
        with self.store.engine.begin() as conn:
            self.fence(conn)

    def renew(self) -> bool:
        """A beat in a transaction of its own; False (and :attr:`lost` set) when taken."""
        with self._lock:
            if not self.held:
                return False
            with self.store.engine.begin() as conn:
                if self._beat(conn):
                    return True
            self._lose()
            return False

    def _beat(self, conn: sa.Connection) -> bool:
        t = self.table
        return conn.execute(self._mine().values(beat=t.c.beat + 1)).rowcount == 1

    def _mine(self) -> sa.Update:
        """An update of the lease where this loop's holder and epoch still stand."""
        t = self.table
        return sa.update(t).where(
            t.c.name == NAME, t.c.holder == self.holder, t.c.epoch == self.epoch
        )

    def give_up(self, why: str) -> None:
        """Stop holding the lease on another's word (the scheduler's fence refused it)."""
        log.error("lease: epoch %s given up: %s", self.epoch, why)
        self.lost.set()

    def _lose(self) -> Fenced:
        if not self.lost.is_set():
            log.error(
                "lease: epoch %s was taken over by another loop; publishing stops", self.epoch
            )
        self.lost.set()
        return Fenced(f"this loop's lease (epoch {self.epoch}) was taken over by another loop")

    def release(self, to: str | None = None) -> None:
        """Give the lease up (a clean stop): a waiting loop takes it at its next look.

        ``to``: the state moved there; no loop takes the lease again (they say where).
        """
        with self._lock:
            if not self.held:
                return
            holder = f"{MOVED}{to}" if to is not None else None
            with self.store.engine.begin() as conn:
                conn.execute(self._mine().values(holder=holder, since=time.time()))
            log.info("lease: released, epoch %d", self.epoch)
            self.epoch = None
