"""Publishing the frames of many streams at once: a few scheduler calls per tick, not per frame.

What a reader finds is what :meth:`~headrace.etl.contract.FrameStream.publish` leaves, per
stream: the dataset, the head and an event per frame (a tick message of version 2, which
readers take as one :class:`~headrace.etl.contract.Event` per frame). A tick of any number
of streams costs four calls: the datasets in one, the heads in one (the loop writes the
mapping of every stream's head, so it keeps them all, and puts them back after a scheduler
restart), the tick message, and the unpublishing of frames that left the ring. The
loop's health records of every stream go in one call too (:func:`report_health`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from headrace.etl.contract import TOPIC, Head, Span, _key, dataset_name
from headrace.etl.contract.version import TICK_VERSION

if TYPE_CHECKING:
    import pandas as pd
    from distributed import Client

    from headrace.etl.contract.health import HealthRecord


@dataclass(frozen=True)
class Outgoing:
    """One frame to publish: its stream, sequence number, rows and the stream's interval."""

    stream: str
    seq: int
    frame: pd.DataFrame
    span: Span
    interval: float


class TickPublisher:
    """Publishes a tick's frames of every stream in one go (see the module's docstring).

    The only writer of the heads on its scheduler: run one loop per scheduler (as
    ``headrace etl`` is meant to be run).
    """

    def __init__(self, client: Client, ring: int) -> None:
        self.client, self.ring = client, ring
        self.heads: dict[str, dict[str, Any]] | None = None

    async def publish(self, frames: list[Outgoing]) -> float:
        """Publish ``frames`` (at most one per stream); returns when they were published.

        Publishing a seq again (a tick replayed after a crash) replaces it with the same frame.
        """
        if not frames:
            return time.time()
        client, now = self.client, time.time()
        await client.publish_dataset(
            {dataset_name(f.stream, f.seq): f.frame for f in frames}, override=True
        )
        if self.heads is None:  # heads of streams this loop has not published yet stay
            self.heads = dict(await client.get_metadata(_key("streams"), default=None) or {})
        for f in frames:
            self.heads[f.stream] = asdict(Head(f.seq, self.ring, now, f.interval))
        await client.set_metadata(_key("streams"), self.heads)
        # The datasets and heads exist before anyone hears of them: a reader acting on the
        # message always finds the frames.
        message = {
            "v": TICK_VERSION,
            "published": now,
            "frames": [[f.stream, f.seq, f.span.rows, f.span.first, f.span.last] for f in frames],
        }
        await client.log_event(TOPIC, message)
        stale = [dataset_name(f.stream, f.seq - self.ring) for f in frames if f.seq > self.ring]
        if stale:
            await client.unpublish_dataset(stale)
        return now


async def report_health(client: Client, records: list[HealthRecord]) -> None:
    """Keep the loop's health records of its streams on the scheduler, in one call.

    The loop writes the mapping of every stream's record, as it does the heads.
    """
    await client.set_metadata(_key("health"), {r.stream: r.to_message() for r in records})
