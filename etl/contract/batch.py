"""Publishing the frames of many streams at once: a few scheduler calls per tick, not per frame.

What a reader finds is what :meth:`~headrace.etl.contract.FrameStream.publish` leaves, per
stream: the dataset, the head and an event per frame (a tick message of version 2, which
readers take as one :class:`~headrace.etl.contract.Event` per frame). A tick of any number
of streams costs one scheduler call: a handler the loop installs on the scheduler (a
plugin, pickled by value: the scheduler needs no headrace) writes the frames' datasets
(as ``publish_dataset`` does), unpublishes the frames that left the ring, updates the
heads and logs the tick message, in that order and in one step, so a reader acting on
the message always finds the frames. Four calls each (the fence, the datasets, the heads
and message, the unpublishing) had cost a settle ~20 ms of round trips while its streams
waited. The loop sends the heads that changed; a scheduler it has not published to yet
(a restarted one) gets the mapping of every stream's head. The loop's health records of
every stream go in one call too (:func:`report_health`).

**Fenced.** Given the loop's lease (its lineage and epoch,
:mod:`headrace.etl.store.lease`), the handler refuses a loop whose epoch is older than
one it has seen, before it writes anything: a loop that was paused and lost its lease
cannot write a frame, move a head or announce a frame once its successor has published.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from distributed.protocol import Serialized, to_serialize

from headrace.etl.contract import TOPIC, Head, Span, _key, dataset_name
from headrace.etl.contract.version import TICK_VERSION

if TYPE_CHECKING:
    import pandas as pd
    from distributed import Client

    from headrace.etl.contract.health import HealthRecord


@dataclass(frozen=True)
class Outgoing:
    """One frame to publish: its stream, sequence number, rows and the stream's interval.

    The frame may come serialized (:class:`distributed.protocol.Serialized`), as it left
    the worker that made it: it is published as it is.
    """

    stream: str
    seq: int
    frame: pd.DataFrame | Serialized
    span: Span
    interval: float


# The lease of the loop publishing: (lineage, epoch), or None for a loop without one.
Token = tuple[str, int] | None


# The plugin's name, one per version of its handlers: a scheduler keeps an older version's
# plugin (idempotent) and gets this one beside it.
PLUGIN = "headrace-publish-2"


class FencedOut(Exception):
    """The scheduler refused to publish: a loop with a newer lease has published."""


class TickPublisher:
    """Publishes a tick's frames of every stream in one go (see the module's docstring).

    The only writer of the heads on its scheduler: one active loop per state (two loops
    of one state fence each other through ``token``, see the module's docstring).
    """

    def __init__(
        self, client: Client, ring: int, token: Callable[[], Token] = lambda: None
    ) -> None:
        self.client, self.ring, self.token = client, ring, token
        self.heads: dict[str, dict[str, Any]] | None = None
        self._installed_on: str | None = None  # the scheduler (id) that has the handler

    async def publish(self, frames: list[Outgoing]) -> float:
        """Publish ``frames`` (at most one per stream); returns when they were published.

        Publishing a seq again (a tick replayed after a crash) replaces it with the same frame.
        """
        if not frames:
            return time.time()
        client, now = self.client, time.time()
        token = self.token()
        fresh = await self._install()
        if self.heads is None:  # heads of streams this loop has not published yet stay
            self.heads = dict(await client.get_metadata(_key("streams"), default=None) or {})
        changed = {f.stream: asdict(Head(f.seq, self.ring, now, f.interval)) for f in frames}
        message = {
            "v": TICK_VERSION,
            "published": now,
            "frames": [[f.stream, f.seq, f.span.rows, f.span.first, f.span.last] for f in frames],
        }
        newer = await client.scheduler.headrace_tick(
            names=[dataset_name(f.stream, f.seq) for f in frames],
            data=[
                f.frame if isinstance(f.frame, Serialized) else to_serialize(f.frame)
                for f in frames
            ],
            stale=[dataset_name(f.stream, f.seq - self.ring) for f in frames if f.seq > self.ring],
            heads_key=_key("streams"),
            # A scheduler new to this loop (restarted) gets every head; then the changes.
            heads={**self.heads, **changed} if fresh else changed,
            whole=fresh,
            topic=TOPIC,
            message=message,
            **_fence(token),
        )
        _refused(newer, token)
        self.heads.update(changed)
        return now

    async def _install(self) -> bool:
        """The handlers on this scheduler, once per scheduler (a restarted one has none);
        True the first time on a scheduler."""
        scheduler = self.client.scheduler_info().get("id")
        if scheduler == self._installed_on:
            return False
        await self.client.register_plugin(_announcer(), name=PLUGIN)
        self._installed_on = scheduler
        return True


async def claim(client: Client, token: Token) -> None:
    """Tell the scheduler this loop's epoch before its first tick (:class:`FencedOut` if a
    newer one published): from then on a paused predecessor cannot announce a frame, even
    one it had committed to publish before it lost the lease."""
    if token is None:
        return
    await client.register_plugin(_announcer(), name=PLUGIN)
    await _check(client, token)


def _fence(token: Token) -> dict[str, Any]:
    """The handlers' fence arguments for ``token`` (None: a loop without a lease)."""
    if token is None:
        return {"fence_key": None, "epoch": None}
    return {"fence_key": [*_key("fence"), token[0]], "epoch": token[1]}


