"""Two loops of one state, one active: keeping the lease, waiting for it, saying which is which.

Any number of ``headrace etl`` with the same config and state may run (on one host, or on
several when the state is in a database): the one holding the lease ticks, publishes and
commits; the others wait, connected to the cluster and ready, and take over when the
active one stops (SIGTERM: it releases the lease), dies or hangs (its beat stops for the
lease's ``ttl``). See :mod:`headrace.etl.store.lease` for the lease and its fencing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time

import sqlalchemy as sa
from distributed import Client

from headrace.etl.contract.loops import ACTIVE, WAITING, LoopRecord, forget_loop, report_loop
from headrace.etl.loop.runner import sleep_unless_stopped
from headrace.etl.store.lease import Lease

log = logging.getLogger(__name__)

REPORT_EVERY = 1.0  # seconds between the loop's records on the scheduler
OUT_OF_TOUCH = 10.0  # seconds without the scheduler after which the active loop stops beating


class Keeper(threading.Thread):
    """Beats for the held lease every quarter ``ttl``, in a thread of its own.

    Not on the event loop: a tick that keeps the loop busy must not cost the lease.
    """

    def __init__(self, lease: Lease) -> None:
        super().__init__(daemon=True, name="headrace-lease")
        self.lease = lease
        self._halt = threading.Event()
        self._in_touch = time.monotonic()

    def in_touch(self) -> None:
        """The loop reaches its scheduler now (called while its client runs)."""
        self._in_touch = time.monotonic()

    def run(self) -> None:
        failing = False
        while not self._halt.wait(self.lease.ttl / 4):
            # A loop cut off from its scheduler for long lets the lease go, so that a
            # standby that reaches it takes over; a scheduler restart is shorter.
            if not self.lease.held or time.monotonic() - self._in_touch > OUT_OF_TOUCH:
                continue
            try:
                self.lease.renew()
            except sa.exc.SQLAlchemyError as exc:  # the database is away: commits say so too
                if not failing:
                    log.error("lease: cannot renew in %s: %s", self.lease.store.where, exc)
                failing = True
            else:
                if failing:
                    log.info("lease: renewed again in %s", self.lease.store.where)
                failing = False

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


class Roles:
    """This loop's role, as told to the cluster (:mod:`headrace.etl.contract.loops`)."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.role, self.since = WAITING, time.time()
        self._reported = float("-inf")

    def became(self, role: str) -> None:
        if role != self.role:
            self.role, self.since, self._reported = role, time.time(), float("-inf")

    async def report(self, client: Client, force: bool = False) -> None:
        """The record, at most once a second unless ``force``; the scheduler away: skipped."""
        if not force and time.monotonic() - self._reported < REPORT_EVERY:
            return
        self._reported = time.monotonic()
        lease = self.lease
        record = LoopRecord(
            holder=lease.holder,
            host=socket.gethostname(),
            pid=os.getpid(),
            role=self.role,
            epoch=lease.epoch,
            since=self.since,
            reported=time.time(),
            takeovers=lease.takeovers,
        )
        with contextlib.suppress(Exception):
            await report_loop(client, record)

    async def leave(self, client: Client) -> None:
        """A clean stop: this loop's record goes (``headrace status`` stops listing it)."""
        with contextlib.suppress(Exception):
            await forget_loop(client, self.lease.holder)


async def wait_for_lease(lease: Lease, client: Client, roles: Roles, stop: asyncio.Event) -> bool:
    """Look at the lease ten times a ``ttl`` until this loop holds it (True) or must stop."""
    roles.became(WAITING)
    said = None
    while not stop.is_set() and client.status == "running":
        try:
            if lease.held or await asyncio.to_thread(lease.try_acquire):
                roles.became(ACTIVE)
                await roles.report(client, force=True)
                return True
            holder = await asyncio.to_thread(lease.current)
        except sa.exc.SQLAlchemyError as exc:
            log.error("lease: cannot read it in %s: %s", lease.store.where, exc)
            holder = None
        if holder is not None and holder.holder is not None and holder.holder != said:
            said = holder.holder
            log.info(
                "lease: %s holds it (epoch %d); this loop waits to take over",
                holder.holder,
                holder.epoch,
            )
        await roles.report(client)
        await sleep_unless_stopped(stop, lease.ttl / 10)
    return False
