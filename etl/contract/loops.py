"""Which loop is active and which waits: each loop's record on the scheduler.

Every ``headrace etl`` of a state keeps ``["headrace", "loops", <holder>]`` (see
:mod:`headrace.etl.store.lease`) up to date once a second: its host and pid, its role
(``active`` or ``waiting``), its lease's epoch and when it took that role. ``headrace
status`` and ``/ops`` show them; a record not renewed for :data:`GONE` seconds is a loop
that is no longer running (killed, or its host gone).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed import Client

ACTIVE, WAITING = "active", "waiting"
GONE = 5.0  # seconds without a report: the loop is not running


@dataclass(frozen=True)
class LoopRecord:
    holder: str  # host:pid:random, as the lease names it
    host: str
    pid: int
    role: str  # ACTIVE or WAITING
    epoch: int | None  # the lease's epoch while active; the holder's it waits on, else
    since: float  # when it took this role (Unix time)
    reported: float  # when this record was written
    takeovers: int = 0  # leases this loop took from another

    def gone(self, now: float | None = None) -> bool:
        return (now or time.time()) - self.reported > GONE

    def line(self, now: float | None = None) -> str:
        now = now or time.time()
        if self.gone(now):
            return f"loop {self.holder}: gone (last heard {now - self.reported:.0f}s ago)"
        held = f", epoch {self.epoch}" if self.role == ACTIVE else ""
        return f"loop {self.holder}: {self.role}{held} for {now - self.since:.0f}s"


async def report_loop(client: Client, record: LoopRecord) -> None:
    await client.set_metadata(["headrace", "loops", record.holder], asdict(record))


async def forget_loop(client: Client, holder: str) -> None:
    """A loop's record gone: it stopped (metadata has no delete: None is read as none)."""
    await client.set_metadata(["headrace", "loops", holder], None)


async def loop_records(client: Client) -> list[LoopRecord]:
    """Every loop's record, the active first, then the waiting, then the gone."""
    raw: dict[str, Any] = await client.get_metadata(["headrace", "loops"], default=None) or {}
    found = []
    for msg in raw.values():
        if msg is None:  # a loop that stopped
            continue
        try:
            found.append(LoopRecord(**msg))
        except TypeError:  # a record of another version of headrace: not ours to judge
            continue
    now = time.time()
    return sorted(found, key=lambda r: (r.gone(now), r.role != ACTIVE, r.holder))