async def _check(client: Client, token: Token) -> None:
    """:class:`FencedOut` if the scheduler has seen a newer epoch of ``token``'s lineage."""
    if token is not None:
        _refused(await client.scheduler.headrace_fence(**_fence(token)), token)


def _refused(newer: int | None, token: Token) -> None:
    if newer is not None:
        epoch = token[1] if token else None
        raise FencedOut(f"epoch {epoch} refused: a loop of epoch {newer} published")


def _announcer() -> Any:
    """The scheduler plugin that installs the handlers; a class made here, pickled by value."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class Announcer(SchedulerPlugin):
        idempotent = True  # installed already (by a loop before this one): left as it is

        def start(self, scheduler: Any) -> None:
            self.scheduler = scheduler
            scheduler.handlers["headrace_fence"] = self.fence
            scheduler.handlers["headrace_tick"] = self.tick

        def fence(self, fence_key: list[str] | None, epoch: int | None) -> int | None:
            """The newest epoch of the lineage if ``epoch`` is older, else None (and kept)."""
            if fence_key is None:
                return None
            newest = self.scheduler.get_metadata(keys=fence_key, default=0)
            if epoch < newest:
                return newest
            self.scheduler.set_metadata(keys=fence_key, value=epoch)
            return None

        def tick(
            self,
            names: list[str],
            data: list[Any],
            stale: list[str],
            heads_key: list[str],
            heads: dict,
            whole: bool,
            topic: str,
            message: dict,
            fence_key: list[str] | None,
            epoch: int | None,
        ) -> int | None:
            """A tick's frames, heads and message in one step (see the module's docstring)."""
            newer = self.fence(fence_key, epoch)
            if newer is not None:
                return newer
            # As publish_put and publish_delete leave them (distributed's PublishExtension),
            # without their round trips; the frames hold no futures, so no keys are kept.
            datasets = self.scheduler.extensions["publish"].datasets
            for name in [*names, *stale]:
                old = datasets.pop(name, None)
                if old is not None and old["keys"]:
                    self.scheduler.client_releases_keys(old["keys"], f"published-{name}")
            for name, value in zip(names, data, strict=True):
                datasets[name] = {"data": value, "keys": ()}
            kept = None if whole else self.scheduler.get_metadata(keys=heads_key, default=None)
            if kept is None:
                self.scheduler.set_metadata(keys=heads_key, value=heads)
            else:
                kept.update(heads)
            self.scheduler.log_event(topic, message)
            return None

    return Announcer()


async def report_health(client: Client, records: list[HealthRecord]) -> None:
    """Keep the loop's health records of its streams on the scheduler, in one call.

    The loop writes the mapping of every stream's record, as it does the heads.
    """
    await client.set_metadata(_key("health"), {r.stream: r.to_message() for r in records})
